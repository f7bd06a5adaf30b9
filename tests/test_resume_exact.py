"""A resumed run is the run that was not interrupted: same history, same weights.

Every random stream (file order, augmentation, dropout) is drawn from (seed, epoch) (inat.seeding),
and INAT_DETERMINISTIC=1 turns on TensorFlow's op determinism, so a run SIGKILLed after epoch 2 and
resumed must end where the unbroken run ends. Augmentation and dropout are on, so each stream is
exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from inat.rundir import RunDir
from inat.seeding import epoch_seed, reseed_model

EPOCHS = 4
TOL = 1e-6
SETTINGS = [
    f"epochs={EPOCHS}", "image_size=32", "filt_org=[8,8,16,16,16]", "num_dense=16", "batch_size=16",
    "learning_rate=0.003", "activation=relu", "data_augment=true", "dropout=0.3",
]


def _cmd(data: Path, out: Path, run_id: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "jobs", "train", "--data", str(data), "--out", str(out), "--run-id", run_id,
            "--no-cache", *sets]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "INAT_DETERMINISTIC": "1"}


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.mark.slow
def test_a_run_killed_after_epoch_2_and_resumed_equals_the_unbroken_run(tmp_path, demo_data):
    whole = subprocess.run(_cmd(demo_data, tmp_path, "whole"), env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(_cmd(demo_data, tmp_path, "killed"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if RunDir(killed).committed_epochs() >= 2:
                break
        except Exception:  # state.json mid-rename: poll again
            pass
        time.sleep(0.002)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = RunDir(killed).committed_epochs()
    assert 2 <= at_kill < EPOCHS, f"the kill must land after epoch 2 and before the end (at {at_kill})"

    resumed = subprocess.run(_cmd(demo_data, tmp_path, "killed"), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming killed after epoch {at_kill} of {EPOCHS}" in resumed.stderr

    a, b = RunDir(tmp_path / "runs" / "whole").history(), RunDir(killed).history()
    assert [int(r["epoch"]) for r in b] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(a, b):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(ra[key] - rb[key]) <= TOL, (int(ra["epoch"]), key, ra[key], rb[key])
    for name in (f"checkpoint/epoch-{EPOCHS:04d}.keras", "model.keras"):
        wa, wb = _weights(tmp_path / "runs" / "whole" / name), _weights(killed / name)
        diff = max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(wa, wb))
        print(f"\n{name}: largest weight difference after a kill at epoch {at_kill}: {diff:.3g}")
        assert diff <= TOL, f"{name}: weights differ by {diff}"


def test_epoch_seeds_differ_by_epoch_and_stream_and_repeat_exactly():
    seeds = {(e, s): epoch_seed(7, e, s) for e in range(50) for s in ("data", "dropout")}
    assert len(set(seeds.values())) == len(seeds)
    assert epoch_seed(7, 3, "data") == epoch_seed(7, 3, "data") != epoch_seed(8, 3, "data")
    with pytest.raises(ValueError):
        epoch_seed(7, 3, "typo")


def test_reseeding_makes_dropout_draw_the_same_masks_again(tiny_cfg):
    import keras

    from inat.models.common import make_model

    model = make_model(tiny_cfg.replace(dropout=0.5), 10)
    x = np.ones((4, 32, 32, 3), dtype="float32") * 100

    def masks(epoch):
        assert reseed_model(model, tiny_cfg.seed, epoch) >= 1
        return [keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2)]

    first, other, again = masks(3), masks(4), masks(3)
    assert not np.allclose(first[0], first[1])  # the stream moves on within an epoch
    assert not np.allclose(first[0], other[0])  # and differs between epochs
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
