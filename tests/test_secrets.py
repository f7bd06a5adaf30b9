"""The W&B API key never lands on disk or in logs.

Each test plants a fake key, `WANDB_API_KEY=inat-planted-secret-<random>`, in the environment of a
real command, then reads every file under the scratch root (run directories, W&B offline files,
agent logs, sweep state) and the command's own output, and fails if the key appears anywhere.
W&B runs offline (WANDB_MODE=offline), so its run files are written and scanned too.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ["--set", "epochs=1", "--set", "image_size=32", "--set", "filt_org=[4,4,4,4,4]", "--set", "num_dense=8",
        "--set", "batch_size=16"]


@pytest.fixture
def key() -> str:
    return f"inat-planted-secret-{secrets.token_hex(10)}"


def files_with(needle: str, *roots: Path) -> list[str]:
    """Every file under `roots` whose bytes contain `needle` (symlinks are not followed)."""
    hits, raw = [], needle.encode()
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file() and not path.is_symlink() and raw in path.read_bytes():
                hits.append(str(path))
    return hits


def scanned_files(*roots: Path) -> int:
    return sum(1 for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_scan_finds_a_planted_key(tmp_path, key):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "blob.bin").write_bytes(b"\x00\x01" + key.encode() + b"\xff")
    assert files_with(key, tmp_path) == [str(tmp_path / "a" / "b" / "blob.bin")]


@pytest.mark.slow
def test_key_stays_out_of_a_training_run(tmp_path, key, demo_data):
    scratch = tmp_path / "scratch"
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": key}
    result = run_cli("train", "--data", str(demo_data), "--out", str(scratch), "--run-id", "r", *TINY, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    run = scratch / "runs" / "r"
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "W&B did not write its offline run"
    assert key not in result.stdout + result.stderr
    assert files_with(key, scratch) == []
    print(f"\ntraining run: {scanned_files(scratch)} files scanned, key in none")


@pytest.mark.slow
def test_key_stays_out_of_a_sweep_agent(tmp_path, key, demo_data):
    scratch = tmp_path / "scratch"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("method: random\nmetric: {name: val_accuracy, goal: maximize}\nrun_cap: 1\n"
                     "parameters:\n  dropout: {values: [0.1, 0.2]}\n")
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": key}
    result = run_cli("launch-sweep", "--sweep", str(sweep), "--agents", "1", "--cluster", "local", "--wait",
                     "--data", str(demo_data), "--out", str(scratch), *TINY, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (sweep_dir,) = (scratch / "sweeps").iterdir()
    assert list(sweep_dir.glob("trials/0000/wandb/offline-run-*/run-*.wandb")), "the trial did not log to W&B"
    assert (sweep_dir / "agents" / "agent-0.log").stat().st_size > 0
    assert key not in result.stdout + result.stderr
    assert files_with(key, scratch) == []
    print(f"\nsweep agent: {scanned_files(scratch)} files scanned, key in none")
