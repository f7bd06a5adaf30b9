"""inat.data.demo: the synthetic stand-in dataset and benchmark JPEGs."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from inat.data import demo
from inat.data import check_images, discover
from inat.data.demo import INAT_CLASSES, make_demo_data, make_synthetic_jpegs
from inat.errors import DataError


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_classes_and_counts(tmp_path):
    root = make_demo_data(tmp_path / "demo", n_train_per_class=10, n_test_per_class=3)
    assert root == tmp_path / "demo"
    for sub in ("train", "val"):
        assert sorted(p.name for p in (root / sub).iterdir()) == sorted(INAT_CLASSES)
    splits = discover(root, val_fraction=0.2)
    assert splits.classes == sorted(INAT_CLASSES) and len(splits.classes) == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert splits.ignored == ["train/Aves/.DS_Store"]
    assert any(rel.endswith(".JPG") for rel, _ in splits.train + splits.val)
    assert check_images(splits.paths("train") + splits.paths("test")) == []
    sizes = {Image.open(p).size for p in splits.paths("train")}
    assert len(sizes) > 20 and any(w != h for w, h in sizes)
    assert all(48 <= w <= 96 and 48 <= h <= 96 for w, h in sizes)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp tree left behind


def test_deterministic_for_a_seed(tmp_path):
    a = make_demo_data(tmp_path / "a", n_train_per_class=3, n_test_per_class=1, seed=7)
    b = make_demo_data(tmp_path / "b", n_train_per_class=3, n_test_per_class=1, seed=7)
    c = make_demo_data(tmp_path / "c", n_train_per_class=3, n_test_per_class=1, seed=8)
    assert files(a) == files(b) == files(c)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files(a))
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files(a) if f.endswith("jpg"))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    make_demo_data(root, n_train_per_class=2, n_test_per_class=1)  # an empty directory is fine
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(DataError) as exc:
        make_demo_data(root, n_train_per_class=2, n_test_per_class=1)
    assert str(root) in str(exc.value) and "--overwrite" in str(exc.value) and "\n" not in str(exc.value)
    assert (root / "mine.txt").exists()
    make_demo_data(root, n_train_per_class=2, n_test_per_class=1, overwrite=True)
    assert not (root / "mine.txt").exists() and (root / "train" / "Aves").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(rng, label, w, h):
        calls.append(label)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return Image.new("RGB", (w, h))

    monkeypatch.setattr(demo, "draw_example", boom)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(tmp_path / "demo", n_train_per_class=3, n_test_per_class=1)
    assert list(tmp_path.iterdir()) == []


def test_class_colour_is_a_signal(tmp_path):
    """A cheap learnability check: the hue of the most saturated pixels alone beats chance (10 %) by far."""
    root = make_demo_data(tmp_path / "demo", n_train_per_class=6, n_test_per_class=1, size=48)
    splits = discover(root)
    hits = 0
    for path, label in zip(splits.paths("train"), splits.labels("train")):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3) / 255
        hsv = np.array([colorsys.rgb_to_hsv(*px) for px in rgb[:: 3]])
        top = hsv[np.argsort(hsv[:, 1] * hsv[:, 2])[-20:], 0]
        hue = np.angle(np.exp(2j * np.pi * top).mean()) / (2 * np.pi) % 1.0
        guess = int(round(hue * 10)) % 10
        hits += INAT_CLASSES[guess] == splits.classes[label]
    assert hits / len(splits.train) > 0.4


def test_synthetic_jpegs_for_benchmarks(tmp_path):
    paths = make_synthetic_jpegs(tmp_path, 5, width=80, height=60, classes=("x", "y"), seed=1)
    assert [p.parent.name for p in paths] == ["x", "y", "x", "y", "x"]
    assert all(Image.open(p).size == (80, 60) for p in paths) and check_images(paths) == []
    assert len({p.read_bytes() for p in paths}) == 5
