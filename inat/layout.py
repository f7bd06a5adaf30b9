"""Where outputs live on scratch storage: one documented layout, used by every command.

    SCRATCH/                     --out, else $INAT_SCRATCH, else $SCRATCH/inat, else ./scratch
      runs/<run_id>/             one training run (see RUN_FILES)
      sweeps/<sweep_id>/         a sweep: its spec, its study, and trials/<trial_id>/ run directories
      pipelines/<pipeline_id>/   what `inat-jobs pipeline` submitted
      cache/                     decoded-image caches shared by all runs
      jobs/                      submitit folders: sbatch scripts and job logs
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from .errors import InatError
from .rundir import best_model_path

# What a run directory holds. `collect` copies everything but the checkpoint folder.
RUN_FILES = {
    "config.yaml": "the resolved run config",
    "run.json": "run id, data root, classes, status, library versions",
    "splits.json": "the train / val / test file lists, so retraining and testing reproduce them",
    "history.csv": "one row per finished epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds",
    "model.keras": "the model of the best epoch so far, by the config's monitor (a sweep's metric)",
    "checkpoint/": "the last finished epoch's model and state, for resuming",
    "test_metrics.json": "written by `inat-jobs test`",
    "predictions.csv": "written by `inat-jobs test`: one row per test image",
    "figures/": "written by `inat-jobs visualize`",
    "report.html": "written by `inat-jobs report`: one self-contained page",
    "wandb/": "W&B run files (offline runs: upload with `wandb sync`)",
}


def require_model(run_dir: str | os.PathLike) -> Path:
    """RUN/model.keras, or the one-line error; checked before a job is submitted for the run, too."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise InatError(f"{run_dir}: run directory not found")
    model_path = best_model_path(run_dir)
    if not model_path.is_file():
        raise InatError(f"{run_dir}: no model.keras here; train it first with `inat-jobs train`")
    return model_path


def scratch_root(out: str | os.PathLike | None = None) -> Path:
    if out:
        return Path(out).expanduser().resolve()
    if os.environ.get("INAT_SCRATCH"):
        return Path(os.environ["INAT_SCRATCH"]).expanduser().resolve()
    if os.environ.get("SCRATCH"):
        return (Path(os.environ["SCRATCH"]).expanduser() / "inat").resolve()
    return Path("scratch").resolve()


def new_id(prefix: str = "") -> str:
    """Sortable and unique across nodes without coordination: time + random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{secrets.token_hex(2)}"


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
