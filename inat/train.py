"""Train one model into one run directory, resumably.

`train()` is what `inat-jobs train`, every sweep trial and every retraining job call. A run directory
is self-describing (see `inat.rundir.RUN_FILES`); calling `train()` again on the same directory after
a crash, a kill -9, a time-out or a preemption resumes at the last finished epoch, so every epoch
appears exactly once in history.csv.

Commit order at the end of each epoch (the state file is the commit point):
  1. checkpoint/epoch-NNNN.keras   model + optimizer state after this epoch
  2. checkpoint/best-NNNN.keras    if this epoch is now the best by cfg.monitor (`inat.rundir.best_epoch`)
  3. history.csv                    rewritten with this epoch's row
  4. checkpoint/state.json          names the checkpoint of step 1 and the best epoch: now it counts
  5. model.keras                    the file of step 2, renamed into place
A kill before step 4 leaves state.json, history (trimmed on resume) and model.keras all at the
previous epoch; the resume deletes the uncommitted files and redoes the epoch from the previous
checkpoint, drawing the same random numbers (`inat.seeding`). A kill between steps 4 and 5 (one
rename) leaves the committed best waiting in checkpoint/; the next train() of the run renames it.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import keras

from . import data, devices, rundir, seeding, tracking
from .rundir import RunDir
from .config import RunConfig
from .data.cache import find_cache
from .data.cache_build import build_cache
from .errors import InatError
from .fsutil import make_dir
from .models.common import compile_model, input_size, load_model, make_model
from .models.weights import resolve_weights

log = logging.getLogger("inat")


def _versions() -> dict:
    """Recorded in run.json: the Keras backend the run trained on, and the libraries' versions
    (read from the installed packages: TensorFlow is not imported for it under another backend)."""
    found = {"keras": keras.__version__, "keras_backend": keras.backend.backend(),
             "python": platform.python_version()}  # fmt: skip
    for key, dists in (("tensorflow", ("tensorflow", "tensorflow-cpu")), ("jax", ("jax",)), ("jaxlib", ("jaxlib",))):
        for dist in dists:
            try:
                found[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


VERSIONS = _versions()


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
    replicas: int = 1,
) -> TrainResult:
    """Train `cfg` into `run_dir`, resuming if the directory holds an unfinished run of the same config.

    `cache_root` (normally `layout.cache_dir(SCRATCH)`) turns on the decoded-image cache: batches
    come from the cache of this dataset at this input size when one matches the files on disk;
    if none does and `build_cache` is true, it is built first (once, however many runs start
    together; see `inat.data.cache_build`). Without `cache_root` the JPEGs are decoded every epoch.
    `replicas` > 1 trains over that many GPUs at once (`inat.devices`).

    A new run directory that fails before its first epoch is committed (bad data, missing weights,
    a full disk) is removed again: a failed start leaves nothing behind to mistake for a run.
    """
    run_dir = Path(run_dir).resolve()
    run = RunDir(run_dir)
    if not run.state_path.exists():
        resolve_weights(cfg)  # a missing weights file fails here, before anything is written
    created = not run_dir.exists()
    make_dir(run_dir)
    try:
        with run.exclusive():
            return _train_locked(
                cfg, run_dir, data_root, callbacks, wandb_group, wandb_job_type, verbose, cache_root, build_cache,
                replicas,
            )
    except Exception:
        if created and not run.state_path.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train_locked(cfg, run_dir, data_root, callbacks, wandb_group, wandb_job_type, verbose, cache_root, build_cache,
                  replicas):
    run = RunDir(run_dir)
    run.remove_stale_temps()
    state = run.read_state()
    run.check_same_config(cfg, resuming=state is not None)
    splits = _prepare_splits(cfg, run, data_root)
    run.save_config(cfg)
    seeding.deterministic_from_env()
    # A resumed run keeps the precision it started with (a requeue may land on another GPU model),
    # or its checkpoint's optimizer would not match the one compiled for it.
    started_with = (run.info().get("compute") or {}).get("precision") if state is not None else None
    compute = devices.place(cfg, replicas, precision=started_with)
    info = {"versions": VERSIONS, "compute": compute.record()}

    keras.utils.set_random_seed(cfg.seed)
    with compute.scope():
        if state is not None:
            run.publish_best_model(state)
            start_epoch = state["epoch"]
            # The checkpoint brings its layers' dtypes and its optimizer (with a float16 loss scale).
            model = load_model(run.checkpoint_dir / state["checkpoint"])
            model.jit_compile = compute.jit_compile
            log.info("resuming %s after epoch %d of %d", run_dir.name, start_epoch, cfg.epochs)
        else:
            start_epoch = 0
            model = make_model(cfg, len(splits.classes), synchronized=compute.replicas > 1)
            compile_model(model, cfg, jit_compile=compute.jit_compile)
    run.trim_history(start_epoch)

    run.write_info(cfg, splits, status="running", epochs_done=start_epoch, **info)
    if state is not None and start_epoch >= cfg.epochs:
        log.info("%s already finished all %d epochs", run_dir.name, cfg.epochs)
        return _finish(run, cfg, splits, state, "completed", info)

    size = input_size(cfg)
    cache = _find_or_build_cache(splits, size, cache_root, build_cache) if cache_root is not None else None
    val_ds = data.dataset_for(splits, "val", size, cfg.batch_size, training=False, cache=cache)

    tracker = tracking.start(
        run_dir,
        cfg.to_dict(),
        name=run_dir.name,
        run_id=(state or {}).get("wandb_id") or rundir.wandb_id(run_dir),
        group=wandb_group,
        job_type=wandb_job_type,
    )
    recorder = RunRecorder(run, cfg, tracker, state)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    progress = [EpochProgbar(cfg.epochs)] if verbose else []
    signals = tracker.sync_callbacks()  # after the epoch's commit and W&B log: wandb-osh's syncer may upload it
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
                    callbacks=[recorder, *callbacks, *progress, *signals],
                    verbose=verbose,
                    shuffle=False,  # train_ds shuffles itself; Keras warns when asked to shuffle a Dataset
                )
                if model.stop_training:  # a callback (e.g. a sweep's pruner) asked to stop
                    break
    except BaseException:
        tracker.finish(exit_code=1)
        run.write_info(cfg, splits, status="failed", epochs_done=recorder.state["epoch"], **info)
        raise
    status = "completed" if recorder.state["epoch"] >= cfg.epochs else "stopped"
    tracker.summary({"best_val_accuracy": recorder.state["best_val_accuracy"], "best_epoch": recorder.state["best_epoch"],
                     f"best_{cfg.monitor}": recorder.state.get("best_value"), "status": status})
    tracker.finish()
    return _finish(run, cfg, splits, recorder.state, status, info)


class EpochProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, numbering epochs out of the run's total, not out of one fit() call."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})


class RunRecorder(keras.callbacks.Callback):
    """Checkpoint, best model, history and W&B log at the end of every epoch (see module doc)."""

    def __init__(self, run: RunDir, cfg: RunConfig, tracker, state: dict | None):
        super().__init__()
        self.run = run
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
        ckpt_dir = self.run.checkpoint_dir
        ckpt_name = f"epoch-{number:04d}.keras"
        rundir.save_model_atomic(self.model, ckpt_dir / ckpt_name)

        rows = [r for r in self.run.raw_history() if int(r[0]) < number]
        values = [rundir.history_value(logs.get(k)) for k in rundir.HISTORY_FIELDS[1:5]]
        rows.append([number, *values, f"{seconds:.2f}"])
        parsed = rundir.parse_rows(rows)
        best = rundir.best_epoch(parsed, self.cfg.monitor, self.cfg.monitor_maximize)
        pending = None
        if best is not None and best[0] == number:
            pending = f"best-{number:04d}.keras"
            rundir.save_model_atomic(self.model, ckpt_dir / pending)
            self.state.update(best_epoch=number, best_value=best[1],
                              best_val_accuracy=parsed[-1]["val_accuracy"], best_model=pending)
        self.run.write_history(rows)

        previous = self.state.get("checkpoint")
        self.state.update(epoch=number, checkpoint=ckpt_name)
        self.run.commit(self.state)
        if pending:
            self.run.publish_best_model(self.state)
        if previous and previous != ckpt_name:
            (ckpt_dir / previous).unlink(missing_ok=True)

        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        metrics.update(epoch=number, epoch_seconds=seconds)
        self.tracker.log(metrics)


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


def _prepare_splits(cfg: RunConfig, run: RunDir, data_root):
    path = run.file("splits.json")
    if path.exists():
        # Resume and retraining reuse the saved lists, so the split can never drift.
        return data.Splits.load(path, root=str(data_root) if data_root else None)
    if data_root is None:
        raise InatError(f"{run.path}: no splits.json here; pass --data ROOT to start a new run")
    splits = data.discover(data_root, seed=cfg.seed, val_fraction=cfg.val_fraction)
    splits = data.drop_bad_images(splits)
    splits.save(path)
    log.info("data: %s", data.describe(splits))
    return splits


def _finish(run: RunDir, cfg, splits, state, status, info: dict) -> TrainResult:
    best = float(state.get("best_val_accuracy", -1.0))
    value = float(state.get("best_value", best if cfg.monitor == "val_accuracy" else math.nan))
    goal = "maximize" if cfg.monitor_maximize else "minimize"
    run.write_info(
        cfg, splits, status=status, epochs_done=state["epoch"],
        **info, best_val_accuracy=best, best_epoch=state.get("best_epoch", 0),
        best={"metric": cfg.monitor, "goal": goal, "epoch": state.get("best_epoch", 0), "value": value},
    )
    return TrainResult(run.path, state["epoch"], best, state.get("best_epoch", 0), status, value)


