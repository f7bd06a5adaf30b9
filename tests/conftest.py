"""Shared fixtures and helpers: tiny synthetic data, one tiny trained run, a local sweep with stand-in
trials, and where the real photos are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# W&B stays off unless a test turns it on: it starts a service process per run.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip on a laptop that lacks a service; fail in CI, where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `inat-jobs ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )


def one_error_line(result, fragment: str) -> str:
    """The CLI failed as users should see it: exit 2, no traceback, one error line naming `fragment`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("inat-jobs: error")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from inat.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", n_train_per_class=20, n_test_per_class=6)


TINY = [
    "model=scratch", "filt_org=[8,8,16,16,16]", "num_dense=16", "image_size=32",
    "batch_size=32", "epochs=2", "learning_rate=0.003", "activation=relu",
]


@pytest.fixture(scope="session")
def tiny_cfg():
    from inat.config import RunConfig

    return RunConfig.load(None, TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_data, tiny_cfg) -> Path:
    """One tiny model trained for 2 epochs; tests that only read a run share it."""
    from inat.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_cfg, run_dir, demo_data, verbose=0)
    return run_dir


# ---- a local-backend sweep whose trials are a stand-in function (no TensorFlow) ----------------------

LOCAL_SPEC = """
method: bayes
metric: {name: val_accuracy, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
parameters:
  kernel_size: {values: [[3, 3, 3, 3, 3], [5, 5, 5, 5, 5]]}
  dropout: {min: 0.0, max: 0.5}
  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
"""


def empty_dataset(tmp_path):
    """A dataset root as new_sweep checks it (train/ and val/); stand-in trials never read images."""
    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)


def make_sweep(tmp_path, spec_text=LOCAL_SPEC, fixed=None):
    """A local-backend sweep of `spec_text` under TMP/scratch, with its study, on an empty dataset."""
    from inat.sweep import new_sweep
    from inat.sweep.study import create_study

    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(spec_text)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data",
                            fixed or {"epochs": 6})
    create_study(sweep, spec)
    return sweep


def fake_trial(tr):
    """Learning curve = dropout + 0.01 * epoch, written like train() would write it."""
    from inat.fsutil import write_csv, write_json
    from inat.sweep.local import Outcome

    tr.run_dir.mkdir(parents=True, exist_ok=True)
    rows, best = [], None
    for epoch in range(1, tr.config.epochs + 1):
        value = tr.config.dropout + 0.01 * epoch
        best = value if best is None else max(best, value)
        rows.append([epoch, 1.0, 0.5, 1.0, value, 0.01])
        write_csv(tr.run_dir / "history.csv", ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"], rows)
        tr.config.save(tr.run_dir / "config.yaml")
        if tr.report(epoch, value):
            write_json(tr.run_dir / "run.json", {"status": "stopped"})
            return Outcome(best, epoch, True)
    write_json(tr.run_dir / "run.json", {"status": "completed"})
    return Outcome(best, tr.config.epochs, False)
