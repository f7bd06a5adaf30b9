"""Liveness for the local sweep backend: heartbeats, dead trials, and requeued agents.

Optuna's journal storage has no heartbeat, so a killed agent would leave its trial RUNNING for ever.
While a trial trains, its agent touches trials/<trial>/heartbeat every HEARTBEAT_S seconds. A
RUNNING trial whose heartbeat is older than `stale_after` (judged by the storage's own clock) is told
FAIL by the next agent to start, and by `sweep-status --fail-stale`; a plain `sweep-status` only
shows it as stale (`stale_trials`). An agent records its current trial in
agents/<agent_id>.json; when Slurm requeues it under the same agent id, `own_unfinished` finds that
trial so the agent can re-attach to it and train() can resume its run directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .fsutil import read_json
from .sweep import Sweep, mark_run, trial_name

log = logging.getLogger("inat")
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class Heartbeat:
    """Touch `path` every `interval` seconds from a daemon thread while the block runs."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S):
        self.path, self.interval, self._stop = path, interval, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="sweep-heartbeat")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self):
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path, None)
            except OSError as exc:  # a scratch hiccup must not kill training; staleness will tell
                log.warning("heartbeat %s: %s", self.path, exc)


def storage_now(directory: Path) -> float:
    """'Now' by the clock of the filesystem that holds the heartbeats, so node clock skew cancels."""
    probe = directory / ".clock"
    try:
        probe.touch()
        os.utime(probe, None)
        return probe.stat().st_mtime
    except OSError:  # e.g. looking at someone else's sweep, read-only: this node's clock will do
        return time.time()


def stale_trials(study, sweep: Sweep, stale_after: float = STALE_AFTER_S, keep: int | None = None,
                 now: float | None = None) -> list[tuple[Any, float]]:
    """RUNNING trials whose owner stopped beating, each with the seconds since its last beat.

    Reads only. `now` defaults to the storage's clock (`storage_now`, which touches a probe file in
    the sweep directory); a reader that must not write passes `time.time()`.
    """
    from optuna.trial import TrialState

    now = storage_now(sweep.dir) if now is None else now
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == keep:
            continue
        beat = sweep.trials_dir / trial_name(t.number) / "heartbeat"
        last = beat.stat().st_mtime if beat.exists() else t.datetime_start.timestamp()
        if now - last > stale_after:
            found.append((t, now - last))
    return found


def recover_stale(study, sweep: Sweep, stale_after: float = STALE_AFTER_S, keep: int | None = None) -> list[int]:
    """Mark RUNNING trials whose owner stopped beating as FAIL; return their numbers."""
    from optuna.trial import TrialState

    failed = []
    for t, age in stale_trials(study, sweep, stale_after, keep):
        reason = f"no heartbeat for {age:.0f} s (agent {t.user_attrs.get('agent', '?')} killed?)"
        set_attr(study, t._trial_id, "error", reason)
        tell(study, t.number, state=TrialState.FAIL)
        mark_run(sweep.trials_dir / trial_name(t.number), "failed", error=reason)
        log.warning("trial %s marked failed: %s", trial_name(t.number), reason)
        failed.append(t.number)
    return failed


def own_unfinished(study, state_path: Path):
    """The trial this agent id was running when it was killed, if the study still has it RUNNING."""
    import optuna

    if not state_path.is_file():
        return None
    number = read_json(state_path).get("trial")
    if number is None:
        return None
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != trial_states().RUNNING:
        log.info("previous trial %s of this agent is %s; starting a new one", trial_name(number),
                 "gone" if frozen is None else frozen.state.name.lower())
        return None
    return optuna.trial.Trial(study, frozen._trial_id)


def tell(study, number: int, value: float | None = None, state=None) -> None:
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):  # GridSampler asks to stop outside optimize(): state is saved
            raise
    except Exception as exc:  # finished by another process between the check and the write
        log.warning("trial %s: %s", trial_name(number), exc)


def set_attr(study, trial_id: int, key: str, value: Any) -> None:
    try:
        study._storage.set_trial_user_attr(trial_id, key, value)
    except Exception as exc:  # the trial finished meanwhile
        log.debug("set_trial_user_attr(%s): %s", key, exc)


def trial_states():
    from optuna.trial import TrialState

    return TrialState
