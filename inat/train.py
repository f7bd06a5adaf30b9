"""Train one model into one run directory, resumably.

`train()` is what `inat-jobs train`, every sweep trial and every retraining job call. A run directory
is self-describing (see `inat.layout.RUN_FILES`); calling `train()` again on the same directory after
a crash, a kill -9, a time-out or a preemption resumes at the last finished epoch, so every epoch
appears exactly once in history.csv.

Commit order at the end of each epoch (the state file is the commit point):
  1. checkpoint/epoch-NNNN.keras   model + optimizer state after this epoch
  2. checkpoint/best-NNNN.keras    if this epoch is now the best by cfg.monitor (see `best_epoch`)
  3. history.csv                    rewritten with this epoch's row
  4. checkpoint/state.json          names the checkpoint of step 1 and the best epoch: now it counts
  5. model.keras                    the file of step 2, renamed into place
A kill before step 4 leaves state.json, history (trimmed on resume) and model.keras all at the
previous epoch; the resume deletes the uncommitted files and redoes the epoch from the previous
checkpoint, drawing the same random numbers (`inat.seeding`). A kill between steps 4 and 5 (one
rename) leaves the committed best waiting in checkpoint/; the next train() of the run renames it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras

from . import data, seeding, tracking
from .config import RunConfig
from .data.cache import find_cache
from .data.cache_build import build_cache
from .errors import InatError
from .fsutil import make_dir, os_reason, read_json, write_csv, write_json
from .models.common import compile_model, input_size, load_model, make_model
from .models.weights import resolve_weights
from .rundir import HISTORY_FIELDS, best_epoch, parse_rows, raw_rows, state_path, trim

log = logging.getLogger("inat")


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_val_accuracy: float  # val_accuracy of the kept epoch (model.keras)
    best_epoch: int
    status: str  # "completed" | "stopped" (a callback stopped it, e.g. a sweep pruner)
    best_value: float = float("nan")  # cfg.monitor at the kept epoch



def train(
    cfg: RunConfig,
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    callbacks: Sequence[Any] = (),
    wandb_group: str | None = None,
    wandb_job_type: str = "train",
    verbose: int | None = None,
    cache_root: str | os.PathLike | None = None,
    build_cache: bool = True,
) -> TrainResult:
    """Train `cfg` into `run_dir`, resuming if the directory holds an unfinished run of the same config.

    `cache_root` (normally `layout.cache_dir(SCRATCH)`) turns on the decoded-image cache: batches
    come from the cache of this dataset at this input size when one matches the files on disk;
    if none does and `build_cache` is true, it is built first (once, however many runs start
    together; see `inat.data.cache_build`). Without `cache_root` the JPEGs are decoded every epoch.

    A new run directory that fails before its first epoch is committed (bad data, missing weights,
    a full disk) is removed again: a failed start leaves nothing behind to mistake for a run.
    """
    run_dir = Path(run_dir).resolve()
    if not state_path(run_dir).exists():
        resolve_weights(cfg)  # a missing weights file fails here, before anything is written
    created = not run_dir.exists()
    make_dir(run_dir)
    try:
        with _exclusive(run_dir):
            return _train_locked(
                cfg, run_dir, data_root, callbacks, wandb_group, wandb_job_type, verbose, cache_root, build_cache
            )
    except Exception:
        if created and not state_path(run_dir).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train_locked(cfg, run_dir, data_root, callbacks, wandb_group, wandb_job_type, verbose, cache_root, build_cache):
    _remove_stale_temps(run_dir)
    state = _read_state(run_dir)
    _check_same_config(cfg, run_dir, resuming=state is not None)
    splits = _prepare_splits(cfg, run_dir, data_root)
    cfg.save(run_dir / "config.yaml")
    seeding.deterministic_from_env()

    keras.utils.set_random_seed(cfg.seed)
    if state is not None:
        publish_best_model(run_dir, state)
        start_epoch = state["epoch"]
        model = load_model(run_dir / "checkpoint" / state["checkpoint"])
        log.info("resuming %s after epoch %d of %d", run_dir.name, start_epoch, cfg.epochs)
    else:
        start_epoch = 0
        model = make_model(cfg, len(splits.classes))
        compile_model(model, cfg)
    trim(run_dir / "history.csv", start_epoch)

    _write_run_info(run_dir, cfg, splits, status="running", epochs_done=start_epoch)
    if state is not None and start_epoch >= cfg.epochs:
        log.info("%s already finished all %d epochs", run_dir.name, cfg.epochs)
        return _finish(run_dir, cfg, splits, state, "completed")

    size = input_size(cfg)
    cache = _find_or_build_cache(splits, size, cache_root, build_cache) if cache_root is not None else None
    val_ds = data.dataset_for(splits, "val", size, cfg.batch_size, training=False, cache=cache)

    tracker = tracking.start(
        run_dir,
        cfg.to_dict(),
        name=run_dir.name,
        run_id=(state or {}).get("wandb_id") or _wandb_id(run_dir),
        group=wandb_group,
        job_type=wandb_job_type,
    )
    recorder = RunRecorder(run_dir, cfg, tracker, state)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    progress = [EpochProgbar(cfg.epochs)] if verbose else []
    try:
        with warnings.catch_warnings():
            # The datasets have no known length (ignore_errors may drop images), so Keras finds the
            # end of the first epoch by running out of data, and warns that it did: expected here.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            # One fit() per epoch, each on a pipeline seeded from (seed, epoch): a single fit() over
            # one pipeline would replay the first epoch's shuffle and augmentation after a resume.
            for epoch in range(start_epoch, cfg.epochs):
                seeding.reseed_model(model, cfg.seed, epoch)
                train_ds = data.dataset_for(
                    splits, "train", size, cfg.batch_size, training=True, augment=cfg.data_augment,
                    seed=seeding.epoch_seed(cfg.seed, epoch, "data"), cache=cache,
                )  # fmt: skip
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    callbacks=[recorder, *callbacks, *progress],
                    verbose=verbose,
                    shuffle=False,  # train_ds shuffles itself; Keras warns when asked to shuffle a Dataset
                )
                if model.stop_training:  # a callback (e.g. a sweep's pruner) asked to stop
                    break
    except BaseException:
        tracker.finish(exit_code=1)
        _write_run_info(run_dir, cfg, splits, status="failed", epochs_done=recorder.state["epoch"])
        raise
    status = "completed" if recorder.state["epoch"] >= cfg.epochs else "stopped"
    tracker.summary({"best_val_accuracy": recorder.state["best_val_accuracy"], "best_epoch": recorder.state["best_epoch"],
                     f"best_{cfg.monitor}": recorder.state.get("best_value"), "status": status})
    tracker.finish()
    return _finish(run_dir, cfg, splits, recorder.state, status)


class EpochProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, numbering epochs out of the run's total, not out of one fit() call."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})


class RunRecorder(keras.callbacks.Callback):
    """Checkpoint, best model, history and W&B log at the end of every epoch (see module doc)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, tracker, state: dict | None):
        super().__init__()
        self.run_dir = run_dir
        self.cfg = cfg
        self.tracker = tracker
        self.state = dict(state or {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0})
        self.state.update(monitor=cfg.monitor, maximize=cfg.monitor_maximize)
        self.state["wandb_id"] = tracker.id or self.state.get("wandb_id")
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        number = epoch + 1
        seconds = time.perf_counter() - self._t0
        ckpt_dir = self.run_dir / "checkpoint"
        ckpt_name = f"epoch-{number:04d}.keras"
        save_model_atomic(self.model, ckpt_dir / ckpt_name)

        rows = [r for r in raw_rows(self.run_dir / "history.csv") if int(r[0]) < number]
        rows.append([number, *(_fmt(logs.get(k)) for k in HISTORY_FIELDS[1:5]), f"{seconds:.2f}"])
        parsed = parse_rows(rows)
        best = best_epoch(parsed, self.cfg.monitor, self.cfg.monitor_maximize)
        pending = None
        if best is not None and best[0] == number:
            pending = f"best-{number:04d}.keras"
            save_model_atomic(self.model, ckpt_dir / pending)
            self.state.update(best_epoch=number, best_value=best[1],
                              best_val_accuracy=parsed[-1]["val_accuracy"], best_model=pending)
        write_csv(self.run_dir / "history.csv", HISTORY_FIELDS, rows)

        previous = self.state.get("checkpoint")
        self.state.update(epoch=number, checkpoint=ckpt_name)
        write_json(ckpt_dir / "state.json", self.state)  # the commit point
        if pending:
            publish_best_model(self.run_dir, self.state)
        if previous and previous != ckpt_name:
            (ckpt_dir / previous).unlink(missing_ok=True)

        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        metrics.update(epoch=number, epoch_seconds=seconds)
        self.tracker.log(metrics)


def publish_best_model(run_dir: Path, state: dict) -> None:
    """Rename the committed best model into model.keras, if it still waits in checkpoint/ (readers
    find it there meanwhile: `inat.rundir.best_model_path`)."""
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


def _find_or_build_cache(splits, image_size: int, cache_root, build: bool):
    found = find_cache(splits, image_size, cache_root)
    if found is None and build:
        try:
            build_cache(splits.root, image_size, cache_root)
        except InatError as exc:  # e.g. scratch is full: slower, but the run still trains
            log.warning("could not build the decoded-image cache (%s); decoding the JPEGs", exc)
            return None
        found = find_cache(splits, image_size, cache_root)
    return found


# ---- run directory bookkeeping ------------------------------------------------------------------


def _prepare_splits(cfg: RunConfig, run_dir: Path, data_root):
    path = run_dir / "splits.json"
    if path.exists():
        # Resume and retraining reuse the saved lists, so the split can never drift.
        return data.Splits.load(path, root=str(data_root) if data_root else None)
    if data_root is None:
        raise InatError(f"{run_dir}: no splits.json here; pass --data ROOT to start a new run")
    splits = data.discover(data_root, seed=cfg.seed, val_fraction=cfg.val_fraction)
    splits = data.drop_bad_images(splits)
    splits.save(path)
    log.info("data: %s", data.describe(splits))
    return splits


def _check_same_config(cfg: RunConfig, run_dir: Path, resuming: bool) -> None:
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


def _remove_stale_temps(run_dir: Path) -> None:
    # A kill -9 during a save leaves its temp file behind, and one before the commit leaves a best
    # model of an epoch that does not count; we hold the run's lock, so no live writer owns any.
    for pattern in (".*.tmp.keras", ".*.tmp"):
        for path in [*run_dir.glob(pattern), *(run_dir / "checkpoint").glob(pattern)]:
            path.unlink(missing_ok=True)
    state = read_json(state_path(run_dir)) if state_path(run_dir).exists() else {}
    for path in (run_dir / "checkpoint").glob("best-*.keras"):
        if path.name != state.get("best_model"):
            path.unlink(missing_ok=True)


def _read_state(run_dir: Path) -> dict | None:
    path = state_path(run_dir)
    if not path.exists():
        return None
    state = read_json(path)
    if not (run_dir / "checkpoint" / state.get("checkpoint", "")).is_file():
        raise InatError(f"{path}: names a checkpoint that is missing; start a new --run-id")
    return state


def _write_run_info(run_dir: Path, cfg: RunConfig, splits, status: str, epochs_done: int, **extra) -> None:
    import tensorflow as tf

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
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_json(run_dir / "run.json", info)


def _previous_info(run_dir: Path) -> dict:
    try:
        return read_json(run_dir / "run.json")
    except InatError:
        return {}


def _finish(run_dir, cfg, splits, state, status) -> TrainResult:
    best = float(state.get("best_val_accuracy", -1.0))
    value = float(state.get("best_value", best if cfg.monitor == "val_accuracy" else math.nan))
    goal = "maximize" if cfg.monitor_maximize else "minimize"
    _write_run_info(
        run_dir, cfg, splits, status=status, epochs_done=state["epoch"],
        best_val_accuracy=best, best_epoch=state.get("best_epoch", 0),
        best={"metric": cfg.monitor, "goal": goal, "epoch": state.get("best_epoch", 0), "value": value},
    )
    return TrainResult(run_dir, state["epoch"], best, state.get("best_epoch", 0), status, value)


def _wandb_id(run_dir: Path) -> str:
    # W&B ids allow [a-z0-9-_]; the run dir name already is unique on this scratch root.
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.name.lower())[:64]


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.6f}"


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """Refuse to train a run directory that another live process is training (e.g. a stale requeue).

    Only EWOULDBLOCK/EAGAIN means the lock is held. A file system without locks answers flock()
    with ENOLCK (NFS without a lock daemon), EOPNOTSUPP/ENOTSUP or ENOSYS (Lustre mounted without
    `flock`/`localflock`): that is said as such, since no other process is involved.
    """
    import errno

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
