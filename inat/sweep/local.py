"""The air-gapped sweep backend's agent: an ask/tell loop on the Optuna study of `inat.sweep.study`.

Each agent is an ask/tell loop around train(): a Keras callback reports the sweep metric per epoch
(step = epoch number) and stops training when the pruner says so. Dead agents and requeued ones are
handled in `inat.sweep.liveness` (with a database, by Optuna's own heartbeat: `inat.sweep.rdb`), the
rows `sweep-status` shows in `inat.sweep.status`. Only Optuna's public API is used
(tests/sweep/test_sweep_local.py scans for private attributes), so an Optuna upgrade cannot silently
break the agents.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import layout, tracking
from ..config import RunConfig
from ..errors import InatError
from ..fsutil import write_json
from ..rundir import RunDir
from . import rdb
from .liveness import (
    HEARTBEAT_S, STALE_AFTER_S, Heartbeat, own_unfinished, recover_stale, requeue, run_dir_of, set_attr,
    superseded, tell, trial_states,
)
from .space import decode, optuna_space
from .spec import SweepSpec
from .store import Sweep, mark_run, read_trial, trial_name
from .study import open_study, storage_for

log = logging.getLogger("inat")
MAX_CONSECUTIVE_FAILURES = 3


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
    from optuna.samplers import GridSampler  # lazy: Optuna, when an agent runs

    spec = sweep.spec()
    storage = storage_for(sweep, heartbeat_s, stale_after)
    study = open_study(sweep, spec, agent_id, storage)
    space = optuna_space(spec)
    state_path = sweep.agents_dir / f"{agent_id}.json"
    own = own_unfinished(study, state_path)
    if own is not None:  # requeued: its killed trial's run goes on in a new trial, asked for below
        requeue(study, storage, own, agent_id)
        log.info("%s: requeued; trial %s's run %s continues in a new trial", agent_id, trial_name(own.number),
                 run_dir_of(own))
    if not sweep.storage:  # a database: Optuna fails dead trials before each ask, below
        recover_stale(study, storage, sweep, stale_after)
    ran, failures, stop_reason = [], 0, "count reached"
    while count is None or len(ran) < count:
        if own is None:
            reason = _sweep_done(study, spec) or _stopped(sweep)
            if reason:
                stop_reason = reason
                break
        requeued, own = own is not None, None  # a requeued agent asks at least once (its run goes on)
        if sweep.storage:
            rdb.fail_stale(study)
        with rdb.asking():
            trial = study.ask(space)
        if not requeued and _stopped(sweep):
            # Stopped while this agent asked: hand the untrained trial on, as a requeue does, so that
            # no trial starts after the stop and none is lost (nor counted twice against run_cap).
            requeue(study, storage, _frozen(study, trial.number), agent_id, "superseded: the sweep was "
                    "stopped before it trained; it runs in a new trial when agents take trials again")
            stop_reason = _stopped(sweep)
            break
        if "resumes" not in trial.user_attrs and spec.run_cap and _new_runs_before(study, trial) >= spec.run_cap:
            # Numbers are handed out atomically by the storage, so this makes run_cap exact.
            set_attr(trial, "error", "discarded: run_cap reached")
            tell(study, trial.number, state=trial_states().FAIL)
            stop_reason = f"run_cap {spec.run_cap} reached"
            break
        beat = (rdb.TrialHeartbeat(storage, study, trial.number, heartbeat_s) if sweep.storage
                else Heartbeat(sweep.trials_dir / run_dir_of(trial) / "heartbeat", heartbeat_s))
        state = _run_trial(study, trial, sweep, spec, agent_id, state_path, trial_fn or train_trial, beat)
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


def _run_trial(study, trial, sweep, spec, agent_id, state_path, trial_fn, beat) -> str:
    from optuna.pruners import NopPruner  # lazy: Optuna, as above

    TrialState = trial_states()
    name = run_dir_of(trial)
    run_dir = sweep.trials_dir / name
    resumed = "resumes" in trial.user_attrs  # it continues the run of a requeued agent's killed trial
    write_json(state_path, {"agent_id": agent_id, "trial": trial.number, "run_dir": name,
                            "host": platform.node(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with beat:
        # What a user looks for in the dashboard (inat.sweep.dashboard), beside the trial's values;
        # `state` and the last `epochs` are set as it ends. Each is one locked write to the storage.
        for key, value in (("agent", agent_id), ("run_path", str(run_dir)), ("wandb_run", wandb_run_name(sweep, name))):
            set_attr(trial, key, value)
        params = decode(spec, trial.params)
        pruning = not isinstance(study.pruner, NopPruner)
        flags = {"lost": False}
        reported: set[int] = set()  # every trial is freshly asked: the study holds no epoch of it yet

        def report(step: int, value: float) -> bool:
            try:
                if step not in reported:  # a resumed trial may replay epochs the study already has
                    trial.report(value, step)
                    reported.add(step)
                    trial.set_user_attr("epochs", step)
                return pruning and trial.should_prune()
            except Exception as exc:  # finished meanwhile: another agent declared it dead
                log.warning("trial %s: cannot report (%s); stopping it", name, exc)
                flags["lost"] = True
                return True

        def unreported(epochs: int) -> int | None:  # the epochs attribute, unless report() already set it
            return None if reported and epochs == max(reported) else epochs

        try:
            cfg = sweep.trial_config(spec, params, name)
            if resumed:  # the new trial re-reports the epochs the run finished before the kill
                for row_epoch, value in _history_metric(run_dir, spec.metric):
                    if row_epoch not in reported:
                        trial.report(value, row_epoch)
                        reported.add(row_epoch)
                if reported:
                    set_attr(trial, "epochs", max(reported))
            log.info("%s: trial %s %s: %s", agent_id, name,
                     f"resumed as trial {trial_name(trial.number)}" if resumed else "started", params)
            outcome = trial_fn(TrialRun(sweep, spec, trial.number, name, run_dir, cfg, report))
        except Exception as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.error("%s: trial %s failed: %s", agent_id, name, message, exc_info=not isinstance(exc, InatError))
            set_attr(trial, "error", message)
            _end(study, trial, "failed", state=TrialState.FAIL)
            mark_run(run_dir, "failed", error=message)
            result = "failed"
        else:
            if flags["lost"]:  # the study already holds it as FAIL; keep run.json saying so
                mark_run(run_dir, "failed", error="declared dead by another agent (heartbeat too old)")
                result = "failed"
            elif outcome.pruned:
                _end(study, trial, "pruned", unreported(outcome.epochs), state=TrialState.PRUNED)
                mark_run(run_dir, "pruned", pruned_at_epoch=outcome.epochs)
                result = "pruned"
            elif outcome.value is None:
                _end(study, trial, "failed", unreported(outcome.epochs), state=TrialState.FAIL)
                result = "failed"
            else:
                _end(study, trial, "finished", unreported(outcome.epochs), outcome.value)
                result = "finished"
            log.info("%s: trial %s %s after %d epoch(s), best %s %s", agent_id, name, result,
                     outcome.epochs, spec.metric, outcome.value)
    write_json(state_path, {"agent_id": agent_id, "trial": None, "last_trial": trial.number,
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return result


def train_trial(tr: TrialRun, replicas: int = 1) -> Outcome:
    """The real trial: train() into the trial's run directory, reporting each epoch to the pruner.
    replicas > 1: over that many GPUs (an agent given several: `functools.partial(train_trial, ...)`)."""
    import keras  # lazy: Keras, for the real trial only (tests pass their own trial_fn)

    from ..train import train  # lazy: as above

    class Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(tr.spec.metric)
            if value is not None and tr.report(epoch + 1, float(value)):
                self.model.stop_training = True

    tr.run_dir.mkdir(parents=True, exist_ok=True)
    # Name the W&B run per sweep (train() would name it after the directory, "0003", which repeats
    # in every sweep); train() then logs into this run. Offline unless WANDB_MODE says otherwise.
    run_id = wandb_run_name(tr.sweep, tr.name)
    tracking.start(tr.run_dir, tr.config.to_dict(), name=run_id, run_id=run_id, group=tr.sweep.id,
                   job_type="sweep")
    try:
        # All agents share SCRATCH/cache: the first one to need a size decodes the images once.
        result = train(tr.config, tr.run_dir, tr.sweep.data_root, callbacks=[Pruning()],
                       wandb_group=tr.sweep.id, wandb_job_type="sweep", verbose=0,
                       cache_root=layout.cache_dir(tr.sweep.scratch_root), replicas=replicas)
    finally:
        run = getattr(sys.modules.get("wandb"), "run", None)
        if run is not None:  # train() failed before it took the run over
            run.finish(exit_code=1)
    info = read_trial(tr.run_dir, tr.spec.metric, tr.spec.maximize)
    pruned = result.status == "stopped" and result.epochs_done < tr.config.epochs
    return Outcome(info["best_metric"], result.epochs_done, pruned)


# ---- helpers -------------------------------------------------------------------------------------------


def wandb_run_name(sweep: Sweep, name: str) -> str:
    """The W&B run (name and id) of the trial that trains into trials/<name>/."""
    return f"{sweep.id}-{name}"


def _end(study, trial, state_name: str, epochs: int | None = None, value: float | None = None, state=None) -> None:
    """Tell the study how `trial` ended, after its user attributes say so (a finished trial takes none)."""
    set_attr(trial, "state", state_name)
    if epochs is not None:
        set_attr(trial, "epochs", epochs)
    tell(study, trial.number, value, state=state)
def _stopped(sweep: Sweep) -> str | None:
    request = sweep.stop_request()
    return f"sweep stopped at {request.get('stopped', '?')} (sweep-stop)" if request else None


def _frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def finished_reason(sweep: Sweep) -> str | None:
    """Why no agent would take another trial of `sweep` (run_cap reached, grid exhausted, metric
    target met) once its running trials end; None while there is work left, or a trial is running."""
    study = open_study(sweep, sweep.spec())
    if any(t.state == trial_states().RUNNING for t in study.get_trials(deepcopy=False)):
        return None
    return _sweep_done(study, sweep.spec())


def _sweep_done(study, spec: SweepSpec) -> str | None:
    from optuna.samplers import GridSampler  # lazy: Optuna, when an agent runs

    trials = study.get_trials(deepcopy=False)
    if any(t.state == trial_states().WAITING for t in trials):
        return None  # a stopped or requeued trial's run waits to be resumed: the next ask takes it
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
    rows = RunDir(run_dir).committed_history()
    return [(int(r["epoch"]), r[metric]) for r in rows if r.get(metric) == r.get(metric)]  # skips NaN


def trials_ended_by(sweep: Sweep, agent_id: str) -> int:
    """Trials this agent id already took to an end (finished, pruned or failed) in earlier attempts.

    A trial it was killed in and that a later attempt resumed in a new trial (superseded) is not one:
    its run is still that agent's work in progress."""
    TrialState = trial_states()
    study = open_study(sweep, sweep.spec(), agent_id)
    trials = study.get_trials(deepcopy=False)
    moved_on = superseded(trials)
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in ended and t.user_attrs.get("agent") == agent_id
               and t.number not in moved_on)
