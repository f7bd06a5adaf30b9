"""The data layer: find the images, split them, check them, and stream them into a model.

The dataset is laid out as iNaturalist-12K ships it:

    ROOT/train/<class>/*.jpg    -> our train and val splits (a stratified, seeded val_fraction of it is val)
    ROOT/val/<class>/*.jpg      -> our TEST split (iNaturalist's "val" folder is held out until the end)

`discover` turns that tree into a `Splits` object, which is saved next to each run as JSON so that the run
documents exactly which files it trained, validated and tested on. `make_dataset` builds a tf.data pipeline
from a list of paths. TensorFlow is imported only inside `make_dataset`: `--help` and error paths stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import DataError, InatError
from .fsutil import read_json, write_json

log = logging.getLogger("inat")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # matched case-insensitively: cameras write .JPG
SPLITS = ("train", "val", "test")
_FORMAT = "inat-splits/1"
# The split is seeded, so drawing it again from unchanged data gives the same lists.
_REDRAW = "delete it and rerun the run's `inat-jobs train` command (same --run-id and --data) to split again"


# ---- splits --------------------------------------------------------------------------------------


@dataclass
class Splits:
    root: str  # absolute dataset root at the time of the split
    classes: list[str]  # sorted class folder names; a label is an index into this list
    train: list[tuple[str, int]]  # (path relative to root, label)
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    ignored: list[str]  # non-image files that discover() skipped (relative paths)
    # Added beside the brief's fields, all with defaults: what drop_bad_images skipped, as (relative
    # path, reason), and how the train/val split was drawn, so the saved file documents the run.
    bad: list[tuple[str, str]] = field(default_factory=list)
    seed: int | None = None
    val_fraction: float | None = None

    def paths(self, split: str) -> list[str]:
        return [os.path.join(self.root, rel) for rel, _ in self._items(split)]

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self._items(split)]

    def _items(self, split: str) -> list[tuple[str, int]]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def save(self, path: str | os.PathLike) -> None:
        # Relative paths with forward slashes: the file stays valid when the data moves (see load's root).
        data = {"format": _FORMAT, **dataclasses.asdict(self)}
        for split in SPLITS:
            data[split] = [[Path(rel).as_posix(), label] for rel, label in data[split]]
        write_json(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike, root: str | os.PathLike | None = None) -> "Splits":
        """Read a saved split; `root` replaces the saved root when the dataset has moved."""
        try:
            data = read_json(path)
        except InatError as exc:
            raise DataError(f"{exc}; {_REDRAW}") from None
        try:
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f"expected a mapping with format {_FORMAT!r}")
            classes = [str(c) for c in data["classes"]]
            items = {}
            for split in SPLITS:
                items[split] = [(str(rel), int(label)) for rel, label in data[split]]
                if any(not 0 <= label < len(classes) for _, label in items[split]):
                    raise ValueError(f"a label in '{split}' is outside 0..{len(classes) - 1}")
            splits = cls(
                root=os.path.abspath(root if root is not None else data["root"]),
                classes=classes,
                ignored=[str(p) for p in data.get("ignored", [])],
                bad=[(str(rel), str(why)) for rel, why in data.get("bad", [])],
                seed=data.get("seed"),
                val_fraction=data.get("val_fraction"),
                **items,
            )
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"{path}: not a valid splits file ({what}); {_REDRAW}") from None
        return splits


def describe(splits: Splits) -> str:
    """One line for logs: '10 classes; 9000 train / 1000 val / 2000 test images; 3 files ignored'."""
    n = len(splits.ignored)
    text = (
        f"{len(splits.classes)} classes; {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test images; {n} file{'s' if n != 1 else ''} ignored"
    )
    if splits.bad:
        text += f"; {len(splits.bad)} unreadable image{'s' if len(splits.bad) != 1 else ''} skipped"
    return text


def discover(root: str | os.PathLike, seed: int = 0, val_fraction: float = 0.1) -> Splits:
    """Scan ROOT/train and ROOT/val, check that they agree, and draw a stratified train/val split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    root = _check_root(root)
    ignored: list[str] = []
    train_files = _scan(root, "train", ignored)
    test_files = _scan(root, "val", ignored)
    only = {"train": set(train_files) - set(test_files), "val": set(test_files) - set(train_files)}
    if only["train"] or only["val"]:
        parts = "; ".join(f"only in {sub}/: {', '.join(sorted(n))}" for sub, n in only.items() if n)
        raise DataError(f"{root}: train/ and val/ have different class folders ({parts}); make them match")
    classes = sorted(train_files)
    if len(classes) < 2:
        raise DataError(f"{root / 'train'}: found 1 class folder ({classes[0]}); need at least 2 classes")

    train, val, test = [], [], []
    for label, name in enumerate(classes):
        files = train_files[name]
        # One generator per class, seeded by (seed, class name): adding a class leaves the others alone.
        order = list(range(len(files)))
        random.Random(f"{seed}:{name}").shuffle(order)
        val_idx = set(order[: _n_val(len(files), val_fraction)])
        for i, rel in enumerate(files):  # both lists stay in sorted file order
            (val if i in val_idx else train).append((rel, label))
        test.extend((rel, label) for rel in test_files[name])

    if ignored:
        examples = ", ".join(ignored[:3])
        log.warning("ignored %d non-image file(s) under %s, e.g. %s", len(ignored), root, examples)
    return Splits(str(root), classes, train, val, test, ignored, seed=seed, val_fraction=val_fraction)


def image_files(root: str | os.PathLike) -> list[str]:
    """Every image that `discover` sees under ROOT/train and ROOT/val, as sorted relative paths."""
    root = _check_root(root)
    found = [*_scan(root, "train", []).values(), *_scan(root, "val", []).values()]
    return sorted(rel for files in found for rel in files)


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"{root}: dataset root {what}; pass the folder that holds train/ and val/")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: no {sub}/ folder; expected {_layout_hint(root)}")
    return root


def _n_val(n: int, val_fraction: float) -> int:
    """round(val_fraction * n), rounding halves up, but at least 1 and at most n - 1 when n >= 2."""
    if n < 2:
        return 0  # a lone image is more use in train than as a one-image val class
    return min(n - 1, max(1, int(val_fraction * n + 0.5)))


def _scan(root: Path, sub: str, ignored: list[str]) -> dict[str, list[str]]:
    """{class: sorted relative image paths} for ROOT/sub; everything else goes to `ignored`."""
    classes: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root / sub), key=lambda e: e.name):
        rel = f"{sub}/{entry.name}"
        if entry.name.startswith("."):  # .DS_Store, .ipynb_checkpoints/, ._x.jpg (macOS forks)
            ignored.append(rel + ("/" if entry.is_dir() else ""))
        elif not entry.is_dir():
            ignored.append(rel)  # a stray file beside the class folders
        else:
            images = []
            for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(IMAGE_EXTENSIONS):
                    images.append(f"{rel}/{f.name}")
                else:  # covers foo.jpg:Zone.Identifier, Thumbs.db, notes.txt, nested folders
                    ignored.append(f"{rel}/{f.name}" + ("/" if f.is_dir() else ""))
            if not images:
                raise DataError(
                    f"{entry.path}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder from both train/ and val/"
                )
            classes[entry.name] = images
    if not classes:
        raise DataError(f"{root / sub}: no class folders; expected {_layout_hint(root)}")
    return classes


def _layout_hint(root: Path) -> str:
    hint = f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
    # The iNaturalist zip unpacks to inaturalist_12K/; people often point one level too high.
    nested = [d for d in root.iterdir() if d.is_dir() and (d / "train").is_dir()] if root.is_dir() else []
    return hint + (f" (did you mean {nested[0]}?)" if nested else "")


# ---- cheap integrity check -----------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEGs must end with FF D9. Encoders and filesystems sometimes leave a little padding or a maker
# trailer after it, so we look in the last 4 KiB (one page: costs the same as reading 2 bytes).
_TAIL = 4096
_OTHER_FORMATS = {b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def image_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a complete JPEG or PNG, or None if it looks fine. Reads head and tail only."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL))
            tail = fh.read()
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if size == 0:
        return "empty file"
    # Sniff the content, not the extension, as tf.io.decode_image does: a PNG named .jpg is fine.
    if head.startswith(b"\xff\xd8\xff"):
        if b"\xff\xd9" in tail:
            return None
        # No end marker near the end: truncated, or a JPEG with a large appended payload (phone
        # "motion photos" append a video). Only a decode tells them apart; this path is rare.
        return None if _decodes(path) else "truncated JPEG (no end marker)"
    if head == _PNG_SIGNATURE:
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    for magic, name in _OTHER_FORMATS.items():
        if head.startswith(magic):
            return f"{name} content; only JPEG and PNG are supported (convert it)"
    return "not a JPEG or PNG file"


def _decodes(path) -> bool:
    from PIL import Image  # only for the rare JPEG without an end marker in its last 4 KiB

    try:
        with Image.open(path) as img:
            img.draft("RGB", (img.width // 8, img.height // 8))  # 1/8-scale DCT decode: reads it all, fast
            img.load()
        return True
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return False


def check_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The paths that are not complete JPEG/PNG files. Does not decode: 10k files in 0.1-0.3 s here."""
    paths = [os.fspath(p) for p in paths]
    return [p for p, why in zip(paths, _problems(paths)) if why is not None]


def _problems(paths: list) -> list[str | None]:
    # Threads, each over a block of files: on cluster filesystems (Lustre, NFS) every open is a
    # network round trip and 8 in flight help; blocks keep the per-task overhead off local disks.
    blocks = [paths[i : i + 512] for i in range(0, len(paths), 512)]
    if len(blocks) <= 1:
        return [image_problem(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [why for block in pool.map(lambda b: [image_problem(p) for p in b], blocks) for why in block]


def drop_bad_images(splits: Splits) -> Splits:
    """A copy of `splits` without files that fail `image_problem`; they are logged and kept in `bad`."""
    items = [(split, rel, label) for split in SPLITS for rel, label in getattr(splits, split)]
    problems = _problems([os.path.join(splits.root, rel) for _, rel, _ in items])
    bad = [(rel, why) for (_, rel, _), why in zip(items, problems) if why is not None]
    if not bad:
        return splits
    keep = {split: [] for split in SPLITS}
    for (split, rel, label), why in zip(items, problems):
        if why is None:
            keep[split].append((rel, label))
    left = {label for _, label in keep["train"]}
    empty = [name for label, name in enumerate(splits.classes) if label not in left]
    if empty:  # checked before the warning below, so that the error is the only line printed
        rel, why = next(((r, w) for r, w in bad if r.startswith(f"train/{empty[0]}/")), bad[0])
        raise DataError(
            f"{splits.root}: no readable train images left for class(es) {', '.join(empty)} "
            f"(e.g. {rel}: {why}); replace the broken images or remove the class from train/ and val/"
        )
    shown = ", ".join(f"{rel} ({why})" for rel, why in bad[:5])
    more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    log.warning("skipping %d unreadable image(s): %s%s", len(bad), shown, more)
    return dataclasses.replace(splits, **keep, bad=[*splits.bad, *bad])


# ---- tf.data pipeline ----------------------------------------------------------------------------


def make_dataset(
    paths: list[str], labels: list[int], image_size: int, batch_size: int, *,
    shuffle: bool, augment: bool, seed: int = 0, repeat: bool = False,
):  # fmt: skip
    """Batches of (float32 images in [0, 255], shape (B, S, S, 3); int32 labels, shape (B,)).

    Pixels are not rescaled: each model does its own rescaling or `preprocess_input`. Images are
    resized to S x S without keeping the aspect ratio (as image_dataset_from_directory does by
    default) and rounded to whole levels, exactly as `inat.cache` stores them, so a run sees the
    same pixels with or without a cache. With shuffle=False the order is that of `paths`, so
    predictions line up with labels.
    """
    import tensorflow as tf

    paths = [os.fspath(p) for p in paths]
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    if not paths:
        raise DataError("no images to load (the split is empty)")
    # A missing file would be swallowed by ignore_errors below and shrink every epoch unnoticed:
    # catch the usual cause (the dataset moved; Splits.load(root=...) fixes it) here, loudly.
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{missing[0]}: image not found ({len(missing)} of {len(paths)} missing); "
            "has the dataset moved? pass its new root (--data)"
        )

    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))
    if shuffle:
        # Shuffle file names, not decoded pixels: a full-size buffer costs a few bytes per image.
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(
        lambda path, label: (decode_resize(tf.io.read_file(path), image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Last line of defence: a file corrupt in the middle passes check_images, and TF then either
    # decodes it with garbage pixels or raises. Drop the failing element instead of killing a
    # multi-hour job. TF logs each one ("Error raised with error message ... jpeg::Uncompress
    # failed"; it does not name the file) and the training loop counts the images seen per epoch.
    ds = ds.ignore_errors(log_warning=True)
    return finish_batches(ds.batch(batch_size), augment=augment, seed=seed)


def decode_resize(contents, image_size: int):
    """Encoded JPEG/PNG bytes -> uint8 (S, S, 3). The one decode that the pipeline and the cache share.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) whenever the scaled image
    still has at least S pixels on its short side: a 800x600 photo becomes 200x150 for S=128
    without ever being decoded in full. That is 1.5-2.5x faster than a full decode and, because
    DCT scaling averages whole 8x8 blocks, less aliased than resizing the full image bilinearly.
    """
    import tensorflow as tf

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        short = tf.minimum(shape[0], shape[1])
        branch = tf.add_n([tf.cast(short >= r * image_size, tf.int32) for r in (2, 4, 8)])
        ratios = (1, 2, 4, 8)
        return tf.switch_case(branch, [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in ratios])

    def other():
        # decode_image sniffs PNG/GIF/BMP whatever the extension; channels=3 turns grayscale,
        # RGBA (alpha dropped) and palette images into RGB. decode_jpeg does the same for
        # grayscale and CMYK/YCCK JPEGs.
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape((None, None, 3))
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=False)
    return tf.ensure_shape(tf.saturate_cast(tf.round(image), tf.uint8), (image_size, image_size, 3))


def finish_batches(ds, *, augment: bool, seed: int = 0):
    """uint8 batches (B, S, S, 3) -> float32 batches, augmented if asked, prefetched.

    Augmentation runs here, on whole batches, not per image: one batched op per step costs far
    less per image than a map over single images (see docs/performance.md for the numbers).
    """
    import tensorflow as tf

    if augment:
        # One stateless seed pair per batch; re-drawn every epoch (rerandomize_each_iteration).
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda xy, s: (augment_batch(xy[0], s), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# Augmentation strengths. The seed's ImageDataGenerator also rotated (rotation_range); a batched
# rotation (ImageProjectiveTransformV3) ran at ~1,000 img/s on 2 cores at 128 px, less than half the
# speed of everything below together, so zoom, shift and flip carry the geometric variety.
MIN_ZOOM_SIDE = 0.8  # a random square of 80-100 % of the side, anywhere in the image, fills the output
MAX_BRIGHTNESS = 0.1  # +-10 % of full scale
CONTRAST = (0.8, 1.2)


def augment_batch(images, seed):
    """Random zoom-in, shift and horizontal flip, then brightness and contrast, for a whole batch.

    `images` is (B, S, S, 3), uint8 or float, in [0, 255]; `seed` a stateless seed pair; returns
    float32. Every image gets its own parameters, yet the batch costs one crop_and_resize (a box
    with x1 > x2 samples the crop mirrored, so the flip is free) and one fused multiply-add:
    no per-image ops, no Python.
    """
    import tensorflow as tf

    size = images.shape[1]
    n = tf.shape(images)[0]
    u = tf.random.stateless_uniform((n, 6), seed)  # zoom, y, x, flip, brightness, contrast
    side = MIN_ZOOM_SIDE + (1.0 - MIN_ZOOM_SIDE) * u[:, 0]
    y0, x0 = u[:, 1] * (1.0 - side), u[:, 2] * (1.0 - side)
    flip = u[:, 3] < 0.5
    boxes = tf.stack([y0, tf.where(flip, x0 + side, x0), y0 + side, tf.where(flip, x0, x0 + side)], axis=1)
    out = tf.image.crop_and_resize(images, boxes, tf.range(n), (size, size))  # bilinear, float32
    # Contrast scales around each image's per-channel mean (as tf.image.adjust_contrast), taken
    # on a 1-in-16 pixel sample of the input: the same pivot to within a level, at 1/16 the cost.
    mean = tf.reduce_mean(tf.cast(images[:, ::4, ::4, :], tf.float32), axis=(1, 2), keepdims=True)
    contrast = (CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u[:, 5])[:, None, None, None]
    brightness = ((2.0 * u[:, 4] - 1.0) * (MAX_BRIGHTNESS * 255.0))[:, None, None, None]
    return tf.clip_by_value(out * contrast + (mean * (1.0 - contrast) + brightness), 0.0, 255.0)


def dataset_for(
    splits: Splits, split: str, image_size: int, batch_size: int, *,
    training: bool, augment: bool = False, seed: int = 0, cache=None,
):  # fmt: skip
    """The pipeline for one split: shuffled (and augmented, if asked) only when training.

    `cache` is a cache root directory (e.g. SCRATCH/cache) or an `inat.cache.Cache`: when a decoded-
    image cache matching the dataset on disk is there, batches come from it; otherwise (none built,
    or the data changed since; the log says which) the JPEGs are decoded as usual.
    """
    if cache is not None:
        from . import cache as cache_mod

        found = cache if isinstance(cache, cache_mod.Cache) else cache_mod.find_cache(splits, image_size, cache)
        if found is not None:
            ds = found.dataset(
                splits, split, batch_size, image_size=image_size,
                shuffle=training, augment=augment and training, seed=seed,
            )  # fmt: skip
            if ds is not None:
                return ds
    return make_dataset(
        splits.paths(split), splits.labels(split), image_size, batch_size,
        shuffle=training, augment=augment and training, seed=seed,
    )  # fmt: skip
