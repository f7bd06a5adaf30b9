"""The `inat-jobs` typer app, on its own so that the command modules can register on it without
importing `jobs.cli`, which imports them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="inat-jobs",
    help="Train, sweep, test and visualise iNaturalist-12K CNNs, locally or as Slurm jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
