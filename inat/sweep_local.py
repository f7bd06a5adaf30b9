"""The air-gapped sweep backend: an Optuna study on shared scratch storage, driven by N agents.

Storage: by default a JournalStorage file, SCRATCH/sweeps/<id>/optuna.journal, with Optuna's
JournalFileOpenLock (an O_EXCL lock file: atomic on NFSv3+, Lustre, GPFS and BeeGFS, and no symlinks,
which some mounts forbid). `--storage URL` uses an Optuna RDB (PostgreSQL/MySQL) instead.

Liveness: Optuna's journal storage has no heartbeat, so each agent touches
trials/<trial>/heartbeat every HEARTBEAT_S seconds while it trains. A RUNNING trial whose heartbeat is
older than `stale_after` (judged by the storage's own clock) is marked FAIL by the next agent to
start and by `sweep-status`. An agent records its current trial in agents/<agent_id>.json; when
Slurm requeues it under the same agent id, it re-attaches to that trial and train() resumes the run
directory from the last finished epoch.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .errors import InatError
from .fsutil import read_json, write_json
from .sweep import Sweep, mark_run, read_trial
from .sweep_spec import SweepSpec, decode, make_pruner, make_sampler, optuna_space

log = logging.getLogger("inat")
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
MAX_CONSECUTIVE_FAILURES = 3
STATE_NAMES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def trial_name(number: int) -> str:
    return f"{number:04d}"


# ---- storage and study ------------------------------------------------------------------------------


def storage_for(sweep: Sweep):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweep.storage:
        return optuna.storages.RDBStorage(sweep.storage, engine_kwargs={"pool_pre_ping": True})
    path = str(sweep.dir / "optuna.journal")
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def create_study(sweep: Sweep, spec: SweepSpec) -> None:
    import optuna

    optuna_space(spec)  # raise now, not in every agent, for forms Optuna cannot express
    make_sampler(spec, sweep.seed)
    try:
        optuna.create_study(study_name=sweep.id, storage=storage_for(sweep),
                            direction="maximize" if spec.maximize else "minimize")
    except ImportError as exc:
        raise InatError(f"--storage {sweep.storage}: missing database driver ({exc})") from None
    except Exception as exc:
        if sweep.storage:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InatError(f"--storage {sweep.storage}: cannot create the study ({first})") from None
        raise


def open_study(sweep: Sweep, spec: SweepSpec, agent_id: str = ""):
    import optuna

    epochs = sweep_epochs(sweep, spec)
    return optuna.load_study(study_name=sweep.id, storage=storage_for(sweep),
                             sampler=make_sampler(spec, sweep.seed, agent_id), pruner=make_pruner(spec, epochs))


def sweep_epochs(sweep: Sweep, spec: SweepSpec) -> int:
    p = spec.params.get("epochs")
    if p is not None and p.distribution != "constant":
        return int(p.max if p.max is not None else max(int(v) for v in p.values))
    return RunConfig.from_dict({**sweep.fixed, **spec.constants}).epochs


# ---- liveness ---------------------------------------------------------------------------------------


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
    probe.touch()
    os.utime(probe, None)
    return probe.stat().st_mtime


def recover_stale(study, sweep: Sweep, stale_after: float = STALE_AFTER_S, keep: int | None = None) -> list[int]:
    """Mark RUNNING trials whose owner stopped beating as FAIL; return their numbers."""
    from optuna.trial import TrialState

    now = storage_now(sweep.dir)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == keep:
            continue
        beat = sweep.trials_dir / trial_name(t.number) / "heartbeat"
        last = beat.stat().st_mtime if beat.exists() else t.datetime_start.timestamp()
        if now - last <= stale_after:
            continue
        reason = f"no heartbeat for {now - last:.0f} s (agent {t.user_attrs.get('agent', '?')} killed?)"
        _set_attr(study, t._trial_id, "error", reason)
        _tell(study, t.number, state=TrialState.FAIL)
        mark_run(sweep.trials_dir / trial_name(t.number), "failed", error=reason)
        log.warning("trial %s marked failed: %s", trial_name(t.number), reason)
        failed.append(t.number)
    return failed


# ---- the agent ----------------------------------------------------------------------------------------


@dataclass
class TrialRun:
    """What a trial function gets: the trial's config and directory, and `report(epoch, value)`,
    which records the metric and returns True when the pruner says stop."""

    sweep: Sweep
    spec: SweepSpec
    number: int
    name: str
    run_dir: Path
    config: RunConfig
    report: Callable[[int, float], bool]


@dataclass
class Outcome:
    value: float | None  # the trial's best metric
    epochs: int
    pruned: bool


TrialFn = Callable[[TrialRun], Outcome]


def run_agent(sweep: Sweep, agent_id: str, count: int | None = None, stale_after: float = STALE_AFTER_S,
              trial_fn: TrialFn | None = None, heartbeat_s: float = HEARTBEAT_S) -> dict[str, Any]:
    """Run up to `count` trials (None: until run_cap, the target or the grid ends the sweep)."""
    from optuna.samplers import GridSampler

    spec = sweep.spec()
    study = open_study(sweep, spec, agent_id)
    space = optuna_space(spec)
    state_path = sweep.agents_dir / f"{agent_id}.json"
    own = _own_unfinished(study, state_path)
    recover_stale(study, sweep, stale_after, keep=own.number if own else None)
    ran, failures, stop_reason = [], 0, "count reached"
    while count is None or len(ran) < count:
        if own is not None:
            trial, resumed, own = own, True, None
            log.info("%s: resuming trial %s", agent_id, trial_name(trial.number))
        else:
            reason = _sweep_done(study, spec)
            if reason:
                stop_reason = reason
                break
            trial, resumed = study.ask(space), False
            if spec.run_cap and trial.number >= spec.run_cap:
                # Numbers are handed out atomically by the storage, so this makes run_cap exact.
                _set_attr(study, trial._trial_id, "error", "discarded: run_cap reached")
                _tell(study, trial.number, state=_states().FAIL)
                stop_reason = f"run_cap {spec.run_cap} reached"
                break
        state = _run_trial(study, trial, sweep, spec, agent_id, state_path, resumed,
                           trial_fn or train_trial, heartbeat_s)
        ran.append(trial.number)
        failures = failures + 1 if state == "failed" else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise InatError(f"agent {agent_id}: {failures} trials in a row failed; see the errors above "
                            f"and trials/*/run.json in {sweep.dir}")
        if isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study):
            stop_reason = "grid exhausted"
            break
    log.info("%s: done after %d trial(s): %s", agent_id, len(ran), stop_reason)
    return {"agent_id": agent_id, "trials": ran, "stop_reason": stop_reason}


def _run_trial(study, trial, sweep, spec, agent_id, state_path, resumed, trial_fn, heartbeat_s) -> str:
    TrialState = _states()
    name = trial_name(trial.number)
    run_dir = sweep.trials_dir / name
    write_json(state_path, {"agent_id": agent_id, "trial": trial.number, "trial_id": trial._trial_id,
                            "host": platform.node(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with Heartbeat(run_dir / "heartbeat", heartbeat_s):
        _set_attr(study, trial._trial_id, "agent", agent_id)
        params = decode(spec, trial.params)
        pruning = study.pruner.__class__.__name__ != "NopPruner"
        flags = {"lost": False}
        reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)

        def report(step: int, value: float) -> bool:
            try:
                if step not in reported:  # a resumed trial may replay epochs the study already has
                    trial.report(value, step)
                    reported.add(step)
                return pruning and trial.should_prune()
            except Exception as exc:  # finished meanwhile: another agent declared it dead
                log.warning("trial %s: cannot report (%s); stopping it", name, exc)
                flags["lost"] = True
                return True

        try:
            cfg = sweep.trial_config(spec, params, name)
            if resumed:  # epochs finished before the kill may not have reached the study
                for row_epoch, value in _history_metric(run_dir, spec.metric):
                    if row_epoch not in reported:
                        trial.report(value, row_epoch)
                        reported.add(row_epoch)
            log.info("%s: trial %s %s: %s", agent_id, name, "resumed" if resumed else "started", params)
            outcome = trial_fn(TrialRun(sweep, spec, trial.number, name, run_dir, cfg, report))
        except Exception as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.error("%s: trial %s failed: %s", agent_id, name, message, exc_info=not isinstance(exc, InatError))
            _set_attr(study, trial._trial_id, "error", message)
            _tell(study, trial.number, state=TrialState.FAIL)
            mark_run(run_dir, "failed", error=message)
            result = "failed"
        else:
            if outcome.pruned or flags["lost"]:
                _tell(study, trial.number, state=TrialState.PRUNED)
                mark_run(run_dir, "pruned", pruned_at_epoch=outcome.epochs)
                result = "pruned"
            elif outcome.value is None:
                _tell(study, trial.number, state=TrialState.FAIL)
                result = "failed"
            else:
                _tell(study, trial.number, outcome.value)
                result = "finished"
            log.info("%s: trial %s %s after %d epoch(s), best %s %s", agent_id, name, result,
                     outcome.epochs, spec.metric, outcome.value)
    write_json(state_path, {"agent_id": agent_id, "trial": None, "last_trial": trial.number,
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return result


def train_trial(tr: TrialRun) -> Outcome:
    """The real trial: train() into the trial's run directory, reporting each epoch to the pruner."""
    import sys

    import keras

    from . import tracking
    from .train import train

    class Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(tr.spec.metric)
            if value is not None and tr.report(epoch + 1, float(value)):
                self.model.stop_training = True

    tr.run_dir.mkdir(parents=True, exist_ok=True)
    # Name the W&B run per sweep (train() would name it after the directory, "0003", which repeats
    # in every sweep); train() then logs into this run. Offline unless WANDB_MODE says otherwise.
    run_id = f"{tr.sweep.id}-{tr.name}"
    tracking.start(tr.run_dir, tr.config.to_dict(), name=run_id, run_id=run_id, group=tr.sweep.id,
                   job_type="sweep")
    try:
        result = train(tr.config, tr.run_dir, tr.sweep.data_root, callbacks=[Pruning()],
                       wandb_group=tr.sweep.id, wandb_job_type="sweep", verbose=0)
    finally:
        run = getattr(sys.modules.get("wandb"), "run", None)
        if run is not None:  # train() failed before it took the run over
            run.finish(exit_code=1)
    info = read_trial(tr.run_dir, tr.spec.metric, tr.spec.maximize)
    pruned = result.status == "stopped" and result.epochs_done < tr.config.epochs
    return Outcome(info["best_metric"], result.epochs_done, pruned)


# ---- status -------------------------------------------------------------------------------------------


def trial_rows(sweep: Sweep, spec: SweepSpec, stale_after: float = STALE_AFTER_S) -> list[dict[str, Any]]:
    study = open_study(sweep, spec)
    recover_stale(study, sweep, stale_after)
    rows = []
    for t in study.get_trials(deepcopy=False):
        info = read_trial(sweep.trials_dir / trial_name(t.number), spec.metric, spec.maximize)
        rows.append({
            "trial": trial_name(t.number), "number": t.number, "state": STATE_NAMES.get(t.state.name, t.state.name),
            "epochs_done": max(info["epochs_done"], t.last_step or 0),
            "best_val_accuracy": info["best_val_accuracy"] if info["best_val_accuracy"] is not None
            else _best_reported(t, spec),
            "value": t.value, "params": decode(spec, t.params), "agent": t.user_attrs.get("agent"),
            "error": t.user_attrs.get("error"),
        })
    return rows


# ---- helpers -------------------------------------------------------------------------------------------


def _own_unfinished(study, state_path: Path):
    """The trial this agent id was running when it was killed, if the study still has it RUNNING."""
    import optuna

    if not state_path.is_file():
        return None
    number = read_json(state_path).get("trial")
    if number is None:
        return None
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != _states().RUNNING:
        log.info("previous trial %s of this agent is %s; starting a new one", trial_name(number),
                 "gone" if frozen is None else frozen.state.name.lower())
        return None
    return optuna.trial.Trial(study, frozen._trial_id)


def _sweep_done(study, spec: SweepSpec) -> str | None:
    from optuna.samplers import GridSampler

    trials = study.get_trials(deepcopy=False)
    if spec.run_cap and len(trials) >= spec.run_cap:
        return f"run_cap {spec.run_cap} reached"
    if isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study):
        return "grid exhausted"
    if spec.target is not None:
        done = [t.value for t in trials if t.state == _states().COMPLETE and t.value is not None]
        if any((v >= spec.target) if spec.maximize else (v <= spec.target) for v in done):
            return f"metric target {spec.target} reached"
    return None


def _tell(study, number: int, value: float | None = None, state=None) -> None:
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):  # GridSampler asks to stop outside optimize(): state is saved
            raise
    except Exception as exc:  # finished by another process between the check and the write
        log.warning("trial %s: %s", trial_name(number), exc)


def _set_attr(study, trial_id: int, key: str, value: Any) -> None:
    try:
        study._storage.set_trial_user_attr(trial_id, key, value)
    except Exception as exc:  # the trial finished meanwhile
        log.debug("set_trial_user_attr(%s): %s", key, exc)


def _history_metric(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    from .sweep import _history

    return [(int(r["epoch"]), r[metric]) for r in _history(run_dir / "history.csv") if r.get(metric) == r.get(metric)]


def _states():
    from optuna.trial import TrialState

    return TrialState


def _best_reported(t, spec: SweepSpec) -> float | None:
    values = list(t.intermediate_values.values()) if spec.metric == "val_accuracy" else []
    return max(values) if values else None
