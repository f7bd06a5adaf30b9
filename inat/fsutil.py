"""Atomic file writes: a reader (another agent, `collect`, a resumed job) never sees half a file."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InatError


def _umask() -> int:
    """The process umask, read where Linux shows it (/proc/self/status) rather than by setting and
    restoring it, which would race any thread that creates files meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # elsewhere: once, at import, before any thread of ours runs
    os.umask(mask)
    return mask


# The mode open() gives a new file: what every file written here gets too (see atomic_path).
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temp file lives in the same directory so that the final rename is atomic on POSIX
    filesystems (including Lustre/GPFS/NFS scratch).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InatError(f"cannot write {path}: {os_reason(exc, path.parent)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; results on shared scratch must be readable by the group as the
    # user's umask allows, like any other file they write.
    os.chmod(tmp_path, FILE_MODE)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise InatError(f"cannot write {path}: {os_reason(exc)}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InatError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise InatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_csv(path: str | os.PathLike, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


SCRATCH_HINT = "--out or $INAT_SCRATCH"


def make_dir(path: str | os.PathLike, where: str = SCRATCH_HINT) -> Path:
    """`mkdir -p path`, or one InatError line that names the directory, why, and what to do."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InatError(f"cannot create directory {path}: {os_reason(exc, path, where)}") from None
    return path


def os_reason(exc: OSError, path: Path | None = None, where: str = SCRATCH_HINT) -> str:
    """Why a write failed, in words, with what to do; `where` is the option that chose the place."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device (free some space or point {where} at another file system)"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded (free some space or point {where} at another file system)"
    if exc.errno == errno.EROFS:
        return f"read-only file system (point {where} at a writable directory)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied (point {where} at a writable directory)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        # mkdir -p below a regular file, e.g. --out naming a file: say which file is in the way.
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a directory (point {where} at a directory)"
    what = (exc.strerror or str(exc)).lower()
    return f"{what} (point {where} at a writable directory)"


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


@contextlib.contextmanager
def run_lock(lock: Path, run_dir: Path) -> Iterator[None]:
    """Hold `lock` (an flock) for as long as one process trains `run_dir`; refuse if another does.

    Only EWOULDBLOCK/EAGAIN means the lock is held. A file system without locks answers flock()
    with ENOLCK (NFS without a lock daemon), EOPNOTSUPP/ENOTSUP or ENOSYS (Lustre mounted without
    `flock`/`localflock`): that is said as such, since no other process is involved.
    """
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InatError(f"{run_dir}: another process is training this run right now") from None
            if exc.errno in _NO_LOCKS:
                raise InatError(
                    f"{run_dir}: the file system holding this run does not support file locks "
                    f"(flock on {lock.name}: {exc.strerror or exc}), and train needs one to keep two "
                    "processes out of one run; mount it with locks (Lustre: -o flock; -o localflock keeps "
                    "out only processes on the same node; NFS: run the lock daemon) or put the run on "
                    "a file system that has them (--out or $INAT_SCRATCH)"
                ) from None
            raise InatError(f"{run_dir}: cannot lock {lock}: {exc.strerror or exc}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def short_lock(lock: Path) -> Iterator[None]:
    """An exclusive flock of `lock` around a short read-modify-write. Where the file system has no
    locks the block runs unlocked, as such writes did before there was a lock: rare, and harmless
    but for a lost update between two writers of one record at the same instant."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
