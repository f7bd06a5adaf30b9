"""The Keras backend a process trains on: `KERAS_BACKEND`, Keras's own variable (tensorflow when unset).

Keras reads it once, when it is first imported, so it is a property of the process, not of a run
config: set it in the shell (or the job's environment) before `inat-jobs` starts. Slurm jobs inherit
it from the submitting shell, as they inherit every variable. docs/backends.md says what runs where.
"""

from __future__ import annotations

import importlib.util
import os

from .errors import ConfigError

SUPPORTED = {"tensorflow": "tensorflow", "jax": "jax"}  # backend -> the module it needs
INSTALL = {"tensorflow": "pip install -e '.[cpu]' (or '.[gpu]')", "jax": "pip install -e '.[jax]'"}


def requested() -> str:
    """The backend KERAS_BACKEND names, unchecked: what this process's Keras will load, or a job's."""
    return os.environ.get("KERAS_BACKEND", "").strip() or "tensorflow"


def check_backend() -> str:
    """The backend KERAS_BACKEND asks for, checked before Keras is imported: one line naming the
    variable if it is one we do not run on, or if its library is not installed."""
    name = requested()
    if name not in SUPPORTED:
        raise ConfigError(f"KERAS_BACKEND={name!r}: inat-jobs runs on {' or '.join(SUPPORTED)}")
    # TensorFlow is the base install, and looking it up here would spend jobs.quiet's one chance to
    # catch its import (find_spec is what that hook watches for).
    if name != "tensorflow" and importlib.util.find_spec(SUPPORTED[name]) is None:
        raise ConfigError(f"KERAS_BACKEND={name}: {SUPPORTED[name]} is not installed ({INSTALL[name]})")
    return name
