"""Where outputs live on scratch storage: one documented layout, used by every command.

    SCRATCH/                     --out, else $INAT_SCRATCH, else $SCRATCH/inat, else ./scratch
      runs/<run_id>/             one training run (see `inat.rundir.RUN_FILES`)
        <sweep_id>-best<k>-seed<s>/   a retraining of a sweep's rank-k config with seed s
      sweeps/<sweep_id>/         a sweep: its spec, its study, and trials/<trial_id>/ run directories
      pipelines/<pipeline_id>/   what `inat-jobs pipeline` submitted
      cache/                     decoded-image caches shared by all runs
      jobs/                      submitit folders: sbatch scripts and job logs
      wandb-osh/                 wandb-osh's command files: offline W&B runs waiting for `inat-jobs sync`

Every id that names a directory here passes `check_id`, whoever chose it (a user's --run-id, a
sweep id on the command line, `new_id`), so no id can point outside its folder.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from .errors import ConfigError

# An id names one directory: no separator, not "." or "..", not hidden.
ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def scratch_root(out: str | os.PathLike | None = None) -> Path:
    if out:
        return Path(out).expanduser().resolve()
    if os.environ.get("INAT_SCRATCH"):
        return Path(os.environ["INAT_SCRATCH"]).expanduser().resolve()
    if os.environ.get("SCRATCH"):
        return (Path(os.environ["SCRATCH"]).expanduser() / "inat").resolve()
    return Path("scratch").resolve()


def root_of(directory: str | os.PathLike) -> Path:
    """The scratch root of SCRATCH/<area>/<id> (a run, sweep, pipeline or job group directory)."""
    return Path(directory).parent.parent


def new_id(prefix: str = "") -> str:
    """Sortable and unique across nodes without coordination: time + random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{secrets.token_hex(2)}"


def check_id(value: str, what: str, where: str) -> str:
    """`value`, if it can name one directory; else a one-line ConfigError naming `what` (e.g. "--run-id",
    "sweep id") and `where` the directory would be (e.g. "SCRATCH/runs/")."""
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise ConfigError(f"{what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', not starting with "
                          f"'.' (it names a directory under {where})")
    return value


def runs_dir(root: Path) -> Path:
    return root / "runs"


def sweeps_dir(root: Path) -> Path:
    return root / "sweeps"


def cache_dir(root: Path) -> Path:
    return root / "cache"


def jobs_dir(root: Path) -> Path:
    return root / "jobs"


def pipelines_dir(root: Path) -> Path:
    return root / "pipelines"


def sync_dir(root: Path) -> Path:
    """wandb-osh's command directory: training writes a file here per offline W&B run with new data,
    and `inat-jobs sync` (on a node that reaches W&B) uploads those runs."""
    return root / "wandb-osh"


def root_of_run(run_dir: str | os.PathLike) -> Path | None:
    """The scratch root of a run directory laid out here, SCRATCH/runs/<id> or
    SCRATCH/sweeps/<id>/trials/<t>; None for a run directory anywhere else."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "runs":
        return run_dir.parent.parent
    if run_dir.parent.name == "trials" and run_dir.parent.parent.parent.name == "sweeps":
        return run_dir.parents[3]
    return None


def retrain_run_id(sweep_id: str, rank: int, seed: int) -> str:
    """The run id of a sweep's rank-th config (1 = best) retrained with `seed`."""
    return f"{sweep_id}-best{rank}-seed{seed}"


def retrain_runs(root: Path, sweep_id: str) -> list[Path]:
    """The retraining run directories of a sweep that exist under SCRATCH/runs/, sorted."""
    return sorted(runs_dir(root).glob(f"{sweep_id}-best*-seed*"))
