"""Evaluate a run's best model on the test split (the iNaturalist `val/` folder).

The test split is only ever read here: no training, tuning or early-stopping decision sees it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from . import data
from .config import RunConfig
from .data.cache import find_cache
from .errors import ConfigError, InatError
from .fsutil import write_csv
from .models.common import input_size, load_model
from .rundir import RunDir

log = logging.getLogger("inat")


def evaluate(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    batch_size: int | None = None,
    cache_root: str | os.PathLike | None = None,
) -> dict:
    """Write RUN/test_metrics.json and RUN/predictions.csv; return the metrics.

    With `cache_root`, test images come from a matching decoded-image cache if one is there
    (see `inat.data.cache`; nothing is built for a single pass over the test split).
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected an integer >= 1 (leave it out for the run's own)")
    run_dir = Path(run_dir).resolve()
    model_path = RunDir(Path(run_dir).resolve()).require_model()
    cfg = RunConfig.load(run_dir / "config.yaml")
    splits = data.Splits.load(run_dir / "splits.json", root=str(data_root) if data_root else None)
    model = load_model(model_path)

    size = input_size(cfg)
    found = find_cache(splits, size, cache_root) if cache_root is not None else None
    ds = data.dataset_for(splits, "test", size, batch_size or cfg.batch_size, training=False, cache=found)
    y_true, probs = [], []
    for images, labels in ds:
        probs.append(model.predict_on_batch(images))
        y_true.append(np.asarray(labels))
    if not y_true:
        raise InatError(f"{splits.root}: the test split has no readable images")
    y_true = np.concatenate(y_true).astype(int)
    probs = np.concatenate(probs)
    y_pred = probs.argmax(axis=1)

    metrics = compute_metrics(y_true, y_pred, splits.classes)
    metrics["model"] = cfg.model
    metrics["run"] = run_dir.name
    expected = len(splits.test)
    if metrics["n"] != expected:
        # The input pipeline skips images it cannot decode (and TensorFlow logs each one);
        # say how many so a lower `n` is never a silent surprise.
        log.warning("%d of %d test images could not be decoded and were skipped", expected - metrics["n"], expected)
        metrics["skipped"] = expected - metrics["n"]
    RunDir(run_dir).write("test_metrics.json", metrics)
    _write_predictions(run_dir, splits, y_true, y_pred, probs, aligned=metrics["n"] == expected)
    return metrics


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        per_class[name] = {
            "n": support,
            "accuracy": _ratio(cm[i, i], support),  # recall: the share of this class found
            "precision": _ratio(cm[i, i], predicted),
        }
    return {
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "n": int(cm.sum()),
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),  # rows: true class, columns: predicted class
    }


def format_table(metrics: dict) -> str:
    lines = [f"{'class':<20} {'n':>6} {'accuracy':>9} {'precision':>10}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<20} {row['n']:>6} {row['accuracy']:>9.3f} {row['precision']:>10.3f}")
    lines.append(f"{'overall':<20} {metrics['n']:>6} {metrics['accuracy']:>9.3f}")
    return "\n".join(lines)


def _write_predictions(run_dir, splits, y_true, y_pred, probs, aligned: bool) -> None:
    paths = [p for p, _ in splits.test] if aligned else [""] * len(y_true)
    rows = [
        [path, splits.classes[t], splits.classes[p], f"{probs[i, p]:.4f}"]
        for i, (path, t, p) in enumerate(zip(paths, y_true, y_pred))
    ]
    write_csv(run_dir / "predictions.csv", ["path", "true", "predicted", "confidence"], rows)


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else 0.0
