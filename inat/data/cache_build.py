"""Building the decoded-image cache that `inat.data.cache` reads (its module doc has the layout).

`build_cache` decodes every image under DATA_ROOT/{train,val} once with the pipeline's own op
(`inat.data.pipeline.decode_resize`) into a temporary sibling directory and renames it into place
whole. Builders serialise on a lock file next to it; the second one re-checks and uses what the
first one built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import InatError
from ..fsutil import write_text
from .cache import DECODE, FORMAT, MANIFEST, MAX_SIZE, MIN_SIZE, cache_path, open_matching, stat_files
from .pipeline import decode_resize
from .splits import discover, image_problems

log = logging.getLogger("inat")


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
        cache, _ = open_matching(path, root, image_size, stat_files(root))
        if cache is not None:
            log.info("decoded-image cache %s is up to date", path)
            return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(path.parent / f".{path.name}.lock"):
            now = stat_files(root)  # again, under the lock: whoever held it may have just built it
            cache, why = open_matching(path, root, image_size, now)
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
    problems = image_problems([str(root / rel) for rel in rels])
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
    import tensorflow as tf  # lazy: TensorFlow, only to decode

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
