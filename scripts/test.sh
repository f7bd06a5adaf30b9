#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run them. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not slow"`). Tests that need Slurm or Apptainer skip when those are
# absent, except under CI=true, where they fail instead: start them first with
# scripts/slurm/setup-cluster.sh and scripts/apptainer/install.sh (as .ci/run does).
# Two xdist workers: one trains while the other waits on a Slurm job or a sleeping agent; the
# cluster tests stay together on one worker (tests/conftest.py). `-n 0` runs in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
