"""A decoded-image cache: decode and resize every image of a dataset once, train from it many times.

A sweep trains dozens of models on the same JPEGs; decoding them again in every epoch of every trial
is most of the CPU time on CPU nodes and starves a GPU. `build_cache` decodes every image under
ROOT/train and ROOT/val once, with the same op as the uncached pipeline (`inat.data.pipeline.decode_resize`), into
one uint8 array on scratch, and `find_cache` hands it to `inat.data.dataset_for` whenever it still matches
the files on disk. Layout, under the cache root (normally SCRATCH/cache):

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

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InatError
from ..fsutil import read_json, write_text
from .pipeline import decode_resize, finish_batches
from .splits import Splits, _problems, discover, image_files

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

    def dataset(
        self, splits: Splits, split: str, batch_size: int, *, image_size: int | None = None,
        shuffle: bool, augment: bool, seed: int = 0, repeat: bool = False,
    ):  # fmt: skip
        """The same batches as `inat.data.make_dataset` for this split, gathered from the array by row.

        Returns None (the caller decodes the JPEGs instead) if the split names a file the cache
        does not hold, e.g. a splits.json that lists files deleted before the cache was built.
        Files the cache skipped as undecodable are left out, as the uncached pipeline's
        ignore_errors would drop them.
        """
        import tensorflow as tf

        if image_size is not None and image_size != self.image_size:
            raise ValueError(f"cache holds {self.image_size} px images, not {image_size} px")
        items = splits._items(split)
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
        rows = np.array([r for r, _ in kept], dtype=np.int64)
        labels = np.array([label for _, label in kept], dtype=np.int32)
        size, images = self.image_size, self.images

        def gather(index):
            return images[index]  # fancy indexing copies the rows out of the memory map

        ds = tf.data.Dataset.from_tensor_slices((rows, labels))
        if shuffle:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
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
        now = _stat_files(splits.root)
    except DataError as exc:  # the data root moved or vanished: the uncached path says so properly
        log.info("not using a decoded-image cache: %s", exc)
        return None
    cache, why = _open_matching(path, splits.root, image_size, now)
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


def _open_matching(path: Path, data_root, image_size: int, now: dict) -> tuple[Cache | None, str]:
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


def _stat_files(data_root) -> dict[str, tuple[int, int]]:
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


# ---- build ---------------------------------------------------------------------------------------


def build_cache(
    data_root: str | os.PathLike, image_size: int, cache_root: str | os.PathLike, *, force: bool = False
) -> Path:
    """Decode every image under DATA_ROOT/{train,val} once into a cache; return its directory.

    Returns at once if a matching cache is there (unless `force`). Safe to call from many processes
    at once: one builds, the others wait for it and then return its result.
    """
    image_size = check_image_size(image_size)
    root = Path(os.path.abspath(data_root))
    path = cache_path(root, image_size, cache_root)
    if not force:
        cache, _ = _open_matching(path, root, image_size, _stat_files(root))
        if cache is not None:
            log.info("decoded-image cache %s is up to date", path)
            return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(path.parent / f".{path.name}.lock"):
            now = _stat_files(root)  # again, under the lock: whoever held it may have just built it
            cache, why = _open_matching(path, root, image_size, now)
            if cache is not None and not force:
                log.info("decoded-image cache %s was built by another process meanwhile; using it", path)
                return path
            if why and (path / MANIFEST).exists():
                log.info("rebuilding: %s", why)
            _build(root, image_size, path, now)
    except OSError as exc:  # read-only or full scratch, permissions: one line, not a traceback
        where = exc.filename or path.parent
        raise InatError(f"cannot build the image cache: {where}: {exc.strerror or exc}") from None
    return path


def check_image_size(image_size) -> int:
    try:
        size = int(str(image_size).strip())
    except ValueError:
        size = None
    if size is None or not MIN_SIZE <= size <= MAX_SIZE:
        raise InatError(f"image size {image_size!r}: expected an integer from {MIN_SIZE} to {MAX_SIZE}")
    return size


def _build(root: Path, image_size: int, path: Path, files: dict[str, tuple[int, int]]) -> None:
    t0 = time.perf_counter()
    splits = discover(root)  # validates the layout; gives the class map
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: these builders are dead
    rels = sorted(files)
    problems = _problems([str(root / rel) for rel in rels])
    bad = {rel: why for rel, why in zip(rels, problems) if why is not None}
    todo = [rel for rel in rels if rel not in bad]
    _check_space(path.parent, len(todo) * image_size * image_size * 3)

    build_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    tmp = path.parent / f".{path.name}.tmp-{build_id}"
    array = f"images-{build_id}.npy"
    log.info("building decoded-image cache of %d images at %d px in %s", len(todo), image_size, path)
    try:
        tmp.mkdir()
        written = _decode_into(root, todo, image_size, tmp / array)
        for i, rel in enumerate(todo):
            if not written[i]:
                bad[rel] = "TensorFlow could not decode it (corrupt inside)"
        manifest = {
            "format": FORMAT,
            "build_id": build_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_root": str(root),
            "image_size": image_size,
            "decode": DECODE,
            "dtype": "uint8",
            "array": array,
            "n_rows": len(todo),
            "classes": splits.classes,
            # Every image file with its row: [relative path, size, mtime_ns, row]; a file in "bad"
            # has no row (its slot in the array, if any, is unused) but counts for matching.
            "files": [[rel, *files[rel], i] for i, rel in enumerate(todo) if written[i]],
            "bad": [[rel, *files[rel], bad[rel]] for rel in sorted(bad)],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_text(tmp / MANIFEST, _manifest_text(manifest))  # last in tmp; the rename publishes it all
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if bad:
        shown = ", ".join(f"{rel} ({why})" for rel, why in sorted(bad.items())[:5])
        log.warning("cache skipped %d unreadable image(s): %s", len(bad), shown)
    log.info("built %s: %d images, %.1f MiB, %.1f s", path, len(manifest["files"]),
             (path / array).stat().st_size / 2**20, manifest["seconds"])  # fmt: skip


def _manifest_text(manifest: dict) -> str:
    """Indented JSON, but one line per file: 10k files stay a readable, diffable ~1 MB."""
    head = {k: v for k, v in manifest.items() if k not in ("files", "bad")}
    text = json.dumps(head, indent=2)[:-2]  # drop the closing "\n}"
    for key in ("files", "bad"):
        rows = ",\n".join("    " + json.dumps(row) for row in manifest[key])
        text += f',\n  "{key}": [\n{rows}\n  ]' if rows else f',\n  "{key}": []'
    return text + "\n}\n"


def _decode_into(root: Path, rels: list[str], image_size: int, out: Path) -> np.ndarray:
    """Decode `rels` into a new .npy at `out`, row i = rels[i]; returns which rows hold an image.

    Plain sequential writes, not a writable memory map: a full disk is then an OSError (one-line
    error) instead of a SIGBUS that kills the process.
    """
    import tensorflow as tf

    shape = (len(rels), image_size, image_size, 3)
    row_bytes = image_size * image_size * 3
    written = np.zeros(len(rels), dtype=bool)
    with open(out, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(fh, header)
        done = 0  # rows written so far; the pipeline keeps order, and drops what fails to decode
        if rels:
            paths = [str(root / rel) for rel in rels]
            ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(rels), dtype=np.int64)))
            ds = ds.map(
                lambda p, i: (decode_resize(tf.io.read_file(p), image_size), i),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            ds = ds.ignore_errors(log_warning=True).batch(256).prefetch(2)
            for batch, index in ds.as_numpy_iterator():
                for image, i in zip(batch, index):
                    if i > done:
                        fh.write(bytes((i - done) * row_bytes))  # zeros where images failed
                    fh.write(image.tobytes())
                    done = i + 1
                written[index] = True
        if done < len(rels):
            fh.write(bytes((len(rels) - done) * row_bytes))
        fh.flush()
        os.fsync(fh.fileno())
    return written


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path`, moving an existing (stale) cache out of the way first."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{secrets.token_hex(3)}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InatError(
            f"{folder}: the cache needs {needed / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free; "
            "free some space or choose another --out"
        )


@contextlib.contextmanager
def _build_lock(lock_path: Path):
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                log.info("another process is building %s; waiting for it", lock_path.parent)
                fcntl.lockf(fh, fcntl.LOCK_EX)
            elif exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning("%s: this filesystem refuses file locks (%s); building without one",
                            lock_path, exc.strerror)  # fmt: skip
            else:
                raise
        yield
    finally:
        fh.close()  # closing releases a POSIX lock


def describe(path: str | os.PathLike) -> str:
    """One line for the CLI: where, how many images, how big, how many skipped."""
    cache = open_cache(path)
    nbytes = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    text = f"{cache.path}: {len(cache.rows)} images at {cache.image_size} px, {nbytes / 2**20:.1f} MiB"
    if cache.bad:
        text += f"; {len(cache.bad)} unreadable image(s) skipped (listed in {MANIFEST})"
    return text
