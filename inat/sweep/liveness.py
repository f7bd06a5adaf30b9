"""Liveness for the local sweep backend: heartbeats, dead trials, and requeued agents.

Optuna's journal storage has no heartbeat, so a killed agent would leave its trial RUNNING for ever.
While a trial trains, its agent touches trials/<run>/heartbeat every HEARTBEAT_S seconds. A
RUNNING trial whose heartbeat is older than `stale_after` (judged by the storage's own clock) is told
FAIL by the next agent to start, and by `sweep-status --fail-stale`; a plain `sweep-status` only
shows it as stale (`stale_trials`).

An agent records its current trial in agents/<agent_id>.json. When Slurm requeues it under the same
agent id, `own_unfinished` finds that trial if it is still RUNNING, and `requeue` hands its run on
with Optuna's public API only (a killed process's RUNNING trial cannot be re-opened publicly): a new
trial is enqueued with the same parameters and the user attributes `run_dir` (the old trial's run
directory) and `resumes` (its number), and the old trial is told FAIL as superseded. The agent's
next `study.ask()` returns the enqueued trial, which trains into the old run directory, so train()
resumes it. `run_dir_of` maps any trial to its run directory; `superseded` finds the old trials.

With a database (`--storage URL`) Optuna's own heartbeat replaces the heartbeat files and the stale
check (`inat.sweep.rdb`); requeued agents are handled here for every storage.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..fsutil import read_json
from .store import Sweep, mark_run, trial_name

log = logging.getLogger("inat")
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
# A shorter grace would fail trials whose agents are alive but missed a beat or two (a busy node, a
# slow scratch file system).
MIN_STALE_AFTER_S = 3 * HEARTBEAT_S


class Beating:
    """`first()` now, then `beat()` every `interval` seconds from a daemon thread while the block runs.
    A failed beat is logged, never raised: a storage hiccup must not kill training (staleness, or a
    database's grace period, tells a dead agent from a slow one)."""

    name = "sweep-heartbeat"

    def __init__(self, interval: float):
        self.interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)

    def first(self) -> None:
        self.beat()

    def beat(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.first()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:
                log.warning("heartbeat of %s: %s", self, " ".join(str(exc).split())[:200])


class Heartbeat(Beating):
    """Touch `path` every `interval` seconds while the block runs (the journal's liveness)."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S):
        super().__init__(interval)
        self.path = path

    def first(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def beat(self) -> None:
        os.utime(self.path, None)

    def __str__(self) -> str:
        return str(self.path)


def storage_now(directory: Path) -> float:
    """'Now' by the clock of the filesystem that holds the heartbeats, so node clock skew cancels."""
    probe = directory / ".clock"
    try:
        probe.touch()
        os.utime(probe, None)
        return probe.stat().st_mtime
    except OSError:  # e.g. looking at someone else's sweep, read-only: this node's clock will do
        return time.time()


def run_dir_of(trial) -> str:
    """The directory under trials/ that a trial (live or frozen) trains into: the run it resumes, for
    a trial a requeued agent enqueued, else the trial's own number (0000, 0001, ...)."""
    return trial.user_attrs.get("run_dir") or trial_name(trial.number)


def superseded(trials) -> dict[int, int]:
    """{number of a requeued agent's killed trial: number of the trial that resumes its run}."""
    return {t.user_attrs["resumes"]: t.number for t in trials if "resumes" in t.user_attrs}


def stale_trials(study, sweep: Sweep, stale_after: float = STALE_AFTER_S, keep: int | None = None,
                 now: float | None = None) -> list[tuple[Any, float]]:
    """RUNNING trials whose owner stopped beating, each with the seconds since its last beat.

    Reads only. `now` defaults to the storage's clock (`storage_now`, which touches a probe file in
    the sweep directory); a reader that must not write passes `time.time()`. A trial with no
    heartbeat file yet is judged by its start. So is a trial that resumes a killed trial's run while
    that run's heartbeat is older than its start: the file is the old trial's until the new agent
    first touches it.
    """
    TrialState = trial_states()
    now = storage_now(sweep.dir) if now is None else now
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == keep:
            continue
        beat = sweep.trials_dir / run_dir_of(t) / "heartbeat"
        last = beat.stat().st_mtime if beat.exists() else t.datetime_start.timestamp()
        if "resumes" in t.user_attrs:
            last = max(last, t.datetime_start.timestamp())
        if now - last > stale_after:
            found.append((t, now - last))
    return found


def recover_stale(study, storage, sweep: Sweep, stale_after: float = STALE_AFTER_S,
                  keep: int | None = None) -> list[int]:
    """Mark RUNNING trials whose owner stopped beating as FAIL; return their numbers.
    `storage` is the one the study was opened with (see `set_frozen_attr`)."""
    TrialState = trial_states()
    failed = []
    for t, age in stale_trials(study, sweep, stale_after, keep):
        reason = f"no heartbeat for {age:.0f} s (agent {t.user_attrs.get('agent', '?')} killed?)"
        set_frozen_attr(storage, study, t.number, "error", reason)
        set_frozen_attr(storage, study, t.number, "state", "failed")  # the agent's own, shown in the dashboard
        tell(study, t.number, state=TrialState.FAIL)
        mark_run(sweep.trials_dir / run_dir_of(t), "failed", error=reason)
        log.warning("trial %s marked failed: %s", trial_name(t.number), reason)
        failed.append(t.number)
    return failed


def own_unfinished(study, state_path: Path):
    """The trial (frozen) this agent id was running when it was killed, if the study still has it RUNNING."""
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
    return frozen


def requeue(study, storage, frozen, agent_id: str, reason: str | None = None) -> None:
    """Hand the run of `frozen`, this requeued agent's killed trial, on to a new trial.

    The new trial is enqueued first, so a kill in between loses nothing (the next attempt finds it
    and does not enqueue a second one); then the old trial is told FAIL with `error` saying it was
    superseded. The agent's next `study.ask()` pops the enqueued trial. Should another agent's ask
    take it first, that agent resumes the run and this one gets a new trial.
    """
    TrialState = trial_states()
    pending = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
               if t.user_attrs.get("resumes") == frozen.number]
    if not pending:
        study.enqueue_trial(dict(frozen.params), user_attrs={"run_dir": run_dir_of(frozen),
                                                             "resumes": frozen.number})
    set_frozen_attr(storage, study, frozen.number, "error", reason or
                    f"superseded: agent {agent_id} was requeued and resumes this run in a new trial")
    set_frozen_attr(storage, study, frozen.number, "state", "superseded")
    tell(study, frozen.number, state=TrialState.FAIL)


def stop_running(study, storage, sweep: Sweep, agents: set[str], reason: str) -> list[int]:
    """Make the RUNNING trials of `agents`, whose processes are gone (`sweep-stop --now` killed them),
    resumable: each is handed on with `requeue`, so the next agent to ask resumes its run. A trial
    counts as theirs by its `agent` attribute or by the agent's own record (agents/<id>.json), which
    is written before the attribute. Returns the numbers of the trials handed on."""
    TrialState = trial_states()
    mine = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("agent") in agents}
    for agent in agents:
        path = sweep.agents_dir / f"{agent}.json"
        number = read_json(path).get("trial") if path.is_file() else None
        if number is not None:
            mine.add(number)
    handed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in mine:
            requeue(study, storage, t, t.user_attrs.get("agent", "?"), reason)
            mark_run(sweep.trials_dir / run_dir_of(t), "interrupted", stopped_by="sweep-stop --now")
            handed.append(t.number)
    return handed


def tell(study, number: int, value: float | None = None, state=None) -> None:
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):  # GridSampler asks to stop outside optimize(): state is saved
            raise
    except Exception as exc:  # finished by another process between the check and the write
        log.warning("trial %s: %s", trial_name(number), exc)


def set_attr(trial, key: str, value: Any) -> None:
    """A user attribute of this agent's own (live) trial."""
    try:
        trial.set_user_attr(key, value)
    except Exception as exc:  # the trial finished meanwhile: another agent declared it dead
        log.debug("set_user_attr(%s): %s", key, exc)


def set_frozen_attr(storage, study, number: int, key: str, value: Any) -> None:
    """A user attribute of another process's trial, which has no live `Trial` here.

    `storage` is the storage object the study was opened with (`storage_for` builds it), and the
    trial id comes from the storage's public lookups; Optuna's Study keeps its own reference and
    FrozenTrial its id private."""
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_user_attr(trial_id, key, value)
    except Exception as exc:  # the trial finished meanwhile
        log.debug("set_trial_user_attr(%s): %s", key, exc)


def trial_states():
    """Optuna's TrialState, for modules that must not import Optuna when they are imported."""
    from optuna.trial import TrialState  # lazy: Optuna, only when a study is at hand

    return TrialState
