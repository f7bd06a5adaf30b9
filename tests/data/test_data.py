"""inat.data: discovery, splitting, integrity checks and the tf.data pipeline."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SHARED_DATA
from inat import data
from inat.data import Splits, check_images, describe, discover, drop_bad_images, make_dataset
from inat.data.splits import _n_val
from inat.errors import DataError

# Fixtures live here rather than in conftest.py: they serve this file only.

# The repo is checked out as <dir>/main (or a worktree beside it) with <dir>/shared next to it.

TINY_CLASSES = {"alpha": (255, 0, 0), "beta": (0, 255, 0), "gamma": (0, 0, 255)}
TINY_TRAIN = {"alpha": 10, "beta": 7, "gamma": 4}
TINY_TEST = {"alpha": 3, "beta": 3, "gamma": 2}
TINY_JUNK = [
    "train/.DS_Store",
    "train/README.txt",
    "train/alpha/a000.jpg:Zone.Identifier",
    "train/alpha/._a001.jpg",
    "train/beta/Thumbs.db",
    "val/gamma/notes.txt",
]


def write_image(path: Path, color=(128, 64, 32), size=(12, 10), mode="RGB", fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """ROOT/{train,val}/{alpha,beta,gamma}: 21 train, 8 test images, mixed-case extensions, junk."""
    root = tmp_path / "tiny"
    extensions = [".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".Png"]
    for sub, counts in (("train", TINY_TRAIN), ("val", TINY_TEST)):
        for name, n in counts.items():
            for i in range(n):
                ext = extensions[i % len(extensions)]
                fmt = "PNG" if ext.lower() == ".png" else "JPEG"
                write_image(root / sub / name / f"{name[0]}{i:03d}{ext}", TINY_CLASSES[name], fmt=fmt)
    for rel in TINY_JUNK:
        (root / rel).write_bytes(b"junk")
    (root / "val" / ".ipynb_checkpoints").mkdir()
    return root


@pytest.fixture
def flowers5() -> Path:
    root = SHARED_DATA / "flowers5"
    if not root.is_dir():
        pytest.skip(f"{root} not present (real photos live beside the checkout in shared/data)")
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def jpeg_bytes(size=(64, 48), seed=0, quality=90) -> bytes:
    """A noisy JPEG: long entropy-coded data, so a cut or a scribble lands in the middle of it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---- discovery -----------------------------------------------------------------------------------


def test_import_does_not_load_tensorflow():
    code = "import sys, inat.data, inat.data.demo; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_discover_finds_mixed_case_extensions(tiny_dataset):
    splits = discover(tiny_dataset)
    assert splits.classes == ["alpha", "beta", "gamma"]
    assert splits.root == str(tiny_dataset)
    assert len(splits.train) + len(splits.val) == sum(TINY_TRAIN.values())
    assert len(splits.test) == sum(TINY_TEST.values())
    suffixes = {Path(rel).suffix for rel, _ in splits.train + splits.val}
    assert {".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".Png"} <= suffixes


def test_junk_is_ignored_counted_and_logged_once(tiny_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="inat"):
        splits = discover(tiny_dataset)
    assert sorted(splits.ignored) == sorted(TINY_JUNK + ["val/.ipynb_checkpoints/"])
    used = {rel for rel, _ in splits.train + splits.val + splits.test}
    assert not used & set(splits.ignored)
    warnings = [r.getMessage() for r in caplog.records if r.name == "inat"]
    assert len(warnings) == 1 and "ignored 7 non-image file(s)" in warnings[0]
    assert describe(splits) == "3 classes; 18 train / 3 val / 8 test images; 7 files ignored"


def test_class_mismatch_names_the_classes(tiny_dataset):
    (tiny_dataset / "val" / "gamma").rename(tiny_dataset / "val" / "delta")
    with pytest.raises(DataError) as exc:
        discover(tiny_dataset)
    assert "only in train/: gamma" in one_line(exc) and "only in val/: delta" in one_line(exc)


@pytest.mark.parametrize("broken", ["no-root", "root-is-file", "no-train", "no-val"])
def test_layout_errors_name_the_path(tmp_path, tiny_dataset, broken):
    root = tiny_dataset
    if broken == "no-root":
        root = tmp_path / "nowhere"
    elif broken == "root-is-file":
        root = tmp_path / "file"
        root.write_text("x")
    else:
        shutil.rmtree(tiny_dataset / broken.split("-")[1])
    with pytest.raises(DataError) as exc:
        discover(root)
    message = one_line(exc)
    assert str(root) in message
    if broken.startswith("no-") and broken != "no-root":
        assert f"no {broken.split('-')[1]}/ folder" in message


def test_pointing_one_level_too_high_suggests_the_dataset(tiny_dataset):
    with pytest.raises(DataError) as exc:
        discover(tiny_dataset.parent)
    assert f"did you mean {tiny_dataset}" in one_line(exc)


def test_empty_class_folder_is_named(tiny_dataset):
    for f in (tiny_dataset / "val" / "beta").iterdir():
        f.unlink()
    with pytest.raises(DataError) as exc:
        discover(tiny_dataset)
    assert str(tiny_dataset / "val" / "beta") in one_line(exc) and "no images" in one_line(exc)


def test_no_class_folders_and_single_class(tiny_dataset):
    for sub in ("train", "val"):
        for name in ("beta", "gamma"):
            shutil.rmtree(tiny_dataset / sub / name)
    with pytest.raises(DataError, match="need at least 2"):
        discover(tiny_dataset)
    for sub in ("train", "val"):
        shutil.rmtree(tiny_dataset / sub / "alpha")
    with pytest.raises(DataError, match="no class folders"):
        discover(tiny_dataset)


# ---- the train/val split -------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_complete(tiny_dataset):
    splits = discover(tiny_dataset, seed=3, val_fraction=0.3)
    train, val, test = (set(getattr(splits, s)) for s in ("train", "val", "test"))
    assert not train & val and not (train | val) & test
    assert {rel for rel, _ in train | val} == {
        p.relative_to(tiny_dataset).as_posix()
        for p in (tiny_dataset / "train").glob("*/*")
        if p.name[0] != "." and p.suffix.lower() in data.IMAGE_EXTENSIONS
    }
    assert len(test) == sum(TINY_TEST.values())
    for label, name in enumerate(splits.classes):
        n_val = sum(1 for _, y in val if y == label)
        assert n_val >= 1 and abs(n_val - 0.3 * TINY_TRAIN[name]) <= 1
        assert all(rel.startswith(f"train/{name}/") for rel, y in train | val if y == label)
        assert all(rel.startswith(f"val/{name}/") for rel, y in test if y == label)


def test_split_is_deterministic_per_seed(tiny_dataset):
    a, b, c = discover(tiny_dataset, seed=0), discover(tiny_dataset, seed=0), discover(tiny_dataset, seed=1)
    assert a.val == b.val and a.train == b.train
    assert a.val != c.val and a.test == c.test


@pytest.mark.parametrize(
    "n, fraction, expected", [(1, 0.1, 0), (2, 0.1, 1), (10, 0.1, 1), (15, 0.1, 2), (10, 0.99, 9)]
)
def test_val_count_rule(n, fraction, expected):
    assert _n_val(n, fraction) == expected


# ---- saving and loading splits -------------------------------------------------------------------


def test_splits_round_trip_and_root_override(tiny_dataset, tmp_path):
    splits = discover(tiny_dataset, seed=2)
    path = tmp_path / "run" / "splits.json"
    splits.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left behind
    saved = json.loads(path.read_text())
    assert all(not os.path.isabs(rel) for rel, _ in saved["train"] + saved["val"] + saved["test"])
    assert Splits.load(path) == splits

    moved = tmp_path / "elsewhere"
    shutil.move(tiny_dataset, moved)
    reloaded = Splits.load(path, root=moved)
    assert reloaded.root == str(moved) and reloaded.train == splits.train
    assert all(os.path.isfile(p) for p in reloaded.paths("train") + reloaded.paths("test"))
    assert reloaded.labels("val") == splits.labels("val")
    with pytest.raises(ValueError, match="unknown split"):
        reloaded.paths("validation")


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "file not found"),
        ("{not json", "not valid JSON"),
        ('{"format": "inat-splits/1"}', "missing key"),
        ("[1, 2]", "not a valid splits file"),
    ],
)
def test_load_errors_are_one_line(tmp_path, content, expected):
    path = tmp_path / "splits.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as exc:
        Splits.load(path)
    assert str(path) in one_line(exc) and expected in one_line(exc)


# ---- check_images and drop_bad_images ------------------------------------------------------------


@pytest.fixture
def image_zoo(tmp_path) -> dict[str, Path]:
    """Files named .jpg (mostly) whose content is good or broken in the ways that happen in practice."""
    d = tmp_path / "zoo"
    d.mkdir()
    good = jpeg_bytes()
    files = {
        "ok_rgb": good,
        "ok_trailer": good + b"\x00" * 1000,  # padding after the end marker
        "ok_long_trailer": good + os.urandom(20_000),  # like a phone's appended video: decode fallback
        "bad_truncated": good[: len(good) // 2],
        "bad_empty": b"",
        "bad_text": b"<html>404 Not Found</html>\n",
        "bad_header_only": good[:600],
    }
    paths = {name: d / f"{name}.jpg" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    paths["ok_png_as_jpg"] = write_image(d / "ok_png_as_jpg.jpg", (0, 255, 0), fmt="PNG")
    paths["ok_gray"] = write_image(d / "ok_gray.jpg", 128, mode="L")
    paths["ok_cmyk"] = write_image(d / "ok_cmyk.jpg", (0, 255, 255, 0), mode="CMYK")
    paths["ok_rgba"] = write_image(d / "ok_rgba.png", (0, 0, 255, 128), mode="RGBA", fmt="PNG")
    paths["ok_palette"] = write_image(d / "ok_palette.png", (200, 30, 90), mode="P", fmt="PNG")
    paths["bad_gif"] = write_image(d / "bad_gif.jpg", (1, 2, 3), fmt="GIF")
    png = write_image(d / "tmp.png", (9, 9, 9), size=(64, 64), fmt="PNG").read_bytes()
    paths["bad_truncated_png"] = d / "bad_truncated_png.png"
    paths["bad_truncated_png"].write_bytes(png[: len(png) - 20])
    paths["bad_missing"] = d / "bad_missing.jpg"
    return paths


def test_check_images_sniffs_content(image_zoo):
    bad = check_images([str(p) for p in image_zoo.values()])
    assert sorted(Path(p).stem for p in bad) == sorted(n for n in image_zoo if n.startswith("bad_"))
    assert "truncated JPEG" in data.image_problem(image_zoo["bad_truncated"])
    assert "GIF" in data.image_problem(image_zoo["bad_gif"])


def test_drop_bad_images_logs_once_and_records(tiny_dataset, tmp_path, caplog):
    splits = discover(tiny_dataset)
    victims = [splits.train[0][0], splits.test[-1][0]]
    for rel in victims:
        (tiny_dataset / rel).write_bytes(b"not an image")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inat"):
        clean = drop_bad_images(splits)
    messages = [r.getMessage() for r in caplog.records if r.name == "inat"]
    assert len(messages) == 1 and messages[0].startswith("skipping 2 unreadable image(s): ")
    assert all(rel in messages[0] for rel in victims)
    assert [rel for rel, _ in clean.bad] == victims
    assert len(clean.train) + len(clean.test) == len(splits.train) + len(splits.test) - 2
    assert clean.val == splits.val and "2 unreadable images skipped" in describe(clean)
    clean.save(tmp_path / "s.json")
    assert Splits.load(tmp_path / "s.json").bad == clean.bad
    assert drop_bad_images(clean) == clean  # nothing more to drop: no second warning


def test_drop_bad_images_refuses_to_lose_a_whole_class(tiny_dataset):
    splits = discover(tiny_dataset)
    for path in splits.paths("train") + splits.paths("val"):
        if "/gamma/" in path:
            Path(path).write_bytes(b"")
    with pytest.raises(DataError, match="gamma"):
        drop_bad_images(splits)


# ---- the tf.data pipeline ------------------------------------------------------------------------


def shades(tmp_path, n=7) -> tuple[list[str], list[int]]:
    """n images of odd sizes, image i a flat grey of 30 * i: the pixel value tells which file it was."""
    paths = [str(write_image(tmp_path / f"s{i}.jpg", (30 * i,) * 3, size=(9 + i, 14 - i))) for i in range(n)]
    return paths, [i % 3 for i in range(n)]


def collect(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def test_make_dataset_shapes_dtypes_range_and_order(tmp_path):
    paths, labels = shades(tmp_path)
    ds = make_dataset(paths, labels, 16, 3, shuffle=False, augment=False)
    x, y = next(iter(ds))
    assert x.shape == (3, 16, 16, 3) and x.dtype.name == "float32"
    assert y.shape == (3,) and y.dtype.name == "int32"
    images, got = collect(ds)
    assert images.shape == (7, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 255.0
    assert got.tolist() == labels
    assert np.allclose(images.mean(axis=(1, 2, 3)), [30 * i for i in range(7)], atol=3)


def test_shuffle_is_seeded_and_loses_nothing(tmp_path):
    paths, labels = shades(tmp_path)
    means = [
        collect(make_dataset(paths, labels, 8, 4, shuffle=True, augment=False, seed=s))[0].mean(axis=(1, 2, 3))
        for s in (5, 5, 6)
    ]
    assert np.allclose(means[0], means[1]) and not np.allclose(means[0], means[2])
    assert np.allclose(sorted(means[0]), [30 * i for i in range(7)], atol=3)


def test_all_supported_modes_decode_to_rgb(image_zoo):
    names = ["ok_gray", "ok_cmyk", "ok_png_as_jpg", "ok_rgba", "ok_palette", "ok_long_trailer"]
    images, _ = collect(make_dataset([str(image_zoo[n]) for n in names], [0] * len(names), 8, 8,
                                     shuffle=False, augment=False))
    centre = dict(zip(names, images[:, 4, 4, :]))
    assert np.allclose(centre["ok_gray"], [128] * 3, atol=2)
    assert np.allclose(centre["ok_cmyk"], [255, 0, 0], atol=8)  # CMYK red: TF converts CMYK itself
    assert np.allclose(centre["ok_png_as_jpg"], [0, 255, 0], atol=1)
    assert np.allclose(centre["ok_rgba"], [0, 0, 255], atol=1)  # alpha is dropped, not composited
    assert np.allclose(centre["ok_palette"], [200, 30, 90], atol=1)


def test_augment_changes_pixels_but_not_shape_or_range(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        blocks = rng.integers(0, 256, (4, 4, 3))
        pixels = np.kron(blocks, np.ones((6, 6, 1))).astype(np.uint8)  # blocky: zoom and flip show
        paths.append(str(tmp_path / f"b{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    plain, _ = collect(make_dataset(paths, [0] * 6, 24, 6, shuffle=False, augment=False))
    aug1, _ = collect(make_dataset(paths, [0] * 6, 24, 6, shuffle=False, augment=True, seed=1))
    aug2, _ = collect(make_dataset(paths, [0] * 6, 24, 6, shuffle=False, augment=True, seed=1))
    assert aug1.shape == plain.shape and aug1.dtype == np.float32
    assert aug1.min() >= 0.0 and aug1.max() <= 255.0
    assert np.abs(aug1 - plain).mean() > 5.0
    assert np.allclose(aug1, aug2)  # seeded


def test_file_corrupt_in_the_middle_does_not_crash_iteration(tmp_path, image_zoo):
    # Valid start and end marker, noise between: check_images cannot see it. TF 2.21 raises
    # "jpeg::Uncompress failed" for it, and ignore_errors drops that one image.
    good = jpeg_bytes(size=(120, 90), seed=1)
    middle = tmp_path / "middle.jpg"
    middle.write_bytes(good[:700] + np.random.default_rng(2).bytes(len(good) - 1400) + good[-700:])
    assert check_images([middle]) == []
    paths = [str(image_zoo["ok_rgb"]), str(middle), str(image_zoo["ok_gray"])]
    images, labels = collect(make_dataset(paths, [0, 1, 2], 16, 2, shuffle=False, augment=False))
    assert len(images) in (2, 3) and labels[0] == 0 and labels[-1] == 2


def test_missing_or_no_files_are_data_errors(tmp_path):
    paths, labels = shades(tmp_path, 3)
    with pytest.raises(DataError) as exc:
        make_dataset(paths + [str(tmp_path / "gone.jpg")], labels + [0], 8, 2, shuffle=False, augment=False)
    assert "gone.jpg" in one_line(exc) and "1 of 4 missing" in one_line(exc)
    with pytest.raises(DataError, match="no images"):
        make_dataset([], [], 8, 2, shuffle=False, augment=False)


def test_dataset_for_shuffles_only_when_training(tiny_dataset):
    splits = discover(tiny_dataset)
    test_labels = collect(data.dataset_for(splits, "test", 8, 4, training=False, augment=True))[1]
    assert test_labels.tolist() == splits.labels("test")
    train_labels = collect(data.dataset_for(splits, "train", 8, 4, training=True, seed=1))[1]
    assert sorted(train_labels.tolist()) == sorted(splits.labels("train"))
    assert train_labels.tolist() != splits.labels("train")


# ---- real photos ---------------------------------------------------------------------------------


def test_real_photos_discover_check_and_decode(flowers5):
    splits = discover(flowers5)
    assert splits.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert len(splits.train) + len(splits.val) == 600 and len(splits.test) == 150
    assert len(splits.val) == 60 and not splits.ignored
    assert drop_bad_images(splits) == splits
    x, y = next(iter(data.dataset_for(splits, "test", 64, 32, training=False)))
    assert x.shape == (32, 64, 64, 3) and y.numpy().tolist() == splits.labels("test")[:32]
    assert 20.0 < float(x.numpy().mean()) < 235.0 and float(x.numpy().std()) > 20.0  # real content
