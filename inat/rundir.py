"""A run's history.csv and its commit point, and the one rule that picks the run's best epoch.

Light on purpose (no TensorFlow, no Keras): the sweep status, the report and the collector read
runs with it on a login node, and `train()` writes them with it, so both sides agree by construction
on which epoch is the best one and what its value is.

history.csv holds one row per finished epoch (HISTORY_FIELDS, values with 6 decimals). After a kill
it may hold one row more than checkpoint/state.json has committed; `committed_rows` leaves it out.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

from .fsutil import read_json, write_csv

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
