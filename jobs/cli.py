"""`inat-jobs`: the command line. Each group of commands lives in its own module and registers here.

Errors meant for users (`InatError`) print as one line on stderr and exit with status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from inat.errors import InatError

from . import quiet

app = typer.Typer(
    name="inat-jobs",
    help="Train, sweep, test and visualise iNaturalist-12K CNNs, locally or as Slurm jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    # Imported here, not at the top, so each module can `from jobs.cli import app`.
    from .commands import cluster, data, figures, run, sweep  # noqa: F401


def main() -> None:
    # TensorFlow's C++ start-up chatter drowns the progress bar; users can still raise it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet.install()  # and the lines that variable no longer silences (see jobs/quiet.py)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    _register()
    try:
        app()
    except InatError as exc:
        print(f"inat-jobs: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("inat-jobs: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
