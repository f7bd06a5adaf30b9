"""Training: the run directory, resume after a crash, W&B offline files, and real learning."""

from __future__ import annotations

import csv
import json

import keras
import pytest

from conftest import SHARED_DATA, require
from inat.config import RunConfig
from inat.errors import InatError
from inat.rundir import RunDir
from inat.train import train


def _epochs(run_dir):
    return [int(row["epoch"]) for row in RunDir(run_dir).history()]


def test_run_directory_has_everything(trained_run, tiny_cfg):
    for name in ("config.yaml", "run.json", "splits.json", "history.csv", "model.keras", "checkpoint/state.json"):
        assert (trained_run / name).exists(), name
    assert RunConfig.load(trained_run / "config.yaml") == tiny_cfg
    with open(trained_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 2
    state = json.loads((trained_run / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2
    # Only the latest checkpoint is kept; no temp files are left behind.
    assert [p.name for p in (trained_run / "checkpoint").glob("*.keras")] == ["epoch-0002.keras"]
    assert not list(trained_run.rglob("*.tmp*"))
    model = keras.saving.load_model(trained_run / "model.keras", compile=False)
    assert model.output_shape == (None, 10)


class _Crash(keras.callbacks.Callback):
    def __init__(self, after_epoch):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after_epoch:
            raise RuntimeError("simulated crash")


class _Starts(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begun = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch + 1)


def test_resume_continues_after_the_last_finished_epoch(tmp_path, demo_data, tiny_cfg):
    cfg = tiny_cfg.replace(epochs=4)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, run_dir, demo_data, callbacks=[_Crash(after_epoch=2)], verbose=0)
    assert _epochs(run_dir) == [1, 2]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"

    starts = _Starts()
    result = train(cfg, run_dir, demo_data, callbacks=[starts], verbose=0)
    assert starts.begun == [3, 4]
    assert _epochs(run_dir) == [1, 2, 3, 4]
    assert result.status == "completed" and result.epochs_done == 4

    again = _Starts()
    train(cfg, run_dir, demo_data, callbacks=[again], verbose=0)
    assert again.begun == []  # a finished run is not retrained


def test_resume_trims_an_uncommitted_history_row(tmp_path, demo_data, tiny_cfg):
    # A kill after history.csv was written but before state.json committed the epoch.
    run_dir = tmp_path / "run"
    train(tiny_cfg.replace(epochs=1), run_dir, demo_data, verbose=0)
    cfg = tiny_cfg.replace(epochs=1)
    history = run_dir / "history.csv"
    history.write_text(history.read_text() + "2,1,0.5,1,0.5,1.0\n")
    train(cfg.replace(epochs=1), run_dir, demo_data, verbose=0)
    assert _epochs(run_dir) == [1]


def test_a_different_config_is_refused(trained_run, tiny_cfg, demo_data):
    with pytest.raises(InatError, match="different config.*dropout"):
        train(tiny_cfg.replace(dropout=0.4), trained_run, demo_data, verbose=0)


def test_a_new_run_needs_data(tmp_path, tiny_cfg):
    with pytest.raises(InatError, match="pass --data"):
        train(tiny_cfg, tmp_path / "run", None, verbose=0)


def test_a_new_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path, tiny_cfg):
    with pytest.raises(InatError, match="dataset root does not exist"):
        train(tiny_cfg, tmp_path / "runs" / "new", tmp_path / "no-data", verbose=0)
    assert not (tmp_path / "runs" / "new").exists()


def test_resuming_needs_no_weights_file(tmp_path, tiny_cfg):
    """The checkpoint holds the weights: a moved weights file must not stop a resume (only a new run)."""
    cfg = tiny_cfg.replace(model="resnet50", weights=str(tmp_path / "moved.h5"))
    with pytest.raises(InatError, match="moved.h5 not found"):
        train(cfg, tmp_path / "new", None, verbose=0)
    run_dir = tmp_path / "started"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "checkpoint" / "state.json").write_text('{"epoch": 1, "checkpoint": "epoch-0001.keras"}')
    with pytest.raises(InatError, match="names a checkpoint that is missing"):  # got past the weights
        train(cfg, run_dir, None, verbose=0)
    assert (run_dir / "checkpoint" / "state.json").exists()  # a started run is never removed


def test_a_run_in_use_is_refused(tmp_path, demo_data, tiny_cfg):
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(InatError, match="another process is training"):
            train(tiny_cfg, run_dir, demo_data, verbose=0)


def test_wandb_offline_run_files(tmp_path, demo_data, tiny_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    train(tiny_cfg.replace(epochs=1), run_dir, demo_data, verbose=0)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb"))


@pytest.mark.slow
def test_learns_real_photos(tmp_path):
    """flowers5 (5 classes, chance 20 %) at 64 px: the scratch CNN must reach >= 40 % test accuracy."""
    from inat.evaluate import evaluate

    root = SHARED_DATA / "flowers5"
    require(root.is_dir(), f"{root} is missing")
    cfg = RunConfig.load(
        None,
        [
            "image_size=64", "epochs=12", "batch_size=32", "learning_rate=0.001", "activation=relu",
            "batch_norm=true", "filt_org=[16,32,32,64,64]", "num_dense=64", "dropout=0.3", "data_augment=true",
        ],
    )
    run_dir = tmp_path / "flowers"
    result = train(cfg, run_dir, root, verbose=0)
    metrics = evaluate(run_dir)
    print(f"flowers5: best val_accuracy {result.best_val_accuracy:.3f}, test accuracy {metrics['accuracy']:.3f}")
    assert metrics["n"] == 150
    assert metrics["accuracy"] >= 0.40
