"""Synthetic images in the iNaturalist-12K layout, for demos, tests and benchmarks.

The real dataset is 3.6 GB and not always at hand. `make_demo_data` writes a small stand-in with the
same ten class names that a small CNN can learn within a minute on a laptop: each class is a shape
drawn in a class hue, but hue jitter, position, scale, rotation, noisy backgrounds and distractor
lines mean it has to look at the shape too, not just at one pixel.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..fsutil import make_dir, os_reason

INAT_CLASSES = (
    "Amphibia", "Animalia", "Arachnida", "Aves", "Fungi",
    "Insecta", "Mammalia", "Mollusca", "Plantae", "Reptilia",
)  # fmt: skip
_WHERE = "the demo data's ROOT argument"
SHAPES = ("disc", "square", "triangle", "ring", "cross", "star", "stripes", "dots", "half-disc", "frame")


def make_demo_data(
    root: str | os.PathLike,
    n_train_per_class: int = 60,
    n_test_per_class: int = 15,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg; returns ROOT (absolute).

    Images are `size`*3/4 to `size`*3/2 pixels on each side, not square, so that decoding and resizing
    are exercised. A few files end in .JPG and train/Aves holds a .DS_Store, as real downloads do.
    """
    if n_train_per_class < 2 or n_test_per_class < 1:
        raise DataError(f"{root}: need at least 2 train and 1 test image per class (train/val/test split)")
    root = Path(os.path.abspath(root))
    _check_target(root, overwrite)
    make_dir(root.parent, where=_WHERE)
    # Build beside the target and rename at the end: an interrupted run never leaves a tree that
    # looks complete (discover() would happily train on half a dataset).
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    except OSError as exc:
        raise DataError(f"cannot write the demo data into {root.parent}: {os_reason(exc, None, _WHERE)}") from None
    try:
        for split, n in (("train", n_train_per_class), ("val", n_test_per_class)):
            for label, name in enumerate(INAT_CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                # One generator per (split, class): changing one count leaves the other images alone.
                rng = np.random.default_rng([seed, split == "val", label])
                for i in range(n):
                    ext = ".JPG" if i % 9 == 4 else ".jpg"
                    w, h = (int(v) for v in rng.integers(size * 3 // 4, size * 3 // 2 + 1, 2))
                    image = draw_example(rng, label, w, h)
                    quality = int(rng.integers(75, 96))
                    image.save(folder / f"{name.lower()}_{i:04d}{ext}", "JPEG", quality=quality)
        (tmp / "train" / "Aves" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        _move_into_place(tmp, root, overwrite)
    except OSError as exc:  # e.g. the disk filled up while drawing
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write the demo data into {root.parent}: {os_reason(exc, None, _WHERE)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def draw_example(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
    """One image of class `label`: a noisy background, distractor lines, and the class shape."""
    bg = _rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.9))
    noise = rng.normal(0.0, 18.0, (height, width, 3))
    image = Image.fromarray(np.clip(np.array(bg) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        fill = _rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.3, 1))
        draw.line(points, fill=fill, width=int(rng.integers(1, 4)))

    # Hue spacing is 0.1 between classes and the jitter's sd is 0.05, so neighbouring classes overlap.
    hue = label / len(SHAPES) + rng.normal(0.0, 0.05)
    colour = _rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    r = rng.uniform(0.22, 0.42) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    angle = rng.uniform(0.0, 2 * math.pi)
    thick = max(2, int(r * 0.35))
    shape = SHAPES[label]
    if shape == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.polygon(_polygon(4, r, cx, cy, angle), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r, cx, cy, angle), fill=colour)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=thick)
    elif shape == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=thick)
    elif shape == "star":
        outer, inner = _polygon(5, r, cx, cy, angle), _polygon(5, r * 0.4, cx, cy, angle + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=colour)
    elif shape == "stripes":
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        for k in (-1, 0, 1):
            ox, oy = -dy * k * 0.6, dx * k * 0.6
            line = (cx - dx + ox, cy - dy + oy, cx + dx + ox, cy + dy + oy)
            draw.line(line, fill=colour, width=max(2, thick // 2))
    elif shape == "dots":
        for _ in range(int(rng.integers(5, 9))):
            a, d, s = rng.uniform(0, 2 * math.pi), rng.uniform(0, r * 0.8), max(2.0, r * 0.18)
            x, y = cx + d * math.cos(a), cy + d * math.sin(a)
            draw.ellipse((x - s, y - s, x + s, y + s), fill=colour)
    elif shape == "half-disc":
        start = math.degrees(angle)
        draw.pieslice((cx - r, cy - r, cx + r, cy + r), start, start + 180, fill=colour)
    else:  # frame: a hollow square
        draw.polygon(_polygon(4, r, cx, cy, angle), outline=colour, width=max(2, thick // 2))
    return image


def make_synthetic_jpegs(
    root: str | os.PathLike, n: int, width: int = 800, height: int = 600,
    classes: tuple[str, ...] = ("a", "b"), seed: int = 0, quality: int = 90,
) -> list[Path]:
    """n photo-sized JPEGs spread over ROOT/<class>/ for input-pipeline benchmarks (~15 ms each to write).

    Smooth colour fields plus grain compress and decode roughly like photographs; flat colour would be
    unrealistically fast to decode and pure noise unrealistically slow.
    """
    rng = np.random.default_rng(seed)
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)  # shared, shifted per image: fast
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        field = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.int16)
        shifted = np.roll(grain, int(rng.integers(0, width)), axis=1)
        pixels = np.clip(field + shifted, 0, 255).astype(np.uint8)
        path = Path(root) / classes[i % len(classes)] / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


# ---- helpers -------------------------------------------------------------------------------------


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _polygon(n: int, r: float, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    angles = [angle + 2 * math.pi * k / n for k in range(n)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def _check_target(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a directory; choose another path for the demo data")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DataError(f"{root}: directory exists and is not empty; choose another path or --overwrite")


def _move_into_place(tmp: Path, root: Path, overwrite: bool) -> None:
    _check_target(root, overwrite)  # again: something may have appeared while we were drawing
    old = None
    if root.is_dir():
        if any(root.iterdir()):
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
        else:
            root.rmdir()
    os.rename(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
