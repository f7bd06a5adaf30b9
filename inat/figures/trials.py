"""What a sweep's trial run directories say, for its report and plots: one `Trial` per directory.

Everything is read from SWEEP/trials/<trial>/ (config.yaml, run.json, history.csv), which both sweep
backends write, so the report needs neither the W&B server nor the Optuna storage and works
offline, on a copy, or while the sweep is still running. A trial's best epoch here is the one its
model.keras holds (by the trial's `monitor`, which a sweep sets to its metric: `inat.rundir.RunDir.best`),
and `best_val_accuracy` is that epoch's val_accuracy.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


from ..rundir import RunDir

# The first columns of trials.csv; then every config key.
LEAD = ["trial", "state", "epochs_done", "best_val_accuracy", "best_epoch", "started"]


@dataclass
class Trial:
    name: str
    state: str
    epochs: int
    best_val_accuracy: float | None
    best_epoch: int | None
    started: dt.datetime
    config: dict[str, Any] = field(default_factory=dict)

    def row(self, keys: list[str]) -> list[Any]:
        acc = "" if self.best_val_accuracy is None else f"{self.best_val_accuracy:.6f}"
        started = self.started.isoformat(timespec="seconds")
        lead = [self.name, self.state, self.epochs, acc, self.best_epoch or "", started]
        # Lists as YAML ("[3, 5, 5, 7, 7]") so that a row pastes straight into --set key=value.
        return lead + [yaml.safe_dump(v, default_flow_style=True).strip() if isinstance(v, list) else v
                       for v in (self.config.get(k, "") for k in keys)]


def read_trials(sweep_dir: str | os.PathLike) -> list[Trial]:
    """One Trial per run directory under SWEEP/trials/, oldest first (trials without a config skipped)."""
    trials_dir = Path(sweep_dir) / "trials"
    dirs = sorted(trials_dir.iterdir()) if trials_dir.is_dir() else []
    trials = [read_trial(d) for d in dirs if (d / "config.yaml").is_file()]
    return sorted(trials, key=lambda t: (t.started, t.name))


def read_trial(run_dir: Path) -> Trial:
    run = RunDir(run_dir)
    info, history = run.info(), run.committed_history()
    config = run.config()
    best = run.best(config.monitor, config.monitor_maximize)
    at = next((r for r in history if best and int(r["epoch"]) == best[0]), {})
    val_acc = at.get("val_accuracy", math.nan)
    return Trial(run.name, run.state_name(), len(history), None if math.isnan(val_acc) else val_acc,
                 best[0] if best else None, started_time(run_dir, info, history), config.to_dict())


def started_time(run_dir: Path, info: dict, history: list[dict] | None = None) -> dt.datetime:
    """When the trial started, best source first:
    1. run.json's `started`, if the writer recorded one;
    2. run.json's `updated`, which train() writes when training starts (status "running") and when
       it ends (less the seconds of the epochs in history.csv, then): file contents, so it
       survives a copy, unlike mtimes (`cp -r` and `scp -r` reset them);
    3. the mtime of splits.json (written once, when training starts; config.yaml is rewritten on
       every resume), else of the folder.
    """
    for key in ("started", "created"):
        when = _parse_time(info.get(key))
        if when is not None:
            return when
    updated = _parse_time(info.get("updated"))
    if updated is not None:
        if info.get("status", "running") == "running":
            return updated
        seconds = [r.get("seconds", math.nan) for r in history or []]
        return updated - dt.timedelta(seconds=sum(x for x in seconds if not math.isnan(x)))
    for name in ("splits.json", "config.yaml"):
        if (run_dir / name).is_file():
            return dt.datetime.fromtimestamp((run_dir / name).stat().st_mtime).astimezone()
    return dt.datetime.fromtimestamp(run_dir.stat().st_mtime).astimezone()


def _parse_time(value) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone()
    except ValueError:
        return None


def swept_keys(sweep_dir: Path, trials: list[Trial]) -> list[str]:
    """The sweep file's non-constant parameters, else the config keys whose value varies across trials."""
    keys: list[str] = []
    spec = Path(sweep_dir) / "sweep.yaml"
    if spec.is_file():
        try:
            params = (yaml.safe_load(spec.read_text(encoding="utf-8")) or {}).get("parameters") or {}
        except (yaml.YAMLError, AttributeError):
            params = {}
        keys = [k for k, p in params.items() if not (isinstance(p, dict) and "value" in p)]
    if not keys and trials:
        keys = [k for k in trials[0].config if len({display(t.config.get(k)) for t in trials}) > 1]
    known = set(trials[0].config) if trials else set()
    return [k for k in keys if k in known]


def display(value: Any) -> str | float | int | bool:
    """Lists as '3-5-5-7-7' (one short label per filter organisation); other values as they are."""
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return value
