"""Where Part B's ImageNet weights come from, so that training never touches the network.

Compute nodes usually have no internet. Keras applications called with `weights="imagenet"` try to
download the file on first use and fail there after a few seconds, deep inside the job. Instead:

* `inat-jobs fetch-weights` (run where there is internet, e.g. a login node) puts the no-top weight
  files into the Keras cache, the same `$KERAS_HOME/models` directory Keras itself uses;
* at training time `resolve_weights` turns `weights: imagenet` into the path of the cached file (or a
  one-line error saying how to get it), and `make_model` hands that *path* to keras.applications.

Keras is imported lazily: resolving a path and reporting a missing file must be instant, because
they are the CLI's error paths.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InatError

# Suffixes Keras's `load_weights` understands (".weights.h5" ends in ".h5").
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclass(frozen=True)
class WeightFile:
    """One no-top ImageNet weight file, named and hashed exactly as keras.applications names it."""

    fname: str
    md5: str
    module: str  # keras.src.applications module that holds the URL constant
    url_attr: str  # name of that constant
    url_is_dir: bool  # True when the constant is a folder URL and `fname` must be appended

    @property
    def url(self) -> str:
        # The URL comes from Keras's own constants so it follows Keras upgrades; importing them
        # loads Keras, which is why this is a property and not a module-level value.
        base = getattr(importlib.import_module(self.module), self.url_attr)
        return base + self.fname if self.url_is_dir else base


# File names and md5 hashes as passed to `get_file` in keras/src/applications/*.py (include_top=False
# branch); tests/models/test_weights.py checks them against the installed Keras source.
WEIGHT_FILES: dict[str, WeightFile] = {
    "inceptionv3": WeightFile(
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
        "keras.src.applications.inception_v3",
        "WEIGHTS_PATH_NO_TOP",
        False,
    ),
    "inceptionresnetv2": WeightFile(
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
        "keras.src.applications.inception_resnet_v2",
        "BASE_WEIGHT_URL",
        True,
    ),
    "resnet50": WeightFile(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
        "keras.src.applications.resnet",
        "BASE_WEIGHTS_PATH",
        True,
    ),
    "xception": WeightFile(
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
        "keras.src.applications.xception",
        "WEIGHTS_PATH_NO_TOP",
        False,
    ),
}


def _keras_home() -> Path:
    # Keras's rule (keras/src/backend/config.py): $KERAS_HOME if set, else ~/.keras, or /tmp/.keras
    # when the home directory is not writable. Read at call time (Keras reads it once at import).
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = os.path.expanduser("~")
    return Path(home if os.access(home, os.W_OK) else "/tmp") / ".keras"


def _keras_fallback_models() -> Path:
    # keras.utils.get_file uses this when the Keras home is not writable.
    return Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / ".keras" / "models"


def cache_dir() -> Path:
    """The directory holding cached weight files: `$KERAS_HOME/models`, else `~/.keras/models`."""
    return _keras_home() / "models"


def resolve_weights(cfg) -> str | None:
    """`cfg.weights` as the value to pass to keras.applications: None or a local file path."""
    if not cfg.is_transfer or cfg.weights.lower() == "none":
        return None  # the scratch CNN always starts from random weights
    if cfg.weights.lower() == "imagenet":
        wf = WEIGHT_FILES[cfg.model]
        primary = cache_dir() / wf.fname
        candidates = [primary]
        if not os.access(_keras_home(), os.W_OK):
            # Where plain Keras would have put the file on this machine.
            candidates.append(_keras_fallback_models() / wf.fname)
        for path in candidates:
            if path.is_file():
                return str(path)
        raise InatError(
            f"ImageNet weights for {cfg.model} are not in the Keras cache ({primary}): run "
            f"`inat-jobs fetch-weights --models {cfg.model}` on a machine with internet (e.g. a "
            f"login node) and make KERAS_HOME point at the same place on the compute nodes"
        )
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found; set weights to imagenet, none, or the path of "
                          f"an existing {'/'.join(WEIGHT_SUFFIXES)} file")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(
            f"weights file {path}: Keras can only load {', '.join(WEIGHT_SUFFIXES)} weight files"
        )
    return str(path)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(
    models: list[str], cache: str | Path | None = None, timeout: float = 30.0
) -> list[Path]:
    """Download the no-top ImageNet weights of `models` into `cache` (default: `cache_dir()`).

    Files already present with the right md5 are kept. Each download goes to a staging directory
    beside the cache and is renamed into place only after Keras has checked its hash:
    `keras.utils.get_file` itself writes straight to the final name and, on a hash mismatch or a
    killed job, leaves a broken file there that later loads would trip over. `timeout` bounds every
    socket operation, so an unreachable host fails in seconds rather than hanging a login shell.
    """
    unknown = [m for m in models if m not in WEIGHT_FILES]
    if unknown:
        raise ConfigError(
            f"fetch-weights: unknown model '{unknown[0]}' (allowed: {', '.join(WEIGHT_FILES)})"
        )
    target = Path(cache).expanduser() if cache is not None else cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InatError(f"cannot create weights cache {target}: {exc.strerror or exc}") from None
    if not os.access(target, os.W_OK):
        raise InatError(
            f"weights cache {target} is not writable (set KERAS_HOME to a writable directory)"
        )

    from keras.utils import get_file  # lazy: loads TensorFlow

    paths = []
    for model in models:
        wf = WEIGHT_FILES[model]
        dest = target / wf.fname
        if dest.is_file() and _md5(dest) == wf.md5:
            paths.append(dest)
            continue
        url = wf.url
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target))
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)  # urlretrieve has no timeout argument of its own
        try:
            staged = get_file(wf.fname, url, cache_dir=str(staging), cache_subdir=".", file_hash=wf.md5)
            os.replace(staged, dest)
        except Exception as exc:  # noqa: BLE001 - get_file raises bare Exception for URL failures
            reason = " ".join(str(exc).split()) or type(exc).__name__
            # Keras says "URL fetch failure on <url>: <errno> -- <reason>"; we name the URL ourselves.
            reason = reason.removeprefix(f"URL fetch failure on {url}: ").removeprefix("None -- ")
            raise InatError(f"cannot fetch ImageNet weights for {model} from {url}: {reason}") from None
        finally:
            socket.setdefaulttimeout(old_timeout)
            shutil.rmtree(staging, ignore_errors=True)
        paths.append(dest)
    return paths
