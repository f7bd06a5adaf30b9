"""The decoded-image cache: what it stores, when it is used, when not, and concurrent builders."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, cli
from inat import data
from inat.data import cache, cache_build
from inat.config import RunConfig
from inat.data.demo import INAT_CLASSES, make_demo_data
from inat.errors import DataError, InatError

SIZE = 32  # = TINY's image_size, so train() can use the cache


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("cache") / "data", n_train_per_class=5, n_test_per_class=2)


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    """A private copy of the tiny dataset (tests change files in it)."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def collect(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def mangle_keeping_size_and_mtime(path: Path) -> None:
    """Make the file undecodable without changing what the cache checks (size, mtime)."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_build_writes_array_and_manifest(root, tmp_path):
    path = cache_build.build_cache(root, SIZE, tmp_path / "cache")
    assert path == cache.cache_path(root, SIZE, tmp_path / "cache") and path.name == f"{SIZE}px"
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == cache.FORMAT and m["image_size"] == SIZE and m["data_root"] == str(root)
    assert m["classes"] == sorted(INAT_CLASSES) and m["bad"] == []
    everything = data.image_files(root)  # train/ and val/ folders alike: any split can be served
    assert [f[0] for f in m["files"]] == everything and len(everything) == 10 * 7
    for rel, size, mtime_ns, row in m["files"][:5]:
        st = (root / rel).stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert sorted(f[3] for f in m["files"]) == list(range(len(everything)))
    images = np.load(path / m["array"], mmap_mode="r")
    assert images.shape == (70, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # nothing half-built left


def test_cached_batches_equal_uncached_ones(root, tmp_path):
    cache_build.build_cache(root, SIZE, tmp_path / "cache")
    splits = data.discover(root)
    found = cache.find_cache(splits, SIZE, tmp_path / "cache")
    assert found is not None
    # Same decode op, same shuffle seed, same per-batch augmentation seeds: identical batches.
    for split, training, augment in (("test", False, False), ("train", True, False), ("train", True, True)):
        kw = dict(training=training, augment=augment, seed=3)
        cached = collect(data.dataset_for(splits, split, SIZE, 8, cache=found, **kw))
        plain = collect(data.dataset_for(splits, split, SIZE, 8, **kw))
        assert np.array_equal(cached[1], plain[1]), split
        assert np.array_equal(cached[0], plain[0]), (split, np.abs(cached[0] - plain[0]).max())


def test_matching_cache_is_what_training_reads(root, tmp_path):
    cfg = RunConfig.load(None, [*TINY, "epochs=1"])
    splits = data.drop_bad_images(data.discover(root, seed=cfg.seed, val_fraction=cfg.val_fraction))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    splits.save(run_dir / "splits.json")
    cache_root = tmp_path / "cache"
    cache_build.build_cache(root, SIZE, cache_root)
    expected = collect(data.dataset_for(splits, "val", SIZE, 8, training=False))
    for rel in data.image_files(root):
        mangle_keeping_size_and_mtime(root / rel)  # the JPEGs are now useless

    found = cache.find_cache(splits, SIZE, cache_root)
    from_cache = collect(data.dataset_for(splits, "val", SIZE, 8, training=False, cache=found))
    assert np.array_equal(from_cache[0], expected[0])
    uncached = data.dataset_for(splits, "val", SIZE, 8, training=False)
    assert sum(len(y) for _, y in uncached) == 0  # every image fails to decode and is dropped

    from inat.rundir import RunDir
    from inat.train import train

    result = train(cfg, run_dir, root, cache_root=cache_root, build_cache=False, verbose=0)
    assert result.status == "completed" and len(RunDir(run_dir).history()) == 1


@pytest.mark.parametrize("change", ["touch", "add", "remove", "resize"])
def test_changed_data_means_no_match_and_says_why(root, tmp_path, caplog, change):
    cache_root = tmp_path / "cache"
    cache_build.build_cache(root, SIZE, cache_root)
    splits = data.discover(root)
    victim = root / splits.train[0][0]
    if change == "touch":
        os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 1_000_000_000))
        expected = "1 file(s) changed size or mtime, e.g. " + splits.train[0][0]
    elif change == "add":
        shutil.copy(victim, victim.with_name("new.jpg"))
        expected = "1 file(s) added, e.g. " + str(victim.with_name("new.jpg").relative_to(root))
    elif change == "remove":
        victim.unlink()
        expected = "1 file(s) removed, e.g. " + splits.train[0][0]
    else:
        st = victim.stat()
        victim.write_bytes(victim.read_bytes() + b"\0")
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, other size
        expected = "1 file(s) changed size or mtime"
    with caplog.at_level(logging.INFO, logger="inat"):
        assert cache.find_cache(splits, SIZE, cache_root) is None
    assert "data changed" in caplog.text and expected in caplog.text

    if change != "remove":  # (a removed file would make the old splits point at nothing)
        old_id = json.loads((cache.cache_path(root, SIZE, cache_root) / "manifest.json").read_text())["build_id"]
        path = cache_build.build_cache(root, SIZE, cache_root)  # rebuilds, replacing the stale one
        assert json.loads((path / "manifest.json").read_text())["build_id"] != old_id
        assert cache.find_cache(splits, SIZE, cache_root) is not None


def test_no_cache_and_other_size_are_logged_misses(root, tmp_path, caplog):
    splits = data.discover(root)
    with caplog.at_level(logging.INFO, logger="inat"):
        assert cache.find_cache(splits, SIZE, tmp_path / "cache") is None
    assert "none built" in caplog.text and "cache-data" in caplog.text
    cache_build.build_cache(root, SIZE, tmp_path / "cache")
    assert cache.find_cache(splits, SIZE + 8, tmp_path / "cache") is None  # each size is its own cache


def test_reader_during_a_build_sees_no_cache(root, tmp_path, monkeypatch):
    cache_root = tmp_path / "cache"
    splits = data.discover(root)
    seen = {}
    real = cache_build._decode_into

    def decode_and_look(*args, **kwargs):
        written = real(*args, **kwargs)  # the array is complete, the manifest not yet written
        seen["tmp"] = [p.name for p in cache.cache_path(root, SIZE, cache_root).parent.iterdir()]
        seen["found"] = cache.find_cache(splits, SIZE, cache_root)
        return written

    monkeypatch.setattr(cache_build, "_decode_into", decode_and_look)
    cache_build.build_cache(root, SIZE, cache_root)
    assert any(".tmp-" in name for name in seen["tmp"]) and f"{SIZE}px" not in seen["tmp"]
    assert seen["found"] is None
    assert cache.find_cache(splits, SIZE, cache_root) is not None


def test_a_reader_keeps_its_cache_when_a_rebuild_replaces_it(root, tmp_path):
    cache_root = tmp_path / "cache"
    cache_build.build_cache(root, SIZE, cache_root)
    old = cache.find_cache(data.discover(root), SIZE, cache_root)
    first = np.array(old.images[:4])
    shutil.copy(root / "train/Aves/aves_0000.jpg", root / "train/Aves/extra.jpg")
    cache_build.build_cache(root, SIZE, cache_root)
    assert not (old.path / old.manifest["array"]).exists()  # the old build is gone from the directory...
    assert np.array_equal(np.array(old.images[:4]), first)  # ...but its mapped pages stay readable


BUILDER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from inat.data import cache_build
import tensorflow
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
print("result", cache_build.build_cache(sys.argv[2], int(sys.argv[3]), sys.argv[4]), flush=True)
"""


def test_concurrent_builders_build_once(root, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-c", BUILDER, str(go), str(root), str(SIZE), str(tmp_path / "cache")]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    procs = [subprocess.Popen(args, **pipes) for _ in range(2)]
    try:
        for p in procs:  # both have imported TensorFlow; now release them together
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = "".join(out for out, _ in outs)
    assert logs.count("building decoded-image cache") == 1, logs
    results = {line for line in logs.splitlines() if line.startswith("result ")}
    assert results == {f"result {cache.cache_path(root, SIZE, tmp_path / 'cache')}"}
    assert "built by another process meanwhile" in logs or "is up to date" in logs
    assert cache.find_cache(data.discover(root), SIZE, tmp_path / "cache") is not None


def test_bad_images_are_skipped_and_listed(root, tmp_path, caplog):
    truncated = root / "train/Fungi/fungi_0001.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "val/Fungi/notes.jpg").write_text("not an image")
    # JPEG start and end markers around junk: passes the cheap check, fails TensorFlow's decode.
    (root / "val/Fungi/garbled.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9")
    assert data.check_images([root / "val/Fungi/garbled.jpg"]) == []
    with caplog.at_level(logging.WARNING, logger="inat"):
        path = cache_build.build_cache(root, SIZE, tmp_path / "cache")
    m = json.loads((path / "manifest.json").read_text())
    bad = {rel: why for rel, _, _, why in m["bad"]}
    assert bad == {"train/Fungi/fungi_0001.jpg": "truncated JPEG (no end marker)",
                   "val/Fungi/garbled.jpg": "TensorFlow could not decode it (corrupt inside)",
                   "val/Fungi/notes.jpg": "not a JPEG or PNG file"}  # fmt: skip
    assert len(m["files"]) == 70 + 2 - 3 and "skipped 3 unreadable image(s)" in caplog.text
    # A split that still lists them (no drop_bad_images) gets the others, as the uncached pipeline
    # would, and the rows after the undecodable one hold the right images.
    splits = data.discover(root)
    found = cache.find_cache(splits, SIZE, tmp_path / "cache")
    cached = collect(data.dataset_for(splits, "test", SIZE, 8, training=False, cache=found))
    plain = collect(data.dataset_for(splits, "test", SIZE, 8, training=False))
    assert len(cached[1]) == len(splits.test) - 2
    assert np.array_equal(cached[0], plain[0]) and np.array_equal(cached[1], plain[1])
    assert cache.describe(path).endswith("3 unreadable image(s) skipped (listed in manifest.json)")


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(InatError, match="image size 0: expected an integer from 8 to 1024"):
        cache_build.build_cache(tmp_path, 0, tmp_path / "cache")
    with pytest.raises(DataError, match="dataset root does not exist"):
        cache_build.build_cache(tmp_path / "nope", 64, tmp_path / "cache")


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(root, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "cache" / "x.npy"))

    monkeypatch.setattr(cache_build, "_decode_into", full)
    with pytest.raises(InatError, match="cannot build the image cache: .*x.npy: No space left on device"):
        cache_build.build_cache(root, SIZE, tmp_path / "cache")
    leftovers = [p.name for p in cache.cache_path(root, SIZE, tmp_path / "cache").parent.iterdir()]
    assert leftovers == [f".{SIZE}px.lock"]


def test_cli_cache_data(root, tmp_path):
    result = cli("cache-data", "--data", str(root), "--image-size", str(SIZE), "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    path = cache.cache_path(root, SIZE, tmp_path / "s" / "cache")
    assert result.stdout.strip().startswith(f"cache: {path}: 70 images at {SIZE} px, ")
    assert result.stdout.strip().endswith(" MiB") and (path / "manifest.json").is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "/no/such/dir", "--image-size", "64"], "--data /no/such/dir: directory not found"),
        (["--data", ".", "--image-size", "abc"], "image size 'abc': expected an integer from 8 to 1024"),
        (["--data", ".", "--image-size", "4096"], "image size '4096': expected an integer from 8 to 1024"),
    ],
)
def test_cli_cache_data_bad_input(args, fragment, tmp_path):
    result = cli("cache-data", *args, "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"inat-jobs: error: {fragment}"
