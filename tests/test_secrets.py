"""The W&B API key never lands on disk or in logs.

Each test plants a fake key, `WANDB_API_KEY=inat-planted-secret-<random>`, in the environment of a
real command, then reads every file under the scratch root (run directories, W&B offline files,
agent logs, sweep state) and the command's own output, and fails if the key appears anywhere.
W&B runs offline (WANDB_MODE=offline), so its run files are written and scanned too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CI_PROFILE, REPO, require, run_cli

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


# ---- Slurm jobs and collect ---------------------------------------------------------------------------


def slurm_up() -> None:
    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")


@pytest.mark.slurm
def test_a_slurm_job_sees_the_key(tmp_path, key, monkeypatch):
    """The control for the next test: sbatch passes the submitter's environment on, key included, so
    jobs could leak it. (Here the job returns it, into a result file outside any scratch root.)"""
    from jobs.slurm.profile import load_profile
    from jobs.slurm.executors import make_executor

    slurm_up()
    monkeypatch.setenv("WANDB_API_KEY", key)
    executor = make_executor(load_profile(CI_PROFILE).for_stage("test"), tmp_path / "probe", "inat-probe")
    assert executor.submit(os.getenv, "WANDB_API_KEY").result() == key


@pytest.mark.slurm
@pytest.mark.slow
def test_key_stays_out_of_a_slurm_pipeline_and_collect(tmp_path, slurm_pipeline):
    """A whole pipeline on Slurm (agents, retraining, test, figures) with W&B offline, then collect:
    the key is in none of the generated sbatch scripts, submitit pickles and logs, run directories,
    sweep files or collected results. The pipeline is the one tests/test_slurm.py checks
    (conftest.slurm_pipeline, submitted with the key in its environment)."""
    from jobs.slurm import jobstate

    scratch, dest, key = slurm_pipeline["scratch"], tmp_path / "results", slurm_pipeline["key"]
    result, out = slurm_pipeline["result"], slurm_pipeline["out"]
    ids = [t for stage in out["job_ids"].values() for t in stage]
    rows = jobstate.wait_for([{"stage": "all", "task_ids": ids, "cluster": "slurm"}], poll_s=3, timeout_s=600,
                             say=lambda *_: None)
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    collected = run_cli("collect", out["sweep_id"], "--dest", str(dest), "--out", str(scratch),
                        env=slurm_pipeline["env"])
    assert collected.returncode == 0, collected.stderr[-2000:]

    jobs = scratch / "jobs"
    for pattern in ("*_submission.sh", "*_submitted.pkl", "*_result.pkl", "*_log.out", "*_log.err"):
        assert list(jobs.rglob(pattern)), f"no {pattern} under {jobs}: the scan would miss it"
    assert list(scratch.rglob("offline-run-*/run-*.wandb")), "the jobs did not log to W&B"
    assert list(dest.rglob("model.keras")) and list(dest.rglob("test_metrics.json"))
    assert key not in result.stdout + result.stderr + collected.stdout + collected.stderr
    assert files_with(key, scratch, dest) == []
    print(f"\nSlurm pipeline + collect: {scanned_files(scratch)} files under scratch (of them "
          f"{scanned_files(jobs)} submitit files) and {scanned_files(dest)} collected files scanned, key in none")


# ---- the container image ----------------------------------------------------------------------------

CONTAINERS = REPO / "containers"


def the_image() -> Path:
    """The image tests/test_container.py uses: $INAT_TEST_IMAGE (CI: scripts/ci-container.sh)."""
    path = os.environ.get("INAT_TEST_IMAGE", "")
    require(shutil.which("apptainer") is not None and path != "" and Path(path).is_file(),
            "needs apptainer and an image in $INAT_TEST_IMAGE (IMAGE=$(containers/build.sh --cpu))")
    return Path(path)


def test_image_build_inputs_set_no_key():
    """Definitions and build scripts never set, copy or pass on a key; only docs and comments mention it.
    (tests/test_container.py builds the image with a canary key and reads every file of it.)"""
    docs = {"README.md", "help.txt"}
    for path in sorted(CONTAINERS.rglob("*")):
        if path.is_file() and path.name not in docs:
            code = [line for line in path.read_text(errors="replace").splitlines()
                    if not line.lstrip().startswith("#")]
            for word in ("WANDB_API_KEY", "netrc", "APPTAINERENV_"):
                assert not [line for line in code if word in line], f"{path.relative_to(REPO)} uses {word}"


@pytest.mark.apptainer
@pytest.mark.slow
def test_key_stays_out_of_a_run_in_the_image(tmp_path, key, demo_data):
    """The documented way (APPTAINERENV_WANDB_API_KEY) gives the key to W&B, not to any file."""
    image = the_image()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "APPTAINERENV_WANDB_API_KEY": key, "APPTAINERENV_WANDB_MODE": "offline"}
    result = subprocess.run(
        ["apptainer", "run", "--cleanenv", "-B", f"{scratch}:/scratch", "-B", str(demo_data), str(image),
         "train", "--data", str(demo_data), "--run-id", "r", *TINY],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(scratch.glob("runs/r/wandb/offline-run-*/run-*.wandb")), "W&B did not write its offline run"
    assert key not in result.stdout + result.stderr
    assert files_with(key, scratch) == []
    print(f"\ntraining in {image.name}: {scanned_files(scratch)} files scanned, key in none")
