"""The rows `sweep-status` shows: one per trial, from the study (local backend) or from the trial run
directories alone (W&B backend, whose server keeps the states)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ..config import RunConfig
from ..rundir import RunDir
from . import rdb
from .liveness import HEARTBEAT_S, STALE_AFTER_S, recover_stale, run_dir_of, stale_trials, superseded
from .space import decode
from .spec import SweepSpec
from .store import Sweep, read_trial, trial_dirs, trial_name
from .study import open_study, storage_for

# Optuna's trial states by the names `sweep-status` shows
STATE_NAMES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def trial_rows(sweep: Sweep, spec: SweepSpec, stale_after: float = STALE_AFTER_S,
               fail_stale: bool = False) -> list[dict[str, Any]]:
    """One row per trial of the study. Reads only, unless `fail_stale`: then RUNNING trials without a
    heartbeat for `stale_after` seconds are told FAIL first, as an agent does when it starts.
    Without it such a trial stays RUNNING and its row gives `stale_s`, the seconds since its last
    beat (by this node's clock, since judging by the storage's clock would mean writing a probe).

    A requeued agent's killed trial has state "superseded" and `superseded_by`, the trial that
    resumes its run; that one has `resumes`, and `why` when it was handed on because its agent
    stopped beating (a database's heartbeat, `inat.sweep.rdb.HandOn`). `run_dir` is the directory
    under trials/ of each. With a database, Optuna keeps the heartbeats, so no row is `stale_s`."""
    storage = storage_for(sweep, HEARTBEAT_S if fail_stale else None, stale_after)
    study = open_study(sweep, spec, storage=storage)
    stale: dict[int, float] = {}
    if fail_stale and sweep.storage:
        rdb.fail_stale(study)
    elif fail_stale:
        recover_stale(study, storage, sweep, stale_after)
    elif not sweep.storage:  # Optuna keeps a database's heartbeats to itself: agents fail those trials
        stale = {t.number: age for t, age in stale_trials(study, sweep, stale_after, now=time.time())}
    trials = study.get_trials(deepcopy=False)
    moved_on = superseded(trials)
    by_number = {t.number: t for t in trials}
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
            **_where(sweep.trials_dir / run_name, _seconds(t.datetime_start, t.datetime_complete)),
            "why": by_number[moved_on[t.number]].user_attrs.get("why") if t.number in moved_on else None,
        })
    return rows


def _best_reported(t, spec: SweepSpec) -> float | None:
    values = list(t.intermediate_values.values()) if spec.metric == "val_accuracy" else []
    return max(values) if values else None


def run_dir_rows(sweep: Sweep, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial run directory, the same keys as `trial_rows` where the directories know them."""
    rows = []
    for d in trial_dirs(sweep.trials_dir):
        info = read_trial(d, spec.metric, spec.maximize)
        params = {}
        if info["config_path"].is_file():
            cfg = RunConfig.load(info["config_path"]).to_dict()
            params = {k: cfg[k] for k in spec.swept if k in cfg}
        rows.append({"trial": d.name, "state": info["state"], "epochs_done": info["epochs_done"],
                     "best_val_accuracy": info["best_val_accuracy"], "value": info["best_metric"],
                     "best_epoch": info["best_epoch"],
                     "params": params, "error": None, **_where(d)})
    return rows


def _where(run_dir, seconds: float | None = None) -> dict[str, Any]:
    """The Slurm job the trial ran in (run.json's slurm_job_id, None outside Slurm) and its wall
    seconds: `seconds` (the study's start to end), else run.json's started to its last update."""
    info = RunDir(run_dir).info()
    if seconds is None:
        try:
            start, end = (datetime.strptime(info[k], "%Y-%m-%dT%H:%M:%S%z") for k in ("started", "updated"))
        except (KeyError, TypeError, ValueError):
            pass
        else:
            seconds = _seconds(start, end)
    return {"slurm_job_id": info.get("slurm_job_id"), "seconds": seconds}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    """Wall seconds from start to end (a running trial: to now)."""
    if start is None:
        return None
    end = end or datetime.now(start.tzinfo)
    return round(max(0.0, (end - start).total_seconds()), 1)
