"""The air-gapped sweep backend: an Optuna study on shared scratch storage, driven by N agents.

Storage: by default a JournalStorage file, SCRATCH/sweeps/<id>/optuna.journal, with Optuna's
JournalFileOpenLock (an O_EXCL lock file: atomic on NFSv3+, Lustre, GPFS and BeeGFS, and no symlinks,
which some mounts forbid). `--storage URL` uses an Optuna RDB (PostgreSQL/MySQL) instead.

Each agent is an ask/tell loop around train(): a Keras callback reports the sweep metric per epoch
(step = epoch number) and stops training when the pruner says so. Dead agents and requeued ones are
handled in `inat.sweep.liveness`. Only Optuna's public API is used (tests/test_sweep_local.py
scans for private attributes), so an Optuna upgrade cannot silently break the agents.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..config import RunConfig
from ..errors import InatError
from ..fsutil import write_json
from ..rundir import committed_rows
from .liveness import (
    HEARTBEAT_S, STALE_AFTER_S, Heartbeat, own_unfinished, recover_stale, requeue, run_dir_of, set_attr,
    stale_trials, superseded, tell, trial_states,
)
from .space import decode, make_pruner, make_sampler, optuna_space
from .spec import SweepSpec
from .store import Sweep, mark_run, read_trial, trial_name

log = logging.getLogger("inat")
MAX_CONSECUTIVE_FAILURES = 3
STATE_NAMES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


# ---- storage and study ------------------------------------------------------------------------------


def storage_for(sweep: Sweep):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweep.storage:
        return optuna.storages.RDBStorage(sweep.storage, engine_kwargs={"pool_pre_ping": True})
    path = str(sweep.dir / "optuna.journal")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    except ValueError as exc:  # json.JSONDecodeError, or Optuna's "Invalid log format." for a torn line
        raise InatError(
            f"{path}: the sweep's Optuna journal is damaged ({exc}); the trial run directories "
            f"still hold every result: `inat-jobs sweep-report {sweep.id}` reads them without it"
        ) from None


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


def open_study(sweep: Sweep, spec: SweepSpec, agent_id: str = "", storage=None):
    """The sweep's study; pass `storage` (from `storage_for`) to keep a handle on it for
    `inat.sweep.liveness.set_frozen_attr`."""
    import optuna

    epochs = sweep_epochs(sweep, spec)
    study = optuna.load_study(study_name=sweep.id, storage=storage or storage_for(sweep),
                              sampler=make_sampler(spec, sweep.seed, agent_id), pruner=make_pruner(spec, epochs))
    if agent_id:  # an agent's draws depend on how far the sweep had got when it (re)started
        study.sampler = make_sampler(spec, sweep.seed, agent_id, len(study.get_trials(deepcopy=False)))
    return study


def sweep_epochs(sweep: Sweep, spec: SweepSpec) -> int:
    p = spec.params.get("epochs")
    if p is not None and p.distribution != "constant":
        return int(p.max if p.max is not None else max(int(v) for v in p.values))
    return RunConfig.from_dict({**sweep.fixed, **spec.constants}).epochs


# ---- the agent ----------------------------------------------------------------------------------------


@dataclass
class TrialRun:
    """What a trial function gets: the trial's config and directory, and `report(epoch, value)`,
    which records the metric and returns True when the pruner says stop."""

    sweep: Sweep
    spec: SweepSpec
    number: int  # the Optuna trial's number
    name: str  # the run directory's name under trials/: the trial's number, or the run it resumes
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
    storage = storage_for(sweep)
    study = open_study(sweep, spec, agent_id, storage)
    space = optuna_space(spec)
    state_path = sweep.agents_dir / f"{agent_id}.json"
    own = own_unfinished(study, state_path)
    recover_stale(study, storage, sweep, stale_after, keep=own.number if own else None)
    if own is not None:  # requeued: its killed trial's run goes on in a new trial, asked for below
        requeue(study, storage, own, agent_id)
        log.info("%s: requeued; trial %s's run %s continues in a new trial", agent_id, trial_name(own.number),
                 run_dir_of(own))
    ran, failures, stop_reason = [], 0, "count reached"
    while count is None or len(ran) < count:
        if own is None:
            reason = _sweep_done(study, spec)
            if reason:
                stop_reason = reason
                break
        own = None  # a requeued agent asks at least once: the run it continues was counted already
        trial = study.ask(space)
        if "resumes" not in trial.user_attrs and spec.run_cap and _new_runs_before(study, trial) >= spec.run_cap:
            # Numbers are handed out atomically by the storage, so this makes run_cap exact.
            set_attr(trial, "error", "discarded: run_cap reached")
            tell(study, trial.number, state=trial_states().FAIL)
            stop_reason = f"run_cap {spec.run_cap} reached"
            break
        state = _run_trial(study, trial, sweep, spec, agent_id, state_path, trial_fn or train_trial, heartbeat_s)
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


def _run_trial(study, trial, sweep, spec, agent_id, state_path, trial_fn, heartbeat_s) -> str:
    from optuna.pruners import NopPruner

    TrialState = trial_states()
    name = run_dir_of(trial)
    run_dir = sweep.trials_dir / name
    resumed = "resumes" in trial.user_attrs  # it continues the run of a requeued agent's killed trial
    write_json(state_path, {"agent_id": agent_id, "trial": trial.number, "run_dir": name,
                            "host": platform.node(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with Heartbeat(run_dir / "heartbeat", heartbeat_s):
        set_attr(trial, "agent", agent_id)
        params = decode(spec, trial.params)
        pruning = not isinstance(study.pruner, NopPruner)
        flags = {"lost": False}
        reported: set[int] = set()  # every trial is freshly asked: the study holds no epoch of it yet

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
            if resumed:  # the new trial re-reports the epochs the run finished before the kill
                for row_epoch, value in _history_metric(run_dir, spec.metric):
                    if row_epoch not in reported:
                        trial.report(value, row_epoch)
                        reported.add(row_epoch)
            log.info("%s: trial %s %s: %s", agent_id, name,
                     f"resumed as trial {trial_name(trial.number)}" if resumed else "started", params)
            outcome = trial_fn(TrialRun(sweep, spec, trial.number, name, run_dir, cfg, report))
        except Exception as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.error("%s: trial %s failed: %s", agent_id, name, message, exc_info=not isinstance(exc, InatError))
            set_attr(trial, "error", message)
            tell(study, trial.number, state=TrialState.FAIL)
            mark_run(run_dir, "failed", error=message)
            result = "failed"
        else:
            if flags["lost"]:  # the study already holds it as FAIL; keep run.json saying so
                mark_run(run_dir, "failed", error="declared dead by another agent (heartbeat too old)")
                result = "failed"
            elif outcome.pruned:
                tell(study, trial.number, state=TrialState.PRUNED)
                mark_run(run_dir, "pruned", pruned_at_epoch=outcome.epochs)
                result = "pruned"
            elif outcome.value is None:
                tell(study, trial.number, state=TrialState.FAIL)
                result = "failed"
            else:
                tell(study, trial.number, outcome.value)
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

    from .. import tracking
    from ..train import train

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
        # All agents share SCRATCH/cache: the first one to need a size decodes the images once.
        result = train(tr.config, tr.run_dir, tr.sweep.data_root, callbacks=[Pruning()],
                       wandb_group=tr.sweep.id, wandb_job_type="sweep", verbose=0,
                       cache_root=layout.cache_dir(tr.sweep.scratch_root))
    finally:
        run = getattr(sys.modules.get("wandb"), "run", None)
        if run is not None:  # train() failed before it took the run over
            run.finish(exit_code=1)
    info = read_trial(tr.run_dir, tr.spec.metric, tr.spec.maximize)
    pruned = result.status == "stopped" and result.epochs_done < tr.config.epochs
    return Outcome(info["best_metric"], result.epochs_done, pruned)


# ---- status -------------------------------------------------------------------------------------------


def trial_rows(sweep: Sweep, spec: SweepSpec, stale_after: float = STALE_AFTER_S,
               fail_stale: bool = False) -> list[dict[str, Any]]:
    """One row per trial of the study. Reads only, unless `fail_stale`: then RUNNING trials without a
    heartbeat for `stale_after` seconds are told FAIL first, as an agent does when it starts.
    Without it such a trial stays RUNNING and its row gives `stale_s`, the seconds since its last
    beat (by this node's clock, since judging by the storage's clock would mean writing a probe).

    A requeued agent's killed trial has state "superseded" and `superseded_by`, the trial that
    resumes its run; that one has `resumes`. `run_dir` is the directory under trials/ of each."""
    storage = storage_for(sweep)
    study = open_study(sweep, spec, storage=storage)
    stale: dict[int, float] = {}
    if fail_stale:
        recover_stale(study, storage, sweep, stale_after)
    else:
        stale = {t.number: age for t, age in stale_trials(study, sweep, stale_after, now=time.time())}
    trials = study.get_trials(deepcopy=False)
    moved_on = superseded(trials)
    rows = []
    for t in trials:
        run_name = run_dir_of(t)
        value = best_at = None
        if t.number in moved_on:  # the run directory holds the resuming trial's epochs too
            epochs, best = t.last_step or 0, _best_reported(t, spec)
        else:
            info = read_trial(sweep.trials_dir / run_name, spec.metric, spec.maximize)
            epochs = max(info["epochs_done"], t.last_step or 0)
            best = info["best_val_accuracy"] if info["best_val_accuracy"] is not None else _best_reported(t, spec)
            value, best_at = info["best_metric"], info["best_epoch"]
        rows.append({
            "trial": trial_name(t.number), "number": t.number, "run_dir": run_name,
            "state": "superseded" if t.number in moved_on else STATE_NAMES.get(t.state.name, t.state.name),
            "epochs_done": epochs, "best_val_accuracy": best,
            # The run directory's numbers (the rule train() keeps model.keras by); the study's value
            # is the same number once the trial is told.
            "value": value if value is not None else t.value, "best_epoch": best_at,
            "params": decode(spec, t.params), "agent": t.user_attrs.get("agent"),
            "error": t.user_attrs.get("error"),
            "stale_s": round(stale[t.number]) if t.number in stale else None,
            "resumes": t.user_attrs.get("resumes"), "superseded_by": moved_on.get(t.number),
        })
    return rows


# ---- helpers -------------------------------------------------------------------------------------------


def _sweep_done(study, spec: SweepSpec) -> str | None:
    from optuna.samplers import GridSampler

    trials = study.get_trials(deepcopy=False)
    if spec.run_cap and sum(1 for t in trials if "resumes" not in t.user_attrs) >= spec.run_cap:
        return f"run_cap {spec.run_cap} reached"
    if isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study):
        return "grid exhausted"
    if spec.target is not None:
        done = [t.value for t in trials if t.state == trial_states().COMPLETE and t.value is not None]
        if any((v >= spec.target) if spec.maximize else (v <= spec.target) for v in done):
            return f"metric target {spec.target} reached"
    return None


def _new_runs_before(study, trial) -> int:
    """Trials numbered below `trial` that started a run of their own.

    run_cap counts runs, not Optuna trials: a trial that resumes a requeued agent's killed trial
    (user attribute `resumes`, set when it was enqueued, in the same storage write that numbered
    it) continues a run already counted, so requeues do not shrink the sweep. Every trial below
    `trial.number` exists by the time the storage numbered `trial`, so the cap stays exact.
    """
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if t.number < trial.number and "resumes" not in t.user_attrs)


def _history_metric(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    rows = committed_rows(run_dir)
    return [(int(r["epoch"]), r[metric]) for r in rows if r.get(metric) == r.get(metric)]  # skips NaN




def _best_reported(t, spec: SweepSpec) -> float | None:
    values = list(t.intermediate_values.values()) if spec.metric == "val_accuracy" else []
    return max(values) if values else None
