"""kill -9 a training process at random moments: every resume must end with each epoch exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from inat.train import read_history

EPOCHS = 6


@pytest.mark.slow
def test_kill9_at_ten_random_moments_then_resume(tmp_path, demo_data):
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, "-m", "jobs", "train", "--data", str(demo_data), "--out", str(tmp_path),
        "--run-id", "killed", "--set", f"epochs={EPOCHS}", "--set", "image_size=32",
        "--set", "filt_org=[8,8,16,16,16]", "--set", "num_dense=16", "--set", "batch_size=16",
    ]
    run_dir = tmp_path / "runs" / "killed"
    kills, progress = 0, []
    while kills < 10:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Start-up (imports, model build) takes a few seconds; epochs take about one.
        # Moments spread over both, so kills land in imports, mid-epoch and mid-checkpoint.
        try:
            proc.wait(timeout=rng.uniform(2.0, 9.0))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            progress.append(len(read_history(run_dir)) if run_dir.exists() else 0)
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        break  # it finished before we killed it ten times; fine, the kills so far still count
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    print(f"kills: {kills}, epochs finished at each kill: {progress}")

    epochs = [int(row["epoch"]) for row in read_history(run_dir)]
    assert epochs == list(range(1, EPOCHS + 1))
    import keras

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 10)
    assert not list(run_dir.rglob("*.tmp*"))
    assert kills >= 3  # the test must actually have interrupted training
