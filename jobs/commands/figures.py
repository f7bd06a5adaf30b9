"""Figure and report commands: visualize, sweep-report, report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from inat import layout
from inat.errors import InatError
from inat.figures import WHAT, parse_what
from inat.figures.report import write_report
from inat.sweep import find_sweep

from ..app import app
from ..slurm.submit import DryRun, maybe_submit
from .options import ClusterSetOpt, DryRunOpt, ImageOpt, OutOpt, ProfileOpt, RunsClusterOpt


@app.command()
def visualize(
    run: List[Path] = typer.Option(
        ..., "--run", "-r", help="Run directory (SCRATCH/runs/RUN_ID) with a trained model.keras. Repeatable."
    ),
    what: str = typer.Option(
        ",".join(WHAT), "--what", "-w",
        help="Comma-separated figures: grid (test predictions), filters (first conv layer: filters "
             "and feature maps), guided (guided backprop of 10 conv5 neurons), confusion (test "
             "confusion matrix).",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", "-d", help="Dataset root, if it moved since training."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the test images shown and the neurons picked."),
    max_images: int = typer.Option(
        200, "--max-images", help="Test images searched for where each conv5 neuron fires most."
    ),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also write a PDF beside each PNG."),
    cluster: Optional[str] = RunsClusterOpt,
    profile: Optional[Path] = ProfileOpt,
    cluster_set: Optional[List[str]] = ClusterSetOpt,
    image: Optional[Path] = ImageOpt,
    dry_run: bool = DryRunOpt,
) -> None:
    """Write RUN/figures/*.png (and .pdf). Needs no `test` run first: predictions are computed here.

    \b
    Example (--dry-run shows the sbatch script and submits nothing):
      inat-jobs visualize --run SCRATCH/runs/RUN_ID --cluster slurm --dry-run
    """
    names = parse_what(what)  # a typo fails before the model loads
    if max_images < 1:
        raise InatError(f"--max-images {max_images}: must be at least 1")
    from ..tasks import visualize_run  # lazy: submitit

    args = (names, data and data.resolve(), seed, max_images, pdf)
    call = lambda r: (visualize_run, (r, *args))  # noqa: E731
    if maybe_submit("visualize", run, cluster, profile, cluster_set, image, call, DryRun() if dry_run else None):
        return
    from inat.figures.visualize import visualize as make_figures  # lazy: Keras, TensorFlow, matplotlib

    for one in run:
        for path in make_figures(one, names, data, seed=seed, max_images=max_images, pdf=pdf):
            typer.echo(f"wrote {path}")


@app.command("sweep-report")
def sweep_report(
    sweep_id: str = typer.Argument(
        ..., help="Sweep id (a folder under SCRATCH/sweeps/), or the sweep folder itself."
    ),
    out: Optional[Path] = OutOpt,
    pdf: bool = typer.Option(False, "--pdf/--no-pdf", help="Also write a PDF beside each PNG."),
) -> None:
    """Write SWEEP/trials.csv and SWEEP/figures/: accuracy over time, parallel coordinates, correlation, importance.

    Reads only the trial run directories, so it works offline, for either backend, mid-sweep.
    """
    from inat.figures.sweep_report import sweep_report as make_report  # lazy: matplotlib

    for path in make_report(sweep_dir(sweep_id, out), pdf=pdf):
        typer.echo(f"wrote {path}")


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run directory or a sweep directory."),
) -> None:
    """Write one self-contained PATH/report.html: metrics, config, history, figures (images embedded)."""
    typer.echo(f"wrote {write_report(path)}")


def sweep_dir(sweep_id: str, out: Optional[Path]) -> Path:
    """A sweep folder given as a path (one holding trials/), else the sweep of that id under SCRATCH."""
    given = Path(sweep_id).expanduser()
    if ("/" in sweep_id or sweep_id in (".", "..")) and (given / "trials").is_dir():
        return given.resolve()
    return find_sweep(layout.scratch_root(out), sweep_id, record=False)
