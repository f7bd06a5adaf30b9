"""Launching a sweep: check launch-sweep's options, then create the sweep and its study or W&B sweep.

`launch-sweep` and `pipeline` both start with it; the agents come after (`jobs.agents` locally,
`jobs.slurm.submit.submit_agents` on Slurm).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import typer

from inat import layout
from inat.config import parse_overrides
from inat.errors import ConfigError, InatError
from inat.sweep import BACKENDS, Sweep, check_new_sweep, load_spec, new_sweep, rdb, wandb_backend
from inat.sweep.space import optuna_space
from inat.sweep.study import create_study


# What a dry run calls the sweep it would create: the id is drawn when the sweep is created.
DRY_RUN_ID = "<sweep-id>"


def create_sweep(sweep: Path, agents: int, trials_per_agent: Optional[int], backend: str, data: Path,
                 out: Optional[Path], set_: Optional[List[str]], storage: Optional[str], seed: int,
                 dry_run: bool = False):
    """Validate the launch options, then create SCRATCH/sweeps/ID/ and its study; returns (Sweep, SweepSpec).

    dry_run: validate only, and return the Sweep that would be created (id DRY_RUN_ID), creating nothing."""
    if agents < 1:
        raise ConfigError(f"--agents {agents}: expected an integer >= 1")
    if trials_per_agent is not None and trials_per_agent < 1:
        raise ConfigError(f"--trials-per-agent {trials_per_agent}: expected an integer >= 1")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
    if storage and backend != "local":
        raise ConfigError("--storage is for --backend local (W&B keeps the sweep on its server)")
    fixed = parse_overrides(set_ or [])
    spec = load_spec(sweep, fixed)
    spec.check_overrides(fixed)
    if backend == "local":
        optuna_space(spec)
        check_bounded(spec, trials_per_agent, "--trials-per-agent")
    else:
        wandb_backend.preflight()
    if not data.is_dir():
        raise InatError(f"--data {data}: directory not found")
    if storage:  # before anything is created or submitted; the record keeps the password masked
        storage = rdb.resolve(storage)
        rdb.check_connection(storage)
    if not spec.metric.startswith("val_"):
        # Validation exists to rank configs; the training set rewards whatever memorises it best.
        typer.echo(f"warning: {sweep}: metric {spec.metric} is measured on the training set, so the sweep "
                   f"tunes on the data it trains on; val_{spec.metric} ranks on the held-out split", err=True)

    if dry_run:
        check_new_sweep(sweep, backend, data, fixed)
        where = layout.sweeps_dir(layout.scratch_root(out)) / DRY_RUN_ID
        return Sweep(DRY_RUN_ID, where, backend, str(data.resolve()), fixed,
                     rdb.masked(storage) if storage else None, seed), spec
    sw, spec = new_sweep(layout.scratch_root(out), sweep, backend, data, fixed,
                         rdb.masked(storage) if storage else None, seed)
    try:
        if storage:
            rdb.save_secret(sw.dir, storage)
        if backend == "local":
            create_study(sw, spec)
        else:
            wandb_backend.create(sw, spec)
    except BaseException:
        shutil.rmtree(sw.dir, ignore_errors=True)
        raise
    return sw, spec


def check_bounded(spec, count: int | None, flag: str) -> None:
    """Local agents stop at `count` trials, the sweep's run_cap or the end of a grid: one must be set."""
    if count is None and not spec.run_cap and spec.method != "grid":
        raise ConfigError(f"{spec.path}: no run_cap and not a grid search, so the agents would never stop; "
                          f"pass {flag} N or add run_cap to the sweep file")
