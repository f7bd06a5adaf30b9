"""`sync`: upload offline W&B runs while the jobs that write them run (the work is in inat.wandb_sync)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inat import layout, wandb_sync
from inat.errors import ConfigError, InatError
from inat.sweep import load_sweep

from ..app import app
from .options import OutOpt


@app.command()
def sync(
    sweep: Optional[str] = typer.Option(
        None, "--sweep", help="Only this sweep's runs: its trials and its retrainings (runs/<id>-best*)."
    ),
    out: Optional[Path] = OutOpt,
    once: bool = typer.Option(
        False, "--once", help="One pass over the waiting runs, then exit (1 if a sync failed); for cron."
    ),
    interval: float = typer.Option(30.0, "--interval", help="Seconds between passes."),
    timeout: float = typer.Option(
        wandb_sync.TIMEOUT_S, "--timeout", help="Seconds one `wandb sync` may take before it counts as failed."
    ),
) -> None:
    """Upload offline W&B runs to W&B while they train: the syncing side of wandb-osh, on a node that
    reaches W&B (a login node). Each training job signals after every epoch into
    SCRATCH/wandb-osh/; this runs `wandb sync --include-synced` on each signalled offline run
    directory, retries a failed sync with a growing delay, and runs until interrupted. Runs that
    signalled before it started are uploaded on its first pass.

    Example, in tmux or screen on the login node, while a sweep runs:

        inat-jobs sync --sweep 20261202-013000-ab12 --out /scratch/$USER/inat
    """
    if interval <= 0 or timeout <= 0:
        raise ConfigError(f"--interval {interval:g} / --timeout {timeout:g}: expected seconds > 0")
    if not wandb_sync.available():
        raise InatError(f"inat-jobs sync needs wandb-osh; {wandb_sync.INSTALL_HINT}")
    scratch = layout.scratch_root(out)
    accept, what = None, f"every run under {scratch}"
    if sweep is not None:
        sw = load_sweep(scratch, sweep)
        accept = _of_sweep(scratch, sw.dir)
        what = f"sweep {sw.id} (its trials and {layout.runs_dir(scratch)}/{sw.id}-best*)"
    syncer = wandb_sync.Syncer(layout.sync_dir(scratch), accept=accept, timeout=timeout)
    typer.echo(f"syncing {what}: watching {syncer.command_dir}" + ("" if once else f" every {interval:g} s"),
               err=True)
    done = syncer.loop(interval, passes=1 if once else None)
    typer.echo(f"synced {len(done.synced)} run(s), {len(done.failed)} failed", err=True)
    if done.failed:
        raise typer.Exit(1)


def _of_sweep(scratch: Path, sweep_dir: Path):
    """Whether an offline run directory belongs to the sweep: a trial's, or a retraining's (which
    may start after the syncer did, so they are looked up on each call)."""

    def accept(target: Path) -> bool:
        return sweep_dir in target.parents or any(
            run in target.parents for run in layout.retrain_runs(scratch, sweep_dir.name))

    return accept
