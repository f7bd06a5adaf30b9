"""On a real Slurm cluster (CI starts one with scripts/slurm/setup-cluster.sh): a sweep as an array
job, the whole pipeline chained by dependencies, a training job that outlives its time limit and is
requeued, and the plain sbatch scripts. Skipped on a laptop without Slurm; failing under CI=true.

Jobs run as the submitting user on this machine's filesystem, so pytest's tmp_path works as scratch.
The jobs import this checkout: the executor exports its path (jobs.slurm.executors.project_root).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CI_PROFILE, REPO, SLURM_SWEEP, SLURM_TINY, cli, require, run_cli, start_cli
from inat.fsutil import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TINY_SET, SWEEP = SLURM_TINY, SLURM_SWEEP
ENV = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE), "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module", autouse=True)
def slurm():
    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")


def sacct_rows(job_id: str, duplicates: bool = False) -> list[list[str]]:
    cmd = ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,JobName,State"] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def wait_jobs(task_ids: list[str], limit_s: float) -> list[dict]:
    from jobs.slurm import jobstate

    record = {"stage": "x", "task_ids": task_ids, "cluster": "slurm"}
    return jobstate.wait_for([record], poll_s=3, timeout_s=limit_s, say=lambda *_: None)


def test_launch_sweep_runs_agents_as_one_array_job(tmp_path, demo_data):
    (tmp_path / "s.yaml").write_text(SWEEP)
    scratch = tmp_path / "scratch"
    result = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "2", "--trials-per-agent", "2",
                     "--data", str(demo_data), "--out", str(scratch), *TINY_SET, "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    array = out["job_ids"][0].split("_")[0]
    assert out["job_ids"] == [f"{array}_0", f"{array}_1"]
    assert "cluster: slurm" in result.stderr
    rows = wait_jobs(out["job_ids"], 240)
    assert [r["State"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    assert sorted(r[0] for r in sacct_rows(array)) == [f"{array}_0", f"{array}_1"]

    status = cli("sweep-status", out["sweep_id"], "--out", str(scratch), "--json")
    trials = json.loads(status.stdout)["trials"]
    assert len(trials) == 4 and {t["agent"] for t in trials} == {"agent-0", "agent-1"}
    assert all(t["state"] == "finished" for t in trials)
    listed = cli("status", out["sweep_id"], "--out", str(scratch), "--json")
    jobs = json.loads(listed.stdout)["jobs"]
    assert [(r["stage"], r["JobID"], r["State"]) for r in jobs] == [
        ("agent", f"{array}_0", "COMPLETED"), ("agent", f"{array}_1", "COMPLETED")]

    # What it cost: AllocTRES cpu x Elapsed of each task, as sacct itself reports them
    alloc = {job: (int(raw), cpus_of(tres)) for job, raw, tres in
             sacct_fields(array, "JobID,ElapsedRaw,AllocTRES")}
    for r in jobs:
        seconds, cpus = alloc[r["JobID"]]
        assert cpus >= 1 and seconds > 0 and r["cpu_hours"] > 0, (r, alloc)
        assert r["cpu_hours"] == pytest.approx(cpus * seconds / 3600, abs=1e-4) and r["gpu_hours"] == 0
    total = json.loads(listed.stdout)["total"]
    assert total["cpu_hours"] == pytest.approx(sum(r["cpu_hours"] for r in jobs), abs=1e-3)
    table = cli("status", out["sweep_id"], "--out", str(scratch)).stdout
    assert "CPU-h" in table and f"{total['cpu_hours']:.3f} CPU-h" in table.splitlines()[-1], table
    # each trial: its wall time x its agent job's CPUs, which the job's own hours bound
    for t in trials:
        assert t["slurm_job_id"] and t["cpu_hours"] > 0 and t["gpu_hours"] == 0, t
    for task in jobs:
        agent = task["JobID"].split("_")[1]
        mine = sum(t["cpu_hours"] for t in trials if t["agent"] == f"agent-{agent}")
        assert 0 < mine <= task["cpu_hours"] + 1e-3, (mine, task)
    print(f"\nagent jobs: {total['cpu_hours']:.4f} CPU-h; trials: {sum(t['cpu_hours'] for t in trials):.4f} CPU-h")

    # the array's script is the text --dry-run prints for it
    from jobs.slurm.profile import load_profile
    from jobs.slurm.executors import sbatch_text

    folder = scratch / "jobs" / out["sweep_id"] / "agent"
    assert (folder / f"{array}_submission.sh").read_text() == sbatch_text(load_profile(CI_PROFILE), "agent", folder, 2)


def sacct_fields(job_id: str, fields: str, *flags: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", fields, *flags], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def cpus_of(tres: str) -> int:
    return int(dict(item.split("=", 1) for item in tres.split(","))["cpu"])


def test_dry_run_submits_nothing_to_the_cluster(tmp_path, demo_data):
    """pipeline --dry-run on the real cluster: no job with this run's mark in squeue, nothing on scratch."""
    import secrets

    (tmp_path / "s.yaml").write_text(SWEEP)
    scratch, mark = tmp_path / "scratch", f"inat-dry-run-{secrets.token_hex(6)}"
    env = {**ENV, "INAT_SCRATCH": str(tmp_path / "env-scratch")}
    result = run_cli("pipeline", "--sweep", str(tmp_path / "s.yaml"), "--agents", "2", "--trials-per-agent", "1",
                     "--data", str(demo_data), "--out", str(scratch), *TINY_SET, "--cluster", "slurm",
                     "--cluster-set", f"extra={{comment: {mark}}}", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    subs = json.loads(result.stdout)["submissions"]
    assert [s["stage"] for s in subs] == ["agent", "train", "test", "visualize"]
    assert all(f"#SBATCH --comment={mark}" in s["script"] for s in subs)  # a submitted job would carry it
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%k|%j"], capture_output=True, text=True, timeout=30,
                            check=True).stdout
    assert mark not in queued, queued
    assert not scratch.exists() and not (tmp_path / "env-scratch").exists()


def test_pipeline_chains_four_array_jobs(tmp_path, slurm_pipeline):
    scratch, out = slurm_pipeline["scratch"], slurm_pipeline["out"]
    assert slurm_pipeline["submit_s"] < 30, f"submitting took {slurm_pipeline['submit_s']:.0f} s"
    ids = out["job_ids"]
    assert [len(ids[s]) for s in ("agent", "train", "test", "visualize")] == [2, 1, 1, 2]
    record = read_json(Path(out["out"]) / "pipeline.json")
    deps = [s.get("dependency") for s in record["stages"]]
    assert deps == [None] + [f"afterany:{s['job_id']}" for s in record["stages"][:-1]]

    rows = wait_jobs([t for s in ids.values() for t in s], 300)
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    run = Path(out["runs"][0])
    assert read_json(run / "test_metrics.json")["n"] == 60
    assert (run / "figures" / "confusion_matrix.png").is_file() and (run / "figures" / "predictions.png").is_file()
    assert (scratch / "sweeps" / out["sweep_id"] / "trials.csv").is_file()

    dest = tmp_path / "results"
    assert cli("collect", out["sweep_id"], "--dest", str(dest), "--out", str(scratch)).returncode == 0
    got = dest / out["sweep_id"]
    assert (got / "runs" / run.name / "test_metrics.json").is_file() and not list(got.rglob("checkpoint"))

    # retrain-best on the same sweep, a second seed: seed 0 is already done (its task just resumes);
    # --dry-run first, whose script must be the one submitit then writes
    dry = cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--seeds", "2", "--cluster",
              "slurm", "--dry-run", env=ENV)
    assert dry.returncode == 0, dry.stderr
    shown = dry.stdout.split("----- end of train script")[0].split("-----\n", 1)[1]
    more = run_cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--seeds", "2",
                   "--cluster", "slurm", "--wait", env=ENV)
    assert more.returncode == 0, more.stdout + more.stderr
    assert (scratch / "runs" / f"{out['sweep_id']}-best1-seed1" / "model.keras").is_file()
    jobs = json.loads(cli("status", out["sweep_id"], "--out", str(scratch), "--json").stdout)["jobs"]
    assert [r["stage"] for r in jobs].count("train") == 3 and {r["State"] for r in jobs} == {"COMPLETED"}
    retrain = read_json(scratch / "sweeps" / out["sweep_id"] / "jobs.json")[-1]
    assert (Path(retrain["folder"]) / f"{retrain['job_id']}_submission.sh").read_text() == shown

    # what submitit wrote is what sbatch_text (and so the golden files) describe
    from jobs.slurm.profile import load_profile
    from jobs.slurm.executors import sbatch_text

    folder = Path(record["stages"][1]["folder"])
    written = (folder / f"{ids['train'][0]}_submission.sh").read_text()
    expected = sbatch_text(load_profile(CI_PROFILE), "train", folder, 1, record["stages"][1]["dependency"])
    assert written == expected


# Its job sleeps through most of its epochs and counts its requeues, so under xdist it runs beside
# the other cluster tests rather than after them.
@pytest.mark.xdist_group("requeue")
def test_training_job_is_requeued_at_its_time_limit_and_resumes(tmp_path, demo_data, tiny_cfg, monkeypatch):
    """timeout 2 min, signal 30 s before it (Slurm may signal up to a minute early): 6 epochs of ~15 s
    cannot fit one allocation, so the job is signalled, requeued, and resumes at its last epoch; and
    the requeued run ends exactly where the same run trained without interruption ends."""
    from jobs.slurm import jobstate
    from jobs.slurm.profile import load_profile
    from jobs.slurm.submit import submit_calls
    from jobs.tasks import TrainTask

    cfg = tiny_cfg.replace(epochs=6, data_augment=True)  # augmentation and dropout: every random stream
    run = tmp_path / "run"
    monkeypatch.setenv("INAT_DETERMINISTIC", "1")  # the job inherits the submitting environment
    # A busy node makes epochs slower and so needs more requeues: allow plenty, the test counts them.
    profile = load_profile(CI_PROFILE, ["time=2", "signal_delay_s=30", "max_timeouts=8"])
    sub = submit_calls("train", [(TrainTask(), (cfg, run, demo_data, 14.0))], profile, tmp_path / "jobs")
    # The same config trained in one go, also from a decoded-image cache, as the reference below. It
    # runs meanwhile: the job spends its epochs asleep (epoch_delay_s), so the CPU is free.
    cfg.save(tmp_path / "cfg.yaml")
    # With the job's thread count (cpus: 1): op determinism gives the same numbers for the same
    # thread pools, and a different count sums in another order (1e-5 apart by epoch 5).
    whole = start_cli("train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(demo_data),
                      "--out", str(tmp_path / "whole"), "--run-id", "whole", env={"INAT_THREADS": "1"})
    rows = jobstate.wait_for([sub.record()], poll_s=3, timeout_s=900, say=lambda *_: None)
    _, whole_err = whole.communicate(timeout=600)
    logs = "".join(p.read_text()[-3000:] for p in (tmp_path / "jobs").glob(f"{sub.job_id}_0_log.*"))
    attempts_file = run / "attempts.json"
    assert rows[0]["State"] == "COMPLETED", (rows, attempts_file.is_file() and attempts_file.read_text(), logs)

    epochs = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3", "4", "5", "6"]  # every epoch exactly once
    attempts = read_json(run / "attempts.json")
    assert len(attempts) >= 2 and attempts[-1]["outcome"] == "completed"
    assert all(a["outcome"].startswith("signalled") for a in attempts[:-1])
    assert [a["restart"] for a in attempts] == list(range(len(attempts)))
    starts = [a["epochs_done_at_start"] for a in attempts]
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] > 0, starts  # resumed, never reset
    states = [r[2] for r in sacct_rows(sub.job_id, duplicates=True)]
    assert states.count("REQUEUED") == len(attempts) - 1 and states[-1] == "COMPLETED"
    # what the job cost is every attempt's allocation x elapsed, not only the last attempt's
    each = [(int(raw), cpus_of(tres)) for raw, tres in sacct_fields(sub.job_id, "ElapsedRaw,AllocTRES", "-D")]
    assert len(each) == len(attempts) == len(rows[0]["attempts"]) and rows[0]["elapsed_s"] == sum(e for e, _ in each)
    assert rows[0]["cpu_hours"] > 0 and rows[0]["cpu_hours"] == pytest.approx(sum(e * c for e, c in each) / 3600,
                                                                              abs=1e-3)
    print(f"\nrequeued job: {len(each)} attempts of {[e for e, _ in each]} s, {rows[0]['cpu_hours']:.4f} CPU-h")
    assert read_json(run / "run.json")["status"] == "completed"
    # Resumed, not restarted: every attempt appends Keras' "Epoch k/6" lines to the same job log;
    # epoch 1 began once, and each requeued attempt began after it (where the numbers drop back,
    # the epoch the signal interrupted runs again).
    (log,) = (tmp_path / "jobs").glob(f"{sub.job_id}_0_log.out")
    began = [int(line.split()[1].split("/")[0]) for line in log.read_text().splitlines()
             if line.startswith("Epoch ")]
    assert began.count(1) == 1 and sorted(set(began)) == [1, 2, 3, 4, 5, 6], began
    restarts = [b for a, b in zip(began, began[1:]) if b <= a]
    assert all(b > 1 for b in restarts), began
    print(f"\nrequeued {len(attempts) - 1} time(s); attempts started after epochs {starts}; "
          f"epochs begun, in order: {began}")

    # The same config trained in one go, also from a decoded-image cache, gives the same run.
    assert whole.returncode == 0, whole_err[-2000:]
    ref = tmp_path / "whole" / "runs" / "whole"
    assert_same_run(ref, run)


def test_a_sweep_agent_and_retrain_best_as_jax_jobs(tmp_path, demo_data):
    """KERAS_BACKEND travels to the jobs as every other variable of the submitting environment does:
    a sweep agent's array task and retrain-best's training task both train on JAX."""
    require(importlib.util.find_spec("jax") is not None, "needs jax (the test extra)")
    (tmp_path / "s.yaml").write_text(SWEEP.replace("parameters:", "run_cap: 1\nparameters:"))
    scratch, env = tmp_path / "scratch", {**ENV, "KERAS_BACKEND": "jax"}
    result = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "1", "--data", str(demo_data),
                     "--out", str(scratch), *TINY_SET, "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    rows = wait_jobs(out["job_ids"], 300)
    assert [r["State"] for r in rows] == ["COMPLETED"], rows
    (trial,) = (scratch / "sweeps" / out["sweep_id"] / "trials").iterdir()
    info = read_json(trial / "run.json")
    assert info["status"] == "completed" and info["versions"]["keras_backend"] == "jax", info
    more = run_cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--cluster", "slurm",
                   "--wait", env=env)
    assert more.returncode == 0, more.stdout + more.stderr
    info = read_json(scratch / "runs" / f"{out['sweep_id']}-best1-seed0" / "run.json")
    assert info["status"] == "completed" and info["versions"]["keras_backend"] == "jax", info


def test_gpu_jobs_two_agents_per_gpu_and_one_trial_over_two_gpus(tmp_path, demo_data):
    """The CI node offers 2 stand-in GPUs (gres, scripts/slurm/setup-cluster.sh): Slurm schedules a
    job that asks for them, accounts them and sets CUDA_VISIBLE_DEVICES=0,1 as on a GPU node.

    agents_per_gpu 2: `--agents 4` is one array task running 4 agent processes, two pinned to each
    GPU, each with its share of the job's 2 CPUs, each trial recorded once. gpus_per_trial 2: a
    retraining job trains one run over both (as 2 logical CPU devices here: $INAT_CPU_REPLICAS)."""
    (tmp_path / "s.yaml").write_text(SWEEP)
    scratch = tmp_path / "scratch"
    gpu = ["--cluster-set", "gpus=2", "--cluster-set", "cpus=2", "--cluster-set", "mem=8"]
    result = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "4", "--trials-per-agent", "1",
                     "--data", str(demo_data), "--out", str(scratch), *TINY_SET, "--set", "epochs=1", *gpu,
                     "--cluster-set", "agents_per_gpu=2", "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["job_ids"]) == 1, out  # 4 agents, 1 job
    rows = wait_jobs(out["job_ids"], 420)
    assert [r["State"] for r in rows] == ["COMPLETED"], rows
    tres = subprocess.run(["sacct", "-j", out["job_ids"][0], "-X", "-n", "-P", "-o", "AllocTRES"],
                          capture_output=True, text=True, check=True).stdout
    assert "gres/gpu=2" in tres, tres
    (job,) = json.loads(cli("status", out["sweep_id"], "--out", str(scratch), "--json").stdout)["jobs"]
    assert job["gpus"] == 2 and job["gpu_hours"] == pytest.approx(2 * job["elapsed_s"] / 3600, abs=1e-4), job  # rounded

    sweep = scratch / "sweeps" / out["sweep_id"]
    trials = json.loads(cli("sweep-status", out["sweep_id"], "--out", str(scratch), "--json").stdout)["trials"]
    assert sorted(t["agent"] for t in trials) == ["agent-0", "agent-1", "agent-2", "agent-3"], trials
    assert all(t["state"] == "finished" for t in trials) and len({t["run_dir"] for t in trials}) == 4
    for t in trials:
        compute = read_json(sweep / "trials" / t["run_dir"] / "run.json")["compute"]
        assert compute["cuda_visible_devices"] == {"agent-0": "0", "agent-1": "0", "agent-2": "1",
                                                   "agent-3": "1"}[t["agent"]], (t, compute)
        assert compute["threads"] == {"budget": 1, "intra_op": 1, "inter_op": 1}, compute  # 2 CPUs / 4
        assert (sweep / "agents" / f"{t['agent']}.log").is_file()

    more = run_cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--cluster", "slurm", *gpu,
                   "--cluster-set", "gpus_per_trial=2", "--wait", env={**ENV, "INAT_CPU_REPLICAS": "1"})
    assert more.returncode == 0, more.stdout + more.stderr
    info = read_json(scratch / "runs" / f"{out['sweep_id']}-best1-seed0" / "run.json")
    assert info["status"] == "completed", info
    assert info["compute"]["replicas"] == 2 and info["compute"]["cuda_visible_devices"] == "0,1", info["compute"]


def assert_same_run(a: Path, b: Path, tol: float = 1e-6) -> None:
    """Two run directories hold the same training: history and final weights within `tol`."""
    import keras
    import numpy as np

    from inat.rundir import RunDir

    ha, hb = RunDir(a).history(), RunDir(b).history()
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
    for ra, rb in zip(ha, hb):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(ra[key] - rb[key]) <= tol, (int(ra["epoch"]), key, ra[key], rb[key])
    last = f"checkpoint/epoch-{int(ha[-1]['epoch']):04d}.keras"
    wa = keras.saving.load_model(a / last, compile=False).get_weights()
    wb = keras.saving.load_model(b / last, compile=False).get_weights()
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(wa, wb) if x.size)
    print(f"largest weight difference from the uninterrupted run: {diff:.3g}")
    assert diff <= tol


def test_plain_sbatch_test_script(tmp_path, trained_run):
    """`sbatch --wait slurm/test.sh RUN_DIR`, with inat-jobs from this checkout (INAT_JOBS)."""
    env = {**os.environ, **ENV, "INAT_JOBS": f"{sys.executable} -m jobs", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        ["sbatch", "--wait", "-p", "debug", "-o", str(tmp_path / "%x-%j.out"), "slurm/test.sh", str(trained_run)],
        capture_output=True, text=True, cwd=REPO, timeout=180, env=env,
    )
    log = "".join(p.read_text() for p in tmp_path.glob("inat-test-*.out"))
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert "test accuracy" in log and (trained_run / "test_metrics.json").is_file()
