# Sourced by the %environment section of containers/inat.def (POSIX sh) each time the
# container starts. Apptainer evaluates it in an empty environment (the host's variables are
# not visible here) and then adds the host's variables that it does not set: what is set
# here wins over the host, and APPTAINERENV_X=value (or --env X=value) wins over both.
# Defaults that depend on the host's variables belong in run.sh instead.

# The project's Python environment (containers/install-inat.sh).
PATH="/opt/venv/bin:$PATH"
export PATH
# The image's packages only: none from a bound $HOME (~/.local), and no host PYTHONPATH (a
# checkout, another Python's site-packages from `module load`; Slurm passes the submitter's
# environment to the job). Set empty, which Python ignores, so that the host's cannot pass
# in; `--env PYTHONPATH=...` (APPTAINERENV_PYTHONPATH) still sets one.
PYTHONNOUSERSITE=1
PYTHONPATH=
export PYTHONNOUSERSITE PYTHONPATH
