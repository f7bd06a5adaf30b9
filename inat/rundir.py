"""A run directory: its files, its history.csv and commit point, and the one rule for its best epoch.

Light on purpose (no TensorFlow, no Keras): the sweep status, the report and the collector read
runs with it on a login node, and `train()` writes them with it, so both sides agree by construction
on which epoch is the best one and what its value is.

history.csv holds one row per finished epoch (HISTORY_FIELDS, values with 6 decimals). After a kill
it may hold one row more than checkpoint/state.json has committed; `committed_rows` leaves it out.
The order in which train() commits an epoch is in `inat.train`; the bookkeeping it does in the
directory (its lock, state, run.json, stale temp files, the best model's rename) is here.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import math
import os
import platform
import time
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .errors import InatError
from .fsutil import os_reason, read_json, write_csv, write_json

# What a run directory holds. `collect` copies everything but the checkpoint folder.
RUN_FILES = {
    "config.yaml": "the resolved run config",
    "run.json": "run id, data root, classes, status, library versions",
    "splits.json": "the train / val / test file lists, so retraining and testing reproduce them",
    "history.csv": "one row per finished epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds",
    "model.keras": "the model of the best epoch so far, by the config's monitor (a sweep's metric)",
    "checkpoint/": "the last finished epoch's model and state, for resuming",
    "test_metrics.json": "written by `inat-jobs test`",
    "predictions.csv": "written by `inat-jobs test`: one row per test image",
    "figures/": "written by `inat-jobs visualize`",
    "report.html": "written by `inat-jobs report`: one self-contained page",
    "wandb/": "W&B run files (offline runs: upload with `wandb sync`)",
}

HISTORY_FIELDS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]


def state_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoint" / "state.json"


def committed_epochs(run_dir: str | os.PathLike) -> int:
    """Epochs past the commit point (checkpoint/state.json): where the next train() resumes."""
    path = state_path(run_dir)
    return int(read_json(path).get("epoch", 0)) if path.exists() else 0


def raw_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [row for row in list(csv.reader(fh))[1:] if row]


def parse_rows(rows: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    return [{k: float(v) if v not in ("", None) else math.nan for k, v in zip(HISTORY_FIELDS, r)} for r in rows]


def read_history(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Every row of history.csv, committed or not (a kill may leave one uncommitted row)."""
    return parse_rows(raw_rows(Path(run_dir) / "history.csv"))


def best_model_path(run_dir: str | os.PathLike) -> Path:
    """The committed best model: RUN/model.keras, or, for the one rename after a commit that a kill
    can interrupt, the checkpoint/best-NNNN.keras that state.json names and that still waits there."""
    run_dir = Path(run_dir)
    path = state_path(run_dir)
    name = read_json(path).get("best_model") if path.exists() else None
    if name and (run_dir / "checkpoint" / name).is_file():
        return run_dir / "checkpoint" / name
    return run_dir / "model.keras"


def require_model(run_dir: str | os.PathLike) -> Path:
    """RUN/model.keras, or the one-line error; checked before a job is submitted for the run, too."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise InatError(f"{run_dir}: run directory not found")
    model_path = best_model_path(run_dir)
    if not model_path.is_file():
        raise InatError(f"{run_dir}: no model.keras here; train it first with `inat-jobs train`")
    return model_path


def committed_rows(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of the epochs the commit point counts (all rows for a run without a state file)."""
    rows = read_history(run_dir)
    if not state_path(run_dir).exists():
        return rows
    done = committed_epochs(run_dir)
    return [r for r in rows if int(r["epoch"]) <= done]


def trim(path: Path, epochs_done: int) -> None:
    rows = raw_rows(path)
    kept = [r for r in rows if int(r[0]) <= epochs_done]
    if len(kept) != len(rows):
        write_csv(path, HISTORY_FIELDS, kept)


def best_epoch(rows: Sequence[dict[str, float]], monitor: str, maximize: bool) -> tuple[int, float] | None:
    """(epoch, value) of the best row by `monitor`: the epoch model.keras holds and the value that
    ranks the run. NaN never wins; a tie keeps the earlier epoch. The values are history.csv's (6
    decimals), so whoever reads the file finds the epoch train() kept."""
    best = None
    for row in rows:
        value = row.get(monitor, math.nan)
        if math.isnan(value):
            continue
        if best is None or (value > best[1] if maximize else value < best[1]):
            best = (int(row["epoch"]), value)
    return best


# ---- what train() does in the directory --------------------------------------------------------------


@contextlib.contextmanager
def exclusive(run_dir: Path):
    """Refuse to train a run directory that another live process is training (e.g. a stale requeue).

    Only EWOULDBLOCK/EAGAIN means the lock is held. A file system without locks answers flock()
    with ENOLCK (NFS without a lock daemon), EOPNOTSUPP/ENOTSUP or ENOSYS (Lustre mounted without
    `flock`/`localflock`): that is said as such, since no other process is involved.
    """
    lock = run_dir / ".lock"
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InatError(f"{run_dir}: another process is training this run right now") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
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


def read_state(run_dir: Path) -> dict | None:
    """checkpoint/state.json, the commit point, or None for a run that has not committed an epoch."""
    path = state_path(run_dir)
    if not path.exists():
        return None
    state = read_json(path)
    if not (run_dir / "checkpoint" / state.get("checkpoint", "")).is_file():
        raise InatError(f"{path}: names a checkpoint that is missing; start a new --run-id")
    return state


def check_same_config(cfg: RunConfig, run_dir: Path, resuming: bool) -> None:
    """A resumed run must be trained with the config it was started with."""
    saved = run_dir / "config.yaml"
    if not (resuming and saved.exists()):
        return
    old = RunConfig.load(saved)
    if old != cfg:
        changed = sorted(k for k, v in cfg.to_dict().items() if old.to_dict()[k] != v)
        raise InatError(
            f"{run_dir}: already holds a run with a different config ({', '.join(changed)} differ); "
            "use a new --run-id, or the same config to resume"
        )


def remove_stale_temps(run_dir: Path) -> None:
    """Delete what killed writers left behind (call it holding the run's lock)."""
    # A kill -9 during a save leaves its temp file behind, and one before the commit leaves a best
    # model of an epoch that does not count; we hold the run's lock, so no live writer owns any.
    for pattern in (".*.tmp.keras", ".*.tmp"):
        for path in [*run_dir.glob(pattern), *(run_dir / "checkpoint").glob(pattern)]:
            path.unlink(missing_ok=True)
    state = read_json(state_path(run_dir)) if state_path(run_dir).exists() else {}
    for path in (run_dir / "checkpoint").glob("best-*.keras"):
        if path.name != state.get("best_model"):
            path.unlink(missing_ok=True)


def write_run_info(run_dir: Path, cfg: RunConfig, splits, status: str, epochs_done: int, versions: dict,
                   **extra) -> None:
    """run.json: what the run is, how far it got, where and with which library versions."""
    previous = _previous_info(run_dir)
    info = {
        "run_id": run_dir.name,
        "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": status,
        "epochs_done": epochs_done,
        "epochs": cfg.epochs,
        "model": cfg.model,
        "data_root": splits.root,
        "classes": splits.classes,
        "counts": {s: len(getattr(splits, s)) for s in ("train", "val", "test")},
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": versions,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_json(run_dir / "run.json", info)


def _previous_info(run_dir: Path) -> dict:
    try:
        return read_json(run_dir / "run.json")
    except InatError:
        return {}


def publish_best_model(run_dir: Path, state: dict) -> None:
    """Rename the committed best model into model.keras, if it still waits in checkpoint/ (readers
    find it there meanwhile: `best_model_path`)."""
    name = state.get("best_model")
    if name and (run_dir / "checkpoint" / name).is_file():
        os.replace(run_dir / "checkpoint" / name, run_dir / "model.keras")


def save_model_atomic(model, path: Path) -> None:
    """Keras insists on a .keras suffix, so the temp name keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InatError(f"cannot write {path}: {os_reason(exc)}") from None


def wandb_id(run_dir: Path) -> str:
    # W&B ids allow [a-z0-9-_]; the run dir name already is unique on this scratch root.
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.name.lower())[:64]


def history_value(value) -> str:
    """A metric as history.csv writes it: 6 decimals, empty when missing."""
    return "" if value is None else f"{float(value):.6f}"
