"""`inat-jobs`: the command line. Each group of commands lives in a module of `jobs.commands`, which
registers its commands on `jobs.app.app` when it is imported, as it is here.

Errors meant for users (`InatError`) print as one line on stderr and exit with status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from inat.backends import check_backend
from inat.errors import InatError

from . import quiet
from .app import app
from .commands import cluster, controls, dashboard, data, figures, run, sweep, sync  # noqa: F401 (they register the commands)


def main() -> None:
    # TensorFlow's C++ start-up chatter drowns the progress bar; users can still raise it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet.install()  # and the lines that variable no longer silences (see jobs/quiet.py)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    # Our INFO lines, not JAX's (under KERAS_BACKEND=jax it logs each platform it probes and lacks).
    logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        check_backend()
        app()
    except InatError as exc:
        print(f"inat-jobs: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("inat-jobs: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
