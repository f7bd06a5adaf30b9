"""The one record of a run: `RunDir` owns a run directory's files (RUN_FILES) and every read and write
of them, the history parser, the table of states (STATES) and the rule for the best epoch.

Light on purpose (no TensorFlow, no Keras): the sweep status, the reports and the collector read
runs with it on a login node, and `train()` writes them with it, so both sides agree by construction
on which epoch is the best one and what its value is. Sweep trials are run directories too.

history.csv holds one row per finished epoch (HISTORY_FIELDS, values with 6 decimals). After a kill
it may hold one row more than checkpoint/state.json has committed; `committed_history` leaves it
out. The order in which train() commits an epoch is in `inat.train`; the bookkeeping it does in the
directory (its lock, state, run.json, stale temp files, the best model's rename) is here. run.json
is read-modify-written under a short flock (`update_info`, `write_info`), so an agent marking a trial
and the process training it cannot lose each other's fields.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import time
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .errors import InatError
from .fsutil import os_reason, read_json, run_lock, short_lock, write_csv, write_json

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


# run.json status -> the state sweep-status, reports and collect show. "interrupted": a trial
# `sweep-stop --now` cancelled, which a later agent resumes.
STATES = {"completed": "finished", "pruned": "pruned", "stopped": "pruned", "failed": "failed",
          "running": "running", "interrupted": "interrupted"}


def parse_rows(rows: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    return [{k: float(v) if v not in ("", None) else math.nan for k, v in zip(HISTORY_FIELDS, r)} for r in rows]


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


class RunDir:
    """One run directory: every read and write of its files (RUN_FILES) goes through here."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ---- where -------------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """RUN/name for a name of RUN_FILES (or the other records: attempts.json, retrain.json)."""
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    @property
    def state_path(self) -> Path:
        return self.checkpoint_dir / "state.json"

    # ---- reading -----------------------------------------------------------------------------------

    def read(self, name: str, default=None):
        """A JSON record of the run (run.json, test_metrics.json, attempts.json, ...), or `default`."""
        path = self.file(name)
        return read_json(path) if path.is_file() else default

    def info(self) -> dict:
        """run.json, or {} when there is none yet (or it is unreadable: a reader must not fail on it)."""
        try:
            return self.read("run.json", {})
        except InatError:
            return {}

    def state_name(self) -> str:
        """The run's state as sweep-status, the reports and collect show it (STATES)."""
        status = self.info().get("status", "running")
        return STATES.get(status, status)

    def config(self) -> RunConfig:
        return RunConfig.load(self.file("config.yaml"))

    def has_config(self) -> bool:
        return self.file("config.yaml").is_file()

    def committed_epochs(self) -> int:
        """Epochs past the commit point (checkpoint/state.json): where the next train() resumes."""
        return int(read_json(self.state_path).get("epoch", 0)) if self.state_path.exists() else 0

    def raw_history(self) -> list[list[str]]:
        path = self.file("history.csv")
        if not path.exists():
            return []
        with open(path, newline="", encoding="utf-8") as fh:
            return [row for row in list(csv.reader(fh))[1:] if row]

    def history(self) -> list[dict[str, float]]:
        """Every row of history.csv, committed or not (a kill may leave one uncommitted row)."""
        return parse_rows(self.raw_history())

    def committed_history(self) -> list[dict[str, float]]:
        """The rows of the epochs the commit point counts (all rows for a run without a state file)."""
        rows = self.history()
        if not self.state_path.exists():
            return rows
        done = self.committed_epochs()
        return [r for r in rows if int(r["epoch"]) <= done]

    def best(self, monitor: str | None = None, maximize: bool | None = None) -> tuple[int, float] | None:
        """The committed best epoch and its value, by `monitor` (default: the run's own config)."""
        if monitor is None:
            cfg = self.config()
            monitor, maximize = cfg.monitor, cfg.monitor_maximize
        return best_epoch(self.committed_history(), monitor, True if maximize is None else maximize)

    def best_model_path(self) -> Path:
        """The committed best model: RUN/model.keras, or, for the one rename after a commit that a
        kill can interrupt, the checkpoint/best-NNNN.keras that state.json names and that still waits."""
        name = read_json(self.state_path).get("best_model") if self.state_path.exists() else None
        if name and (self.checkpoint_dir / name).is_file():
            return self.checkpoint_dir / name
        return self.file("model.keras")

    def require_model(self) -> Path:
        """The run's model, or the one-line error; checked before a job is submitted for the run, too."""
        if not self.path.is_dir():
            raise InatError(f"{self.path}: run directory not found")
        model_path = self.best_model_path()
        if not model_path.is_file():
            raise InatError(f"{self.path}: no model.keras here; train it first with `inat-jobs train`")
        return model_path

    # ---- writing -----------------------------------------------------------------------------------

    def write(self, name: str, data) -> None:
        """A JSON record, whole or not at all (temp file + rename)."""
        write_json(self.file(name), data)

    def write_history(self, rows: Sequence[Sequence]) -> None:
        write_csv(self.file("history.csv"), HISTORY_FIELDS, rows)

    def trim_history(self, epochs_done: int) -> None:
        rows = self.raw_history()
        kept = [r for r in rows if int(r[0]) <= epochs_done]
        if len(kept) != len(rows):
            self.write_history(kept)

    def commit(self, state: dict) -> None:
        """Write checkpoint/state.json: the commit point of an epoch (see `inat.train`)."""
        write_json(self.state_path, state)

    def update_info(self, **fields) -> dict:
        """Read-modify-write of run.json, safe against a concurrent writer (e.g. an agent marking a
        trial that another process still trains): the two take turns under an flock of .run.json.lock."""
        with short_lock(self.file(".run.json.lock")):
            info = self.info() or {"run_id": self.name}
            info.update(fields)
            self.write("run.json", info)
        return info

    # ---- what train() does in the directory --------------------------------------------------------

    def exclusive(self):
        """Refuse to train a run directory that another live process is training (e.g. a stale requeue)."""
        return run_lock(self.file(".lock"), self.path)

    def read_state(self) -> dict | None:
        """checkpoint/state.json, the commit point, or None for a run that has not committed an epoch."""
        if not self.state_path.exists():
            return None
        state = read_json(self.state_path)
        if not (self.checkpoint_dir / state.get("checkpoint", "")).is_file():
            raise InatError(f"{self.state_path}: names a checkpoint that is missing; start a new --run-id")
        return state

    def check_same_config(self, cfg: RunConfig, resuming: bool) -> None:
        """A resumed run must be trained with the config it was started with."""
        if not (resuming and self.has_config()):
            return
        old = self.config()
        if old != cfg:
            changed = sorted(k for k, v in cfg.to_dict().items() if old.to_dict()[k] != v)
            raise InatError(
                f"{self.path}: already holds a run with a different config ({', '.join(changed)} differ); "
                "use a new --run-id, or the same config to resume"
            )

    def save_config(self, cfg: RunConfig) -> None:
        cfg.save(self.file("config.yaml"))

    def remove_stale_temps(self) -> None:
        """Delete what killed writers left behind (call it holding the run's lock)."""
        # A kill -9 during a save leaves its temp file behind, and one before the commit leaves a best
        # model of an epoch that does not count; we hold the run's lock, so no live writer owns any.
        for pattern in (".*.tmp.keras", ".*.tmp"):
            for path in [*self.path.glob(pattern), *self.checkpoint_dir.glob(pattern)]:
                path.unlink(missing_ok=True)
        state = read_json(self.state_path) if self.state_path.exists() else {}
        for path in self.checkpoint_dir.glob("best-*.keras"):
            if path.name != state.get("best_model"):
                path.unlink(missing_ok=True)

    def write_info(self, cfg: RunConfig, splits, status: str, epochs_done: int, versions: dict, **extra) -> None:
        """run.json: what the run is, how far it got, where and with which library versions."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with short_lock(self.file(".run.json.lock")):
            started = self.info().get("started") or now
            self.write("run.json", {
                "run_id": self.name,
                "started": started,
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
                "updated": now,
                **extra,
            })


    def publish_best_model(self, state: dict) -> None:
        """Rename the committed best model into model.keras, if it still waits in checkpoint/ (readers
        find it there meanwhile: `best_model_path`)."""
        name = state.get("best_model")
        if name and (self.checkpoint_dir / name).is_file():
            os.replace(self.checkpoint_dir / name, self.file("model.keras"))


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
