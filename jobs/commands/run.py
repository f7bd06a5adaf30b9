"""Single-run commands: train, test, model-info, fetch-weights, make-demo-data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from inat import layout
from inat.config import MODELS, RunConfig
from inat.data import check_root
from inat.errors import InatError
from inat.models import flops, weights

from ..app import app
from ..slurm.submit import DryRun, maybe_submit
from .options import (
    ClusterSetOpt, ConfigOpt, DataOpt, DryRunOpt, GpusPerTrialOpt, ImageOpt, OutOpt, ProfileOpt, RunsClusterOpt,
    SetOpt,
)  # fmt: skip


@app.command()
def train(
    data: Path = DataOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    out: Optional[Path] = OutOpt,
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="Name of the run directory. Re-running with the same id resumes after the last finished epoch."
    ),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Read decoded images from SCRATCH/cache/, built first if needed (see cache-data)."
    ),
    gpus_per_trial: int = GpusPerTrialOpt,
) -> None:
    """Train one model; writes SCRATCH/runs/RUN_ID/ (config, splits, history.csv, model.keras, checkpoint)."""
    cfg = RunConfig.load(config, set_ or [])
    if run_id:
        layout.check_id(run_id, "--run-id", "SCRATCH/runs/")
    _check_data_root(data)
    scratch = layout.scratch_root(out)
    run_dir = layout.runs_dir(scratch) / (run_id or layout.new_id())
    typer.echo(f"run directory: {run_dir}")
    from inat.train import train as train_run  # lazy: Keras and TensorFlow

    result = train_run(cfg, run_dir, data, cache_root=layout.cache_dir(scratch) if cache else None,
                       replicas=gpus_per_trial)
    typer.echo(
        f"{result.status}: {result.epochs_done}/{cfg.epochs} epochs, best val_accuracy "
        f"{result.best_val_accuracy:.4f} at epoch {result.best_epoch}; model: {run_dir / 'model.keras'}"
    )


@app.command()
def test(
    run: List[Path] = typer.Option(..., "--run", "-r", help="Run directory to evaluate. Repeatable."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Dataset root, if it moved since training."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Evaluation batch size (default: the run's)."),
    cluster: Optional[str] = RunsClusterOpt,
    profile: Optional[Path] = ProfileOpt,
    cluster_set: Optional[List[str]] = ClusterSetOpt,
    image: Optional[Path] = ImageOpt,
    dry_run: bool = DryRunOpt,
) -> None:
    """Evaluate each run's model.keras on the test split; writes RUN/test_metrics.json and predictions.csv.

    \b
    Example (--dry-run shows the sbatch script and submits nothing):
      inat-jobs test --run SCRATCH/runs/RUN_ID --cluster slurm --dry-run
    """
    from ..tasks import evaluate_run  # lazy: submitit

    if batch_size is not None and batch_size < 1:
        raise InatError(f"--batch-size {batch_size}: expected an integer >= 1 (leave it out for the run's own)")
    call = lambda r: (evaluate_run, (r, data and data.resolve(), batch_size))  # noqa: E731
    if maybe_submit("test", run, cluster, profile, cluster_set, image, call, DryRun() if dry_run else None):
        return
    from inat.evaluate import evaluate, format_table  # lazy: Keras and TensorFlow

    for run_dir in run:
        metrics = evaluate(run_dir, data, batch_size)
        typer.echo(f"\n{run_dir}: test accuracy {metrics['accuracy']:.4f} on {metrics['n']} images")
        typer.echo(format_table(metrics))


@app.command("model-info")
def model_info(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
) -> None:
    """Parameters and computations of a config: the closed-form formula next to Keras's own count."""
    cfg = RunConfig.load(config, set_ or [])
    from inat.models.common import make_model  # lazy: Keras

    model = make_model(cfg.replace(weights="none"), classes)
    keras_params = model.count_params()
    if cfg.is_transfer:
        typer.echo(f"{cfg.model}: {keras_params:,} parameters (Keras); the closed-form formula covers the scratch CNN only")
        return
    result = flops.count(cfg, classes)
    typer.echo(flops.format_table(result))
    verdict = "agree" if result["params"] == keras_params else "DISAGREE"
    typer.echo(f"parameters: formula {result['params']:,} | Keras {keras_params:,} ({verdict})")
    if result["params"] != keras_params:
        raise typer.Exit(1)


@app.command("fetch-weights")
def fetch_weights(
    models_: Optional[List[str]] = typer.Option(
        None, "--models", "-m", help=f"Models to fetch (default: all of {', '.join(MODELS[1:])}). Repeatable."
    ),
) -> None:
    """Download the ImageNet no-top weights into the Keras cache ($KERAS_HOME/models). Run where there is internet."""
    names = models_ or list(MODELS[1:])
    for name in names:
        if name not in MODELS[1:]:
            raise InatError(f"--models {name!r}: unknown model; allowed: {', '.join(MODELS[1:])}")
    for path in weights.fetch_weights(names):
        typer.echo(f"ok: {path}")


@app.command("make-demo-data")
def make_demo_data(
    root: Path = typer.Argument(..., help="Directory to create (must not exist or be empty)."),
    train_per_class: int = typer.Option(60, help="Training images per class."),
    test_per_class: int = typer.Option(15, help="Test images per class."),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing non-empty directory."),
) -> None:
    """Write a small learnable synthetic dataset with the 10 iNaturalist class names."""
    from inat.data.demo import make_demo_data as make  # lazy: numpy and PIL

    path = make(root, n_train_per_class=train_per_class, n_test_per_class=test_per_class, seed=seed, overwrite=overwrite)
    typer.echo(f"demo data: {path}")


def _check_data_root(data: Path) -> None:
    """The layout checks of `discover`, before TensorFlow loads or a run directory is made."""
    if not data.exists():
        raise InatError(f"--data {data}: directory not found")
    check_root(data)
