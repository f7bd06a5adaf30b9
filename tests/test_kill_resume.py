"""kill -9 a training process at twelve moments: every resume must end with each epoch exactly once,
and at every kill model.keras must be the model of the best epoch the run has committed.

Seven kills wait for a stage of the commit order in inat/train.py (start-up, a checkpoint or the
best model being saved, a best model saved but not yet committed, history.csv written ahead of
state.json, ...) by polling the run directory; the other five land at random times. After each kill
the process is dead, so the run directory is frozen and `stage()` says exactly where the kill
landed. The test asserts the kills hit several distinct stages, and prints the distribution.

"The model of the best epoch" is checked by evaluating model.keras on the val split again: its
val_accuracy and val_loss must be those history.csv records for the best epoch state.json names.
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
import warnings
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from inat.rundir import RunDir

EPOCHS = 12


def stage(run_dir: Path) -> str:
    """Where in training a dead process left `run_dir` (see the commit order in inat/train.py)."""
    if not (run_dir / "splits.json").exists():
        return "start-up (no splits.json yet)"
    done = committed(run_dir)
    temps = [p.name for p in run_dir.rglob(".*tmp*")]
    if any(t.startswith(".epoch-") for t in temps):
        return "saving a checkpoint"
    if any(t.startswith(".best-") for t in temps):
        return "saving the best model"
    if any(t.startswith((".history.csv.", ".state.json.")) for t in temps):
        return "writing history.csv or state.json"
    saved = [int(m.group(1)) for p in (run_dir / "checkpoint").glob("epoch-*.keras")
             if (m := re.fullmatch(r"epoch-(\d+)\.keras", p.name))]
    if _best_uncommitted(run_dir):
        return "best model saved, not yet committed"
    if RunDir(run_dir).best_model_path().parent.name == "checkpoint":
        return "best model committed, model.keras not yet renamed"
    if len(RunDir(run_dir).history()) > done:
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


def _best_uncommitted(run_dir: Path) -> bool:
    """A checkpoint/best-NNNN.keras of an epoch state.json has not committed yet."""
    done = committed(run_dir)
    return any(int(m.group(1)) > done for p in (run_dir / "checkpoint").glob("best-*.keras")
               if (m := re.fullmatch(r"best-(\d+)\.keras", p.name)))


def _history_ahead(run_dir: Path) -> bool:
    try:
        return len(RunDir(run_dir).history()) > committed(run_dir)
    except (ValueError, OSError):
        return False


# Twelve kill triggers: a condition on the run directory (polled every few ms), a random delay, or
# (for windows too short to hit by polling) a hook: the training process SIGKILLs itself right after
# its Nth best model is saved, or right after its Nth commit of a new best, before the rename.
TRIGGERS = [
    ("at 0.5 s", lambda d: False, 0.5),
    ("splits.json written", lambda d: (d / "splits.json").exists(), None),
    ("a checkpoint temp file", lambda d: _temp(d, ".epoch-"), None),
    ("history.csv ahead of state.json", _history_ahead, None),
    ("a best-model temp file", lambda d: _temp(d, ".best-"), None),
    ("self-kill after the 2nd best model is saved", None, "saved:2"),
    ("self-kill after a new best is committed, before model.keras is renamed", None, "committed:1"),
    *[("random", lambda d: False, "random")] * 5,
]

# Runs `inat-jobs ARGS` with the self-kill hook named by $KILL_HOOK ("saved:N" or "committed:N").
HOOKED = """
import os, signal, sys
import inat.rundir as r
where, n = os.environ["KILL_HOOK"].split(":")
seen = [0]
def hit():
    seen[0] += 1
    if seen[0] >= int(n):
        os.kill(os.getpid(), signal.SIGKILL)
save, publish = r.save_model_atomic, r.RunDir.publish_best_model
def saving(model, path):
    save(model, path)
    if where == "saved" and path.name.startswith("best-"):
        hit()
def publishing(run, state):
    if where == "committed" and (run.checkpoint_dir / state.get("best_model", "-")).is_file():
        hit()
    publish(run, state)
r.save_model_atomic, r.RunDir.publish_best_model = saving, publishing
from jobs.cli import main
sys.argv[0] = "inat-jobs"
main()
"""


def check_model_is_committed_best(run_dir: Path) -> str:
    """model.keras, evaluated again on the val split, gives the committed best epoch's val metrics
    (best by val_loss, the run's monitor)."""
    import keras

    from inat import data

    if not (run_dir / "checkpoint" / "state.json").exists():
        assert not (run_dir / "model.keras").exists(), "a model.keras before any epoch was committed"
        return "no epoch committed, no model.keras"
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    rows = {int(r["epoch"]): r for r in RunDir(run_dir).history()}
    best = rows[state["best_epoch"]]
    committed_rows = [r for e, r in rows.items() if e <= state["epoch"]]
    assert best["val_loss"] == min(r["val_loss"] for r in committed_rows), (state, rows)
    splits = data.Splits.load(run_dir / "splits.json")
    val = data.dataset_for(splits, "val", 32, 16, training=False)
    path = RunDir(run_dir).best_model_path()  # model.keras, or the committed best still waiting to be renamed
    model = keras.saving.load_model(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        got = model.evaluate(val, verbose=0, return_dict=True)
    assert abs(got["accuracy"] - best["val_accuracy"]) < 1e-6, (state, got, best)
    assert abs(got["loss"] - best["val_loss"]) < 1e-4, (state, got, best)
    return f"{path.relative_to(run_dir)} = epoch {state['best_epoch']} (val_accuracy {got['accuracy']:.4f})"


@pytest.mark.slow
def test_kill9_at_twelve_moments_then_resume(tmp_path, demo_data):
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable, "-m", "jobs", "train", "--data", str(demo_data), "--out", str(tmp_path),
        "--run-id", "killed", "--set", f"epochs={EPOCHS}", "--set", "image_size=32",
        "--set", "filt_org=[8,8,16,16,16]", "--set", "num_dense=16", "--set", "batch_size=16",
        # val_loss improves on most epochs early on (val_accuracy, on 20 images, often does not), so
        # the self-kill hooks on a new best are reached before training ends.
        "--set", "monitor=val_loss",
    ]
    run_dir = tmp_path / "runs" / "killed"
    kills: list[tuple[str, str, int]] = []  # (trigger, stage, epochs committed)
    checks: list[str] = []  # what model.keras held at each kill
    finished_early = False
    for name, condition, delay in TRIGGERS:
        if condition is None:  # the process kills itself at the hook
            hooked = [sys.executable, "-c", HOOKED, *cmd[3:]]
            proc = subprocess.run(hooked, env={**env, "KILL_HOOK": delay}, capture_output=True, timeout=600)
            if proc.returncode == 0:
                finished_early = True
                break
            assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
            kills.append((name, stage(run_dir), committed(run_dir)))
            checks.append(check_model_is_committed_best(run_dir))
            continue
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
        checks.append(check_model_is_committed_best(run_dir))

    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    stages = Counter(s for _, s, _ in kills)
    print(f"\n{len(kills)} kills; epochs committed at each kill: {[d for _, _, d in kills]}")
    for s, n in stages.most_common():
        print(f"  {n} x {s}")
    for (_, s, _), c in zip(kills, checks):
        print(f"  {s}: {c}")

    epochs = [int(row["epoch"]) for row in RunDir(run_dir).history()]
    assert epochs == list(range(1, EPOCHS + 1))
    last_done = kills[-1][2] if kills else 0
    if last_done and not finished_early:  # the last start resumed, it did not restart
        assert f"resuming killed after epoch {last_done} of {EPOCHS}" in final.stderr, final.stderr[-2000:]
    import keras

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 10)
    assert not list(run_dir.rglob("*.tmp*"))
    assert not list((run_dir / "checkpoint").glob("best-*.keras")), "a best model was left behind"
    check_model_is_committed_best(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["best"]["metric"] == "val_loss" and info["best"]["goal"] == "minimize"
    rows = {int(r["epoch"]): r for r in RunDir(run_dir).history()}
    assert info["best"]["epoch"] == min(rows, key=lambda e: (rows[e]["val_loss"], e))
    assert info["best"]["value"] == rows[info["best"]["epoch"]]["val_loss"]
    assert len(kills) >= 10, "the test must actually have interrupted training"
    assert len(stages) >= 4, f"kills landed in too few stages: {dict(stages)}"
    assert stages["best model saved, not yet committed"] >= 1, dict(stages)
    assert stages["best model committed, model.keras not yet renamed"] >= 1, dict(stages)
    assert stages["start-up (no splits.json yet)"] >= 1
    assert any(d > 0 for _, _, d in kills) and any(d == 0 for _, _, d in kills)
