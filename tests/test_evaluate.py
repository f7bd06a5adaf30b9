"""Testing a run: metrics arithmetic and the files `inat-jobs test` writes."""

import csv
import json

import numpy as np
import pytest

from inat.errors import InatError
from inat.evaluate import compute_metrics, evaluate, format_table


def test_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    m = compute_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["a"] == {"n": 2, "accuracy": 0.5, "precision": 0.5}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert "overall" in format_table(m)


def test_evaluate_writes_metrics_and_predictions(trained_run):
    metrics = evaluate(trained_run)
    saved = json.loads((trained_run / "test_metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert {"accuracy", "per_class", "confusion_matrix", "n", "classes"} <= set(saved)
    splits = json.loads((trained_run / "splits.json").read_text())
    assert saved["n"] == len(splits["test"]) == 60
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == saved["n"]
    assert saved["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert cm.sum(axis=1).tolist() == [6] * 10
    with open(trained_run / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60
    assert all(r["path"].startswith("val/") for r in rows)
    assert sum(r["true"] == r["predicted"] for r in rows) == np.trace(cm)


def test_evaluate_needs_a_model(tmp_path):
    with pytest.raises(InatError, match="no model.keras"):
        evaluate(tmp_path)
    with pytest.raises(InatError, match="not found"):
        evaluate(tmp_path / "nope")
