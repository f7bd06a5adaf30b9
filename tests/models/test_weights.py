"""ImageNet weight files: names, cache location, resolution and the offline fetch path."""

from __future__ import annotations

import hashlib
import importlib
import time
from pathlib import Path

import pytest

from conftest import REPO
from inat.models import weights
from inat.config import RunConfig
from inat.errors import ConfigError, InatError
from inat.models.weights import WEIGHT_FILES, cache_dir, fetch_weights, resolve_weights

# Smallest input each constructor accepts: the check below only needs the graph, not the size.
_SMALL = {"inceptionv3": 75, "inceptionresnetv2": 75, "resnet50": 32, "xception": 71}
_CTORS = {
    "inceptionv3": ("keras.src.applications.inception_v3", "InceptionV3"),
    "inceptionresnetv2": ("keras.src.applications.inception_resnet_v2", "InceptionResNetV2"),
    "resnet50": ("keras.src.applications.resnet", "ResNet50"),
    "xception": ("keras.src.applications.xception", "Xception"),
}


class _Asked(Exception):
    pass


@pytest.mark.parametrize("model", sorted(WEIGHT_FILES))
def test_weight_files_are_what_keras_itself_asks_for(model, monkeypatch):
    # Ask the installed Keras which file it would fetch for weights="imagenet", include_top=False,
    # by intercepting its get_file call: our table must name the same file, URL and hash.
    module = importlib.import_module(_CTORS[model][0])
    asked = {}

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        asked.update(fname=fname, origin=origin, cache_subdir=cache_subdir, file_hash=file_hash)
        raise _Asked

    monkeypatch.setattr(module.file_utils, "get_file", fake_get_file)
    s = _SMALL[model]
    with pytest.raises(_Asked):
        getattr(module, _CTORS[model][1])(include_top=False, weights="imagenet", input_shape=(s, s, 3))
    wf = WEIGHT_FILES[model]
    assert asked == {"fname": wf.fname, "origin": wf.url, "cache_subdir": "models", "file_hash": wf.md5}


def test_cache_dir_honours_keras_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert cache_dir() == tmp_path / "kh" / "models"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".keras" / "models"


def test_resolve_none_and_scratch_need_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert resolve_weights(RunConfig(model="resnet50", weights="none")) is None
    assert resolve_weights(RunConfig(model="resnet50", weights="None")) is None
    # The scratch CNN ignores `weights` (its default is "imagenet" for Part B's sake).
    assert resolve_weights(RunConfig(model="scratch", weights="imagenet")) is None


def test_resolve_explicit_path(tmp_path):
    good = tmp_path / "base.weights.h5"
    good.write_bytes(b"x")
    assert resolve_weights(RunConfig(model="xception", weights=str(good))) == str(good)
    with pytest.raises(ConfigError, match=r"weights file .*nothere\.h5 not found"):
        resolve_weights(RunConfig(model="xception", weights=str(tmp_path / "nothere.h5")))
    odd = tmp_path / "base.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"\.h5"):
        resolve_weights(RunConfig(model="xception", weights=str(odd)))


def test_resolve_imagenet_not_cached_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(InatError) as info:
        resolve_weights(RunConfig(model="inceptionv3", weights="imagenet"))
    msg = str(info.value)
    assert "\n" not in msg
    assert "inat-jobs fetch-weights --models inceptionv3" in msg
    assert str(tmp_path / "kh" / "models" / WEIGHT_FILES["inceptionv3"].fname) in msg
    assert "KERAS_HOME" in msg


def test_resolve_imagenet_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / WEIGHT_FILES["resnet50"].fname
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert resolve_weights(RunConfig(model="resnet50", weights="imagenet")) == str(cached)


def test_fetch_failure_is_one_fast_line(monkeypatch, tmp_path):
    # Real failure: this machine has no route to the weights host.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(InatError) as info:
        fetch_weights(["resnet50"], timeout=5)
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "\n" not in msg
    assert "resnet50" in msg and WEIGHT_FILES["resnet50"].url in msg
    assert list((tmp_path / "models").iterdir()) == []  # no partial file, no staging dir


def test_fetch_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'vgg16'"):
        fetch_weights(["vgg16"])


def _local_origin(monkeypatch, src: Path, model: str, md5: str) -> None:
    wf = WEIGHT_FILES[model]
    monkeypatch.setitem(
        WEIGHT_FILES, model, weights.WeightFile(wf.fname, md5, wf.module, wf.url_attr, wf.url_is_dir)
    )
    monkeypatch.setattr(weights.WeightFile, "url", property(lambda self: src.as_uri()))


def test_fetch_downloads_into_the_cache_atomically(monkeypatch, tmp_path):
    # A file:// origin exercises the real get_file + staging + rename path without a network.
    src = tmp_path / "src.h5"
    src.write_bytes(b"weights" * 1000)
    _local_origin(monkeypatch, src, "xception", hashlib.md5(src.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    [path] = fetch_weights(["xception"], cache=cache)
    assert path == cache / WEIGHT_FILES["xception"].fname
    assert path.read_bytes() == src.read_bytes()
    assert [p.name for p in cache.iterdir()] == [path.name]  # staging dir removed
    # Second call: the verified file is kept, nothing is fetched (the origin is gone).
    src.unlink()
    assert fetch_weights(["xception"], cache=cache) == [path]


def test_fetch_hash_mismatch_leaves_no_file(monkeypatch, tmp_path):
    src = tmp_path / "src.h5"
    src.write_bytes(b"not the real weights")
    _local_origin(monkeypatch, src, "xception", "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(InatError, match="xception") as info:
        fetch_weights(["xception"], cache=cache)
    assert "\n" not in str(info.value)
    assert list(cache.iterdir()) == []


def test_weights_module_does_not_import_keras():
    # The CLI's error paths (missing weights, bad path) must not pay for loading TensorFlow.
    import subprocess
    import sys

    code = (
        "import sys; import inat.models.weights, inat.models.flops; "
        "print('keras' in sys.modules or 'tensorflow' in sys.modules)"
    )
    root = REPO
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
