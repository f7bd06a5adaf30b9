"""kill -9 a training process at ten moments: every resume must end with each epoch exactly once.

Half the kills wait for a stage of the commit order in inat/train.py (start-up, a checkpoint or
model.keras being saved, history.csv written ahead of state.json, ...) by polling the run
directory; the other half land at random times. After each kill the process is dead, so the run
directory is frozen and `stage()` says exactly where the kill landed. The test asserts the kills hit
several distinct stages, and prints the distribution.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from inat.history import read_history

EPOCHS = 12


def stage(run_dir: Path) -> str:
    """Where in training a dead process left `run_dir` (see the commit order in inat/train.py)."""
    if not (run_dir / "splits.json").exists():
        return "start-up (no splits.json yet)"
    done = committed(run_dir)
    temps = [p.name for p in run_dir.rglob(".*tmp*")]
    if any(t.startswith(".epoch-") for t in temps):
        return "saving a checkpoint"
    if any(t.startswith(".model.") for t in temps):
        return "saving model.keras"
    if any(t.startswith((".history.csv.", ".state.json.")) for t in temps):
        return "writing history.csv or state.json"
    saved = [int(m.group(1)) for p in (run_dir / "checkpoint").glob("epoch-*.keras")
             if (m := re.fullmatch(r"epoch-(\d+)\.keras", p.name))]
    if len(read_history(run_dir)) > done:
        return "history.csv ahead of state.json"
    if saved and max(saved) > done:
        return "checkpoint saved, state.json not yet"
    return "before epoch 1 was committed" if done == 0 else "inside an epoch"


def committed(run_dir: Path) -> int:
    """Epochs state.json has committed (0 before the first)."""
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def _temp(run_dir: Path, prefix: str) -> bool:
    return any(p.name.startswith(prefix) for p in run_dir.rglob(".*tmp*")) if run_dir.exists() else False


def _history_ahead(run_dir: Path) -> bool:
    try:
        return len(read_history(run_dir)) > committed(run_dir)
    except (ValueError, OSError):
        return False


# Ten kill triggers: a condition on the run directory (polled every few ms), or a random delay.
TRIGGERS = [
    ("at 0.5 s", lambda d: False, 0.5),
    ("splits.json written", lambda d: (d / "splits.json").exists(), None),
    ("a checkpoint temp file", lambda d: _temp(d, ".epoch-"), None),
    ("history.csv ahead of state.json", _history_ahead, None),
    ("a model.keras temp file", lambda d: _temp(d, ".model."), None),
    *[("random", lambda d: False, "random")] * 5,
]


@pytest.mark.slow
def test_kill9_at_ten_moments_then_resume(tmp_path, demo_data):
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, "-m", "jobs", "train", "--data", str(demo_data), "--out", str(tmp_path),
        "--run-id", "killed", "--set", f"epochs={EPOCHS}", "--set", "image_size=32",
        "--set", "filt_org=[8,8,16,16,16]", "--set", "num_dense=16", "--set", "batch_size=16",
    ]
    run_dir = tmp_path / "runs" / "killed"
    kills: list[tuple[str, str, int]] = []  # (trigger, stage, epochs committed)
    finished_early = False
    for name, condition, delay in TRIGGERS:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if delay == "random":  # start-up takes a few seconds here, an epoch about half a second
            delay = rng.uniform(1.0, 7.0)
        if delay is not None:
            deadline = time.monotonic() + delay
        else:  # a stage can be missed between two polls: give up once two more epochs committed
            deadline = time.monotonic() + 300.0
        give_up = committed(run_dir) + 2
        while (proc.poll() is None and time.monotonic() < deadline and not condition(run_dir)
               and committed(run_dir) < give_up):
            time.sleep(0.002)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            finished_early = True  # training ended first; the kills so far still count
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills.append((name, stage(run_dir), committed(run_dir)))

    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    stages = Counter(s for _, s, _ in kills)
    print(f"\n{len(kills)} kills; epochs committed at each kill: {[d for _, _, d in kills]}")
    for s, n in stages.most_common():
        print(f"  {n} x {s}")

    epochs = [int(row["epoch"]) for row in read_history(run_dir)]
    assert epochs == list(range(1, EPOCHS + 1))
    last_done = kills[-1][2] if kills else 0
    if last_done and not finished_early:  # the last start resumed, it did not restart
        assert f"resuming killed after epoch {last_done} of {EPOCHS}" in final.stderr, final.stderr[-2000:]
    import keras

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 10)
    assert not list(run_dir.rglob("*.tmp*"))
    assert len(kills) >= 8, "the test must actually have interrupted training"
    assert len(stages) >= 3, f"kills landed in too few stages: {dict(stages)}"
    assert stages["start-up (no splits.json yet)"] >= 1
    assert any(d > 0 for _, _, d in kills) and any(d == 0 for _, _, d in kills)
