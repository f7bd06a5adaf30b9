"""The model kept is the model ranked: a val_loss sweep end to end, and the warning for a sweep that
ranks on the training set."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from conftest import REPO, cli, run_cli
from inat.config import RunConfig
from inat.fsutil import read_json
from inat.rundir import RunDir


def _val_metrics(run_dir):
    """model.keras of `run_dir` evaluated again on its val split."""
    import keras

    from inat import data

    cfg = RunConfig.load(run_dir / "config.yaml")
    splits = data.Splits.load(run_dir / "splits.json")
    val = data.dataset_for(splits, "val", cfg.image_size, cfg.batch_size, training=False)
    model = keras.saving.load_model(run_dir / "model.keras")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        return model.evaluate(val, verbose=0, return_dict=True)


@pytest.mark.slow
def test_a_val_loss_sweep_ranks_and_keeps_the_lowest_val_loss_epoch(tmp_path):
    from inat.data.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train_per_class=8, n_test_per_class=2)
    sweep = tmp_path / "val_loss.yaml"
    sweep.write_text(
        "method: random\nmetric: {name: val_loss, goal: minimize}\n"
        "parameters:\n"
        # 0.03 overshoots: val_loss climbs again while val_accuracy wanders, so the lowest-val_loss
        # epoch and the highest-val_accuracy epoch come apart in some trials
        "  learning_rate: {values: [0.03, 0.01, 0.003]}\n"
        "  dropout: {distribution: uniform, min: 0.0, max: 0.4}\n"
    )
    scratch = tmp_path / "scratch"
    launched = run_cli(
        "launch-sweep", "--sweep", str(sweep), "--cluster", "local", "--agents", "2", "--trials-per-agent", "3",
        "--data", str(data), "--out", str(scratch), "--wait", "--json",
        "--set", "epochs=5", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set", "num_dense=8",
        "--set", "batch_size=16",
    )
    assert launched.returncode == 0, launched.stderr
    sweep_id = json.loads(launched.stdout)["sweep_id"]
    status = cli("sweep-status", sweep_id, "--out", str(scratch), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    trials_dir = scratch / "sweeps" / sweep_id / "trials"
    assert sum(report["counts"].values()) == 6 and report["counts"].get("finished") == 6

    lowest, apart = {}, 0
    for t in report["trials"]:
        run = trials_dir / t["trial"]
        rows = RunDir(run).committed_history()
        epoch = min(rows, key=lambda r: (r["val_loss"], r["epoch"]))
        lowest[t["trial"]] = epoch["val_loss"]
        best = read_json(run / "run.json")["best"]
        assert best == {"metric": "val_loss", "goal": "minimize", "epoch": int(epoch["epoch"]),
                        "value": epoch["val_loss"]}, (t["trial"], best)
        assert t["value"] == epoch["val_loss"] and t["best_epoch"] == int(epoch["epoch"])
        assert RunConfig.load(run / "config.yaml").monitor == "val_loss"
        top_acc = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
        apart += int(top_acc["epoch"]) != int(epoch["epoch"])
    first = min(lowest, key=lambda k: (lowest[k], k))
    assert report["best"]["trial"] == first and report["best"]["value"] == lowest[first]
    assert report["best"]["metric"] == "val_loss"

    got = _val_metrics(trials_dir / first)
    print(f"\n{apart} of 6 trials had their lowest val_loss and highest val_accuracy at different epochs; "
          f"trial {first}: recorded val_loss {lowest[first]:.6f}, its model.keras gives {got['loss']:.6f}")
    assert math.isclose(got["loss"], lowest[first], abs_tol=1e-5)
    # the best config retrains with the sweep's ranking
    assert RunConfig.load(report["best"]["config_path"]).monitor == "val_loss"


def test_a_sweep_on_a_training_metric_warns_at_launch(tmp_path):
    from inat.data.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train_per_class=2, n_test_per_class=1)
    sweep = tmp_path / "train_acc.yaml"
    sweep.write_text("method: random\nmetric: {name: accuracy, goal: maximize}\nrun_cap: 1\n"
                     "parameters:\n  dropout: {values: [0.1]}\n")
    result = cli("launch-sweep", "--sweep", str(sweep), "--cluster", "local", "--agents", "1",
                 "--trials-per-agent", "1", "--data", str(data), "--out", str(tmp_path / "s"), "--wait",
                 "--set", "epochs=1", "--set", "image_size=32", "--set", "filt_org=[4,4,4,4,4]",
                 "--set", "num_dense=4")
    assert result.returncode == 0, result.stderr
    warning = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "metric accuracy is measured on the training set" in warning[0], result.stderr
    assert "val_accuracy" in warning[0]
    quiet = tmp_path / "val.yaml"
    quiet.write_text(sweep.read_text().replace("name: accuracy", "name: val_accuracy"))
    again = cli("launch-sweep", "--sweep", str(quiet), "--cluster", "local", "--agents", "1",
                "--trials-per-agent", "1", "--data", str(data), "--out", str(tmp_path / "s"), "--wait",
                "--set", "epochs=1", "--set", "image_size=32", "--set", "filt_org=[4,4,4,4,4]",
                "--set", "num_dense=4")
    assert again.returncode == 0 and "warning:" not in again.stderr, again.stderr


@pytest.mark.parametrize("text, fragment", [
    ("method: random\nparameters:\n  monitor: {values: [val_loss]}\n", "parameters.monitor: set by the sweep's metric"),
])
def test_a_sweep_cannot_sweep_the_ranking_keys(tmp_path, text, fragment):
    from inat.errors import ConfigError
    from inat.sweep.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_spec(path)
    ok = tmp_path / "ok.yaml"
    ok.write_text("method: random\nparameters:\n  dropout: {values: [0.1]}\n")
    with pytest.raises(ConfigError, match="keep their model by the sweep's metric"):
        load_spec(ok).check_overrides({"monitor": "loss"})
