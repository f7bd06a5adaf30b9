"""A decoded-image cache: decode and resize every image of a dataset once, train from it many times.

This module finds and reads a cache; `inat.data.cache_build` builds one.

A sweep trains dozens of models on the same JPEGs; decoding them again in every epoch of every trial
is most of the CPU time on CPU nodes and starves a GPU. `build_cache` decodes every image under
ROOT/train and ROOT/val once, with the same op as the uncached pipeline
(`inat.data.pipeline.decode_resize`), into one uint8 array on scratch, and `find_cache` finds it for
`inat.data.dataset_for` whenever it still matches the files on disk. Layout, under the cache root (normally SCRATCH/cache):

    <dataset folder name>-<hash of its absolute path>/
      .128px.lock                   builders take this lock (fcntl/POSIX), readers never do
      128px/                        one finished cache, renamed into place whole
        manifest.json               format, data root, image size, classes, every file with its size
                                    and mtime and its row in the array, and the images skipped as bad
        images-<build id>.npy       uint8 (rows, 128, 128, 3), memory-mapped by readers

Concurrency: a builder works in a temporary sibling directory and renames it into place when it is
complete, so a reader sees either no cache or a whole one, never half of one; a reader only trusts
a directory whose manifest.json exists and names an array that is there. Builders serialise on the
lock file, and whoever gets the lock second re-checks and uses what the first one built. Replacing a
stale cache renames the old directory away first; a reader that already mapped the old array keeps
its pages (POSIX unlink semantics), and one that read the old manifest but not yet the array finds
the build id in the array name changed and falls back to decoding.

File locks on cluster filesystems: fcntl (POSIX) locks work on local disks, on NFSv4 and on NFSv3
with a running lock daemon, and on Lustre/GPFS mounted with flock support (`-o flock`; the
default on current Lustre). Where the filesystem refuses locks we log a warning and build without
one: readers stay safe (rename is atomic everywhere), but two builders may then both build.
"""


from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InatError
from ..fsutil import read_json
from .pipeline import finish_batches
from .splits import Splits, image_files

log = logging.getLogger("inat")

FORMAT = "inat-cache/1"  # bump when the decode, the resize or the layout changes: old caches stop matching
MANIFEST = "manifest.json"
DECODE = "data.decode_resize: JPEG DCT-scaled decode, bilinear resize without antialias, rounded to uint8"
MIN_SIZE, MAX_SIZE = 8, 1024  # as RunConfig.image_size


@dataclass
class Cache:
    path: Path
    manifest: dict
    rows: dict[str, int]  # relative path -> row of the array
    bad: dict[str, str]  # relative path -> why it was skipped
    images: np.ndarray  # uint8 (rows, S, S, 3), memory-mapped read-only

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def split_rows(self, splits: Splits, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows of the array, labels) of one split, in the split's order.

        None (the caller decodes the JPEGs instead) if the split names a file the cache does not
        hold, e.g. a splits.json that lists files deleted before the cache was built. Files the
        cache skipped as undecodable are left out, as the uncached pipeline's ignore_errors would
        drop them.
        """
        items = splits.items(split)
        if not items:
            raise DataError("no images to load (the split is empty)")
        unknown = [rel for rel, _ in items if rel not in self.rows and rel not in self.bad]
        if unknown:
            log.warning(
                "cache %s does not hold %d file(s) of the %s split (e.g. %s); decoding the JPEGs instead",
                self.path, len(unknown), split, unknown[0],
            )  # fmt: skip
            return None
        kept = [(self.rows[rel], label) for rel, label in items if rel in self.rows]
        if len(kept) < len(items):
            log.warning("%s split: %d image(s) skipped, they did not decode when the cache was built",
                        split, len(items) - len(kept))  # fmt: skip
        return np.array([r for r, _ in kept], dtype=np.int64), np.array([lb for _, lb in kept], dtype=np.int32)

    def dataset(
        self, splits: Splits, split: str, batch_size: int, *, image_size: int | None = None,
        shuffle: bool, augment: bool, seed: int = 0, repeat: bool = False,
    ):  # fmt: skip
        """The same tf.data batches as `inat.data.make_dataset` for this split, gathered from the
        array by row; None where `split_rows` is None."""
        import tensorflow as tf  # lazy: TensorFlow, only when batches are read

        self.check_size(image_size)
        found = self.split_rows(splits, split)
        if found is None:
            return None
        rows, labels = found
        size, images = self.image_size, self.images

        def gather(index):
            return images[index]  # fancy indexing copies the rows out of the memory map

        ds = tf.data.Dataset.from_tensor_slices((rows, labels))
        if shuffle:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=repeat)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size).map(
            lambda index, label: (
                tf.ensure_shape(tf.numpy_function(gather, [index], tf.uint8, stateful=False), (None, size, size, 3)),
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return finish_batches(ds, augment=augment, seed=seed)

    def check_size(self, image_size: int | None) -> None:
        if image_size is not None and image_size != self.image_size:
            raise ValueError(f"cache holds {self.image_size} px images, not {image_size} px")


# ---- where ---------------------------------------------------------------------------------------


def cache_path(data_root: str | os.PathLike, image_size: int, cache_root: str | os.PathLike) -> Path:
    """The directory that holds (or will hold) the cache of `data_root` at `image_size` px."""
    root = os.path.abspath(data_root)
    digest = hashlib.sha1(root.encode("utf-8")).hexdigest()[:8]
    name = Path(root).name or "root"
    return Path(cache_root).expanduser().resolve() / f"{name}-{digest}" / f"{int(image_size)}px"


# ---- read ----------------------------------------------------------------------------------------


def find_cache(splits: Splits, image_size: int, cache_root: str | os.PathLike) -> Cache | None:
    """The cache of `splits.root` at `image_size` px if it matches the files on disk now, else None.

    Every "no" is logged with its reason: none built yet, built by another format version, or the
    data changed since (files added, removed, or with another size or mtime).
    """
    path = cache_path(splits.root, image_size, cache_root)
    try:
        now = stat_files(splits.root)
    except DataError as exc:  # the data root moved or vanished: the uncached path says so properly
        log.info("not using a decoded-image cache: %s", exc)
        return None
    cache, why = open_matching(path, splits.root, image_size, now)
    if cache is None:
        log.info("not using a decoded-image cache: %s; decoding the JPEGs", why)
        return None
    if cache.manifest["classes"] != list(splits.classes):
        log.warning("not using cache %s: its classes differ from the run's; decoding the JPEGs", path)
        return None
    log.info("using decoded-image cache %s (%d images)", path, len(cache.rows))
    return cache


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a finished cache directory without checking it against the data (see find_cache)."""
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: cache format {manifest.get('format')!r}, expected {FORMAT!r}")
    try:
        images = np.load(path / manifest["array"], mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot open the cache array ({exc})") from None
    size = int(manifest["image_size"])
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3) or len(images) != manifest["n_rows"]:
        raise DataError(f"{path}: cache array has shape {images.shape}, not what its manifest says")
    rows = {rel: int(row) for rel, _, _, row in manifest["files"]}
    bad = {rel: why for rel, _, _, why in manifest["bad"]}
    return Cache(path, manifest, rows, bad, images)


def open_matching(path: Path, data_root, image_size: int, now: dict) -> tuple[Cache | None, str]:
    """(the cache at `path`, "") if it was built from `data_root` at `image_size` px and its files
    are `now` ({relative path: (size, mtime_ns)}, from `stat_files`), else (None, why not)."""
    if not (path / MANIFEST).is_file():
        return None, f"none built at {path} (build it with `inat-jobs cache-data`)"
    try:
        cache = open_cache(path)
    except InatError as exc:  # a stale or damaged cache, or the race described in the module doc
        return None, str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"{path}: unreadable manifest ({exc})"
    m = cache.manifest
    if m["data_root"] != os.path.abspath(data_root) or int(m["image_size"]) != image_size:
        return None, f"{path} was built for {m['data_root']} at {m['image_size']} px"
    built = {rel: (size, mtime) for rel, size, mtime, _ in m["files"]}
    built.update({rel: (size, mtime) for rel, size, mtime, _ in m["bad"]})
    changed = describe_changes(built, now)
    if changed:
        return None, f"the data changed since {path} was built ({changed})"
    return cache, ""


def describe_changes(built: dict, now: dict) -> str:
    """'' if the two {relative path: (size, mtime_ns)} listings agree, else what differs, briefly."""
    added = sorted(set(now) - set(built))
    removed = sorted(set(built) - set(now))
    changed = sorted(rel for rel in set(built) & set(now) if tuple(built[rel]) != tuple(now[rel]))
    parts = []
    for what, rels in (("added", added), ("removed", removed), ("changed size or mtime", changed)):
        if rels:
            parts.append(f"{len(rels)} file(s) {what}, e.g. {rels[0]}")
    return "; ".join(parts)


def stat_files(data_root) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every image under ROOT/train and ROOT/val."""
    root = Path(os.path.abspath(data_root))
    rels = image_files(root)

    def stat(block):
        out = []
        for rel in block:
            try:
                st = os.stat(root / rel)
            except FileNotFoundError:
                continue  # deleted since the listing: counts as removed
            out.append((rel, (st.st_size, st.st_mtime_ns)))
        return out

    # Threads, as in inat.data.check_images: on cluster filesystems every stat is a round trip.
    blocks = [rels[i : i + 512] for i in range(0, len(rels), 512)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(item for block in pool.map(stat, blocks) for item in block)


def describe(path: str | os.PathLike) -> str:
    """One line for the CLI: where, how many images, how big, how many skipped."""
    cache = open_cache(path)
    nbytes = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    text = f"{cache.path}: {len(cache.rows)} images at {cache.image_size} px, {nbytes / 2**20:.1f} MiB"
    if cache.bad:
        text += f"; {len(cache.bad)} unreadable image(s) skipped (listed in {MANIFEST})"
    return text
