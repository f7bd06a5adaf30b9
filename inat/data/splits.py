"""Find the images, split them and check them: everything about the dataset that is not TensorFlow.

The dataset is laid out as iNaturalist-12K ships it:

    ROOT/train/<class>/*.jpg    -> our train and val splits (a stratified, seeded val_fraction of it is val)
    ROOT/val/<class>/*.jpg      -> our TEST split (iNaturalist's "val" folder is held out until the end)

`discover` turns that tree into a `Splits` object, which is saved next to each run as JSON so that the run
documents exactly which files it trained, validated and tested on, and `drop_bad_images` leaves out the
files a cheap header/trailer check finds broken. The tf.data pipeline over a `Splits` is in
`inat.data.pipeline`.
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

from ..errors import DataError, InatError
from ..fsutil import read_json, write_json

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
        return [os.path.join(self.root, rel) for rel, _ in self.items(split)]

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self.items(split)]

    def items(self, split: str) -> list[tuple[str, int]]:
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
    root = check_root(root)
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
    root = check_root(root)
    found = [*_scan(root, "train", []).values(), *_scan(root, "val", []).values()]
    return sorted(rel for files in found for rel in files)


def check_root(root: str | os.PathLike) -> Path:
    """ROOT as an absolute path, or a one-line DataError unless it holds train/ and val/ folders."""
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
    from PIL import Image  # lazy: PIL, only for the rare JPEG without an end marker in its last 4 KiB

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
    return [p for p, why in zip(paths, image_problems(paths)) if why is not None]


def image_problems(paths: list) -> list[str | None]:
    """`image_problem` of each path, in order (None where the file looks fine).

    Threads, each over a block of files: on cluster filesystems (Lustre, NFS) every open is a
    network round trip and 8 in flight help; blocks keep the per-task overhead off local disks.
    """
    blocks = [paths[i : i + 512] for i in range(0, len(paths), 512)]
    if len(blocks) <= 1:
        return [image_problem(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [why for block in pool.map(lambda b: [image_problem(p) for p in b], blocks) for why in block]


def drop_bad_images(splits: Splits) -> Splits:
    """A copy of `splits` without files that fail `image_problem`; they are logged and kept in `bad`."""
    items = [(split, rel, label) for split in SPLITS for rel, label in getattr(splits, split)]
    problems = image_problems([os.path.join(splits.root, rel) for _, rel, _ in items])
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

