"""W&B logging for a run, offline by default.

Compute nodes usually have no internet, so a run logs offline unless the user asked for online
logging with WANDB_MODE=online; WANDB_MODE=disabled turns W&B off. Offline runs land in
RUN/wandb/offline-run-* and are uploaded later with `wandb sync RUN/wandb/offline-run-*`, or while
the run trains: with wandb-osh installed (the `sync` extra), an offline run in the scratch layout
signals after each epoch and at its end, and `inat-jobs sync` uploads it (`inat.wandb_sync`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import wandb_sync

log = logging.getLogger("inat")
PROJECT = "inat-jobs"


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode
    return "offline"


class Tracker:
    """A thin wrapper so the training loop never has to care whether W&B is on."""

    def __init__(self, run: Any | None, run_dir: Path | None = None):
        self.run = run
        self.sync = _sync_signal(run, run_dir)

    @property
    def id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
            if self.sync is not None:  # the finished run (summary, exit status) is now complete on disk
                self.sync()

    def sync_callbacks(self) -> list:
        """A Keras callback that signals the syncer after each epoch, when this run is offline and
        wandb-osh is installed; else none."""
        if self.sync is None:
            return []
        import keras  # lazy: Keras, in the training process only

        signal = self.sync

        class SignalSync(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                signal()

        return [SignalSync()]


def _sync_signal(run: Any | None, run_dir: Path | None) -> wandb_sync.Signal | None:
    if run is None or run_dir is None or not getattr(run, "offline", False) or not wandb_sync.available():
        return None
    command_dir = wandb_sync.command_dir_for(run_dir)
    if command_dir is None:  # a run directory outside the scratch layout: nobody would look there
        return None
    # run.dir is the run's files/ folder; `wandb sync` wants the offline-run-* folder above it.
    return wandb_sync.Signal(Path(run.dir).parent.resolve(), command_dir)


def start(
    run_dir: Path,
    config: dict[str, Any],
    name: str,
    run_id: str | None = None,
    group: str | None = None,
    job_type: str = "train",
    tags: list[str] | None = None,
) -> Tracker:
    active = getattr(sys.modules.get("wandb"), "run", None)
    if active is not None:
        # A sweep agent (W&B's, or ours pre-naming the run) already started this run: log into it.
        active.config.update(config, allow_val_change=True)
        active.define_metric("epoch")
        active.define_metric("*", step_metric="epoch")
        return Tracker(active, run_dir)
    mode = wandb_mode()
    if mode == "disabled":
        return Tracker(None)
    import wandb  # lazy: W&B, only for a run that logs to it

    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            entity=os.environ.get("WANDB_ENTITY") or None,
            dir=str(run_dir),
            name=name,
            id=run_id,
            resume="allow",
            group=group,
            job_type=job_type,
            tags=tags,
            config=config,
            mode=mode,
            settings=wandb.Settings(init_timeout=90, console="off"),
        )
    except Exception as exc:  # W&B must never take a training run down with it
        log.warning("W&B logging is off for this run: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return Tracker(None)
    # Without this W&B plots against its own step counter; we want epochs on the x-axis.
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")
    return Tracker(run, run_dir)
