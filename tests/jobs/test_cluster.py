"""The cluster layer without a cluster: profiles and their errors, Slurm auto-detection, the sbatch
scripts submitit would write (golden files), retraining picks, status and collect on a scratch tree,
and the whole pipeline with --cluster local."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli, one_error_line, run_cli
from inat.config import RunConfig
from inat.errors import ConfigError
from inat.fsutil import read_json, write_json
from jobs import tasks
from jobs.slurm import jobstate
from jobs.slurm import executors
from jobs.slurm import profile as cluster
from jobs.collect import collect, resolve

GOLDEN = REPO / "tests" / "golden"
CI_PROFILE = REPO / "configs" / "clusters" / "ci.yaml"
EXAMPLE_PROFILE = REPO / "configs" / "clusters" / "example.yaml"


# ---- profiles ---------------------------------------------------------------------------------------


def test_shipped_profiles_load_and_map_to_sbatch_options():
    ci = cluster.load_profile(CI_PROFILE)
    assert ci.partition == "debug" and ci.cpus == 1 and ci.time >= 2
    example = cluster.load_profile(EXAMPLE_PROFILE, ["time=30", "partition=short"])
    assert example.time == 30 and example.partition == "short" and example.gpus == 1
    params = executors.slurm_parameters(example.for_stage("visualize"), "inat-visualize", "afterany:7")
    assert params["gpus_per_node"] == 0 and params["mem"] == "16GB" and params["cpus_per_task"] == 4
    assert params["dependency"] == "afterany:7" and params["additional_parameters"] == {"mail_type": "FAIL"}
    assert params["account"] == "my-project" and params["constraint"] == "a100|v100"


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv(cluster.PROFILE_ENV, str(CI_PROFILE))
    assert cluster.load_profile().partition == "debug"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"partiton": "gpu"}, "unknown key 'partiton'"),
        ({"time": "2h"}, "key 'time' = '2h' is invalid"),
        ({"time": -5}, "key 'time' = -5 is invalid; expected an integer >= 1"),
        ({"gpus": -1}, "key 'gpus' = -1"),
        ({"cpus": 0}, "key 'cpus' = 0"),
        ({"mem": -2}, "key 'mem' = -2"),
        ({"mem": True}, "key 'mem' = True"),
        ({"mem": float("inf")}, "key 'mem' = inf is invalid; expected a number > 0 (GB per node)"),
        ({"gpus": None}, "key 'gpus' = None"),
        ({"setup": "module load cuda"}, "key 'setup'"),
        ({"setup": ["module load cuda", 3]}, "key 'setup' = ['module load cuda', 3] is invalid; expected a list"),
        ({"extra": {"array": "0-3"}}, "'array' is set by inat-jobs itself"),
        ({"extra": {"mail-type": ["A", "B"]}}, "key 'extra'"),
        ({"stages": {"training": {}}}, "unknown stage 'stages.training'"),
        ({"stages": {"test": {"time": 0}}}, "key 'stages.test.time' = 0"),
        ({"stages": {"test": {"stages": {}}}}, "unknown key 'stages.test.stages'"),
        ({"stages": {"test": 4}}, "key 'stages.test' must be a mapping of profile keys"),
        ({"time": 0, "nodes": 2}, "unknown key 'nodes'"),  # a misspelt key first, it may explain the rest
    ],
)
def test_profile_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        cluster.parse_profile(data, "p.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("p.yaml: ") and fragment in message


def test_cli_reports_a_bad_profile_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: debug\nmem: -4\n")
    result = cli("test", "--run", str(tmp_path), "--cluster", "slurm", "--profile", str(bad))
    assert str(bad) in one_error_line(result, "key 'mem' = -4")
    bad.write_text("partition: [debug\n")
    one_error_line(cli("test", "--run", str(tmp_path), "--cluster", "slurm", "--profile", str(bad)),
                   "not valid YAML")


def test_cli_reports_bad_cluster_options_in_one_line(tmp_path):
    one_error_line(cli("test", "--run", str(tmp_path), "--cluster", "moon"), "--cluster 'moon' is invalid")
    one_error_line(cli("test", "--run", str(tmp_path), "--cluster", "slurm", "--cluster-set", "time=-1"),
                   "--cluster-set: key 'time' = -1")
    one_error_line(cli("test", "--run", str(tmp_path), "--cluster", "slurm", "--cluster-set", "nodes=2"),
                   "unknown key 'nodes'")


def test_image_runs_jobs_in_apptainer_with_their_scratch_bound(tmp_path, monkeypatch):
    monkeypatch.delenv("INAT_IMAGE", raising=False)
    monkeypatch.delenv("INAT_BIND", raising=False)
    image = tmp_path / "inat.sif"
    image.write_bytes(b"")
    folder = tmp_path / "scratch" / "jobs" / "test-1" / "test"
    profile = cluster.load_profile(EXAMPLE_PROFILE, ["python=/usr/bin/python3"], image=image)
    assert profile.image == str(image)  # --image wins over the profile's python
    want = f"apptainer exec --nv --env PYTHONSAFEPATH=1 -B {tmp_path / 'scratch'} {image} python"
    assert executors.job_python(profile.for_stage("train"), folder) == want
    # a stage that asks for no GPU gets no --nv (apptainer would warn on a node without one)
    assert executors.job_python(profile.for_stage("visualize"), folder) == want.replace(" --nv", "")
    assert f"{want} -u -m submitit.core._submit {folder}" in executors.sbatch_text(profile, "train", folder)
    # a container brings its own installed copy of the project: no PYTHONPATH to this checkout
    assert not any("PYTHONPATH" in line for line in executors.slurm_parameters(profile, "x").get("setup", []))
    monkeypatch.setenv("INAT_BIND", "/data/inat")
    assert f"-B {tmp_path / 'scratch'},/data/inat " in executors.job_python(profile, folder)
    # the same from a profile key, and $INAT_IMAGE when the profile names neither image nor python
    assert cluster.load_profile(None, [f"image={image}"]).image == str(image)
    monkeypatch.setenv("INAT_IMAGE", str(image))
    assert executors.job_python(cluster.load_profile(), folder).startswith("apptainer exec --nv ")
    assert executors.job_python(cluster.load_profile(None, ["python=py3"]), folder) == "py3"


def test_image_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"--image: key 'image' = .*missing.sif.* \(no such file\)"):
        cluster.load_profile(None, [], image=tmp_path / "missing.sif")
    one_error_line(cli("test", "--run", str(tmp_path), "--cluster", "slurm", "--image",
                       str(tmp_path / "missing.sif")), "(no such file)")


def test_every_submitting_command_takes_image():
    import typer.main

    from jobs.cli import app  # importing the CLI registers every command

    commands = typer.main.get_command(app).commands
    submitting = {name for name, cmd in commands.items() if any("--cluster" in p.opts for p in cmd.params)}
    assert {"test", "visualize", "launch-sweep", "retrain-best", "pipeline"} <= submitting
    for name in sorted(submitting):
        assert any("--image" in p.opts for p in commands[name].params), f"{name} has --cluster but no --image"


# ---- Slurm or local -------------------------------------------------------------------------------------


def _fake_slurm(tmp_path: Path, ping: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("sbatch", "exit 0"), ("scontrol", ping)):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    "ping, expected, why",
    [
        (None, "local", "no sbatch on PATH"),
        ("echo 'Slurmctld(primary) at ctl is DOWN'; exit 1", "local", "not up"),
        ("exec /bin/sleep 5", "local", "did not answer"),
        ("echo 'Slurmctld(primary) at ctl is UP'", "slurm", "controller answers"),
    ],
)
def test_auto_detection(tmp_path, monkeypatch, capsys, ping, expected, why):
    monkeypatch.setattr(executors, "PING_TIMEOUT_S", 1.0)
    path = _fake_slurm(tmp_path, ping) if ping else str(tmp_path)
    monkeypatch.setenv("PATH", f"{path}:/usr/bin/nonexistent")
    assert executors.resolve_cluster(None) == expected
    said = capsys.readouterr().err
    assert said.startswith(f"cluster: {expected} (") and why in said
    assert executors.resolve_cluster("local") == "local"  # explicit choices probe nothing


# ---- golden sbatch scripts --------------------------------------------------------------------------------

GOLDEN_CASES = {
    "ci-agent-array": (CI_PROFILE, [], "agent", 2, None),
    "ci-train-after": (CI_PROFILE, [], "train", 1, "afterany:100"),
    "example-test-array": (EXAMPLE_PROFILE, [], "test", 4, "afterany:101"),
    "example-train-container": (EXAMPLE_PROFILE, ["python=apptainer exec --nv /img/inat.sif python"], "train", 1,
                                None),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_generated_sbatch_scripts_match_golden_files(name, monkeypatch):
    """Regenerate after an intended change: INAT_UPDATE_GOLDEN=1 pytest tests/jobs/test_cluster.py -k golden"""
    monkeypatch.delenv("INAT_IMAGE", raising=False)
    path, overrides, stage, n, dependency = GOLDEN_CASES[name]
    profile = cluster.load_profile(path, overrides)
    text = executors.sbatch_text(profile, stage, Path("/scratch/inat/jobs/ID") / stage, n, dependency)
    # The interpreter first: a checkout's own .venv lies inside the project directory.
    text = text.replace(sys.executable, "{PYTHON}").replace(str(REPO), "{PROJECT}")
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("INAT_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} missing; run with INAT_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text()


def test_figure_names_are_checked_before_anything_heavy_loads():
    from inat.figures import parse_what

    assert parse_what("confusion, grid,Confusion") == ["confusion", "grid"]
    with pytest.raises(ConfigError, match="unknown figure 'gird'"):
        parse_what("gird")


# ---- retraining picks ------------------------------------------------------------------------------------


def fake_trial(sweep_dir: Path, name: str, accs: list[float], status: str = "completed", lr: float = 0.01):
    run = sweep_dir / "trials" / name
    run.mkdir(parents=True)
    RunConfig.load(None, [f"learning_rate={lr}", "image_size=32", f"epochs={len(accs)}"]).save(run / "config.yaml")
    write_json(run / "run.json", {"run_id": name, "status": status})
    rows = "".join(f"{i + 1},1.0,0.5,1.0,{a},1.0\n" for i, a in enumerate(accs))
    (run / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n" + rows)
    (run / "model.keras").write_bytes(b"model " + name.encode())
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "epoch-0001.keras").write_bytes(b"ckpt")
    return run


@pytest.fixture
def fake_sweep(tmp_path):
    sweep = tmp_path / "scratch" / "sweeps" / "S1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("method: random\nparameters:\n  learning_rate: {values: [0.01, 0.001]}\n")
    write_json(sweep / "sweep.json", {"id": "S1", "backend": "local", "data_root": str(tmp_path / "data")})
    fake_trial(sweep, "0000", [0.2, 0.4], lr=0.01)
    fake_trial(sweep, "0001", [0.3, 0.6], lr=0.02)
    fake_trial(sweep, "0002", [0.9], status="pruned", lr=0.03)
    return sweep


def test_attempts_record_where_each_training_attempt_started(tmp_path, monkeypatch):
    attempts, run = tmp_path / "attempts.json", tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    tasks.record_attempt(attempts, run_dir=run)  # a new run: nothing committed yet
    tasks.record_attempt(attempts, "signalled (time-out or preemption): requeued")
    (run / "checkpoint").mkdir(parents=True)
    write_json(run / "checkpoint" / "state.json", {"epoch": 3, "checkpoint": "epoch-0003.keras"})
    # a kill after epoch 4's history row but before its commit: the resume starts after epoch 3
    (run / "history.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n4,0.6\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    tasks.record_attempt(attempts, run_dir=run)
    got = read_json(attempts)
    assert [(a["restart"], a["epochs_done_at_start"], a["outcome"]) for a in got] == [
        (0, 0, "signalled (time-out or preemption): requeued"), (1, 3, "running")]
    assert got[0]["slurm_job_id"] == "77"


def test_retrain_plan_names_and_picks(fake_sweep):
    assert tasks.retrain_plan(2, 3) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    runs = tasks.retrain_dirs(Path("/s/runs"), "S1", 1, 2)
    assert [r.name for r in runs] == ["S1-best1-seed0", "S1-best1-seed1"]
    picked, cfg = tasks.pick_config(fake_sweep, 1, 1, epochs=5)
    assert (picked.trial, picked.value, cfg.learning_rate, cfg.seed, cfg.epochs) == ("0001", 0.6, 0.02, 1, 5)
    assert tasks.pick_config(fake_sweep, 2, 0, None)[0].trial == "0000"  # the pruned 0.9 does not count
    assert tasks.pick_config(fake_sweep, 3, 0, None) is None


# ---- status and collect -------------------------------------------------------------------------------------


@pytest.fixture
def local_pipeline(fake_sweep):
    scratch = fake_sweep.parent.parent
    run = scratch / "runs" / "S1-best1-seed0"
    shutil.copytree(fake_sweep / "trials" / "0001", run)
    write_json(run / "test_metrics.json", {"accuracy": 0.5})
    (run / "figures").mkdir()
    (run / "figures" / "confusion_matrix.png").write_bytes(b"png")
    (run / "wandb").mkdir()
    (run / "wandb" / "debug.log").write_text("x")
    (run / ".lock").write_text("")
    (fake_sweep / "agents").mkdir()
    (fake_sweep / "agents" / "agent-1.log").write_text("agent 1 died\n")
    stages = [
        {"stage": "agent", "job_id": "local", "task_ids": ["pid_11", "pid_12"], "folder": str(fake_sweep / "agents"),
         "cluster": "local", "states": ["COMPLETED", "FAILED"], "errors": [None, "see the agent log"]},
        {"stage": "train", "job_id": "local", "task_ids": ["local_0", "local_1"], "folder": "", "cluster": "local",
         "states": ["COMPLETED", "SKIPPED"], "errors": [None, "no finished trial of rank 2"]},
    ]
    write_json(scratch / "pipelines" / "S1" / "pipeline.json", {
        "pipeline_id": "S1", "sweep_id": "S1", "cluster": "local", "sweep_dir": str(fake_sweep),
        "runs": [str(run), str(scratch / "runs" / "S1-best2-seed0")], "options": {"top_k": 2}, "stages": stages})
    return scratch


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_collect_copies_results_not_checkpoints_and_is_idempotent(local_pipeline, tmp_path):
    target = resolve(local_pipeline, "S1")
    out = collect(target, tmp_path / "results")
    first = tree_digest(out)
    assert out == tmp_path / "results" / "S1"
    for expected in ("pipeline.json", "runs/S1-best1-seed0/model.keras", "runs/S1-best1-seed0/test_metrics.json",
                     "runs/S1-best1-seed0/figures/confusion_matrix.png", "runs/S1-best1-seed0/history.csv",
                     "runs/S1-best1-seed0/config.yaml", "sweep/sweep.yaml", "sweep/sweep_status.json",
                     "sweep/trials/0001/model.keras", "sweep/trials/0000/model.keras", "sweep/trials/0002/history.csv",
                     "logs/agent/agent-1.log"):
        assert expected in first, expected
    assert "sweep/trials/0002/model.keras" not in first  # top_k 2 of the finished trials only
    assert not any("checkpoint" in p or "wandb" in p or p.endswith(".lock") for p in first)
    status = read_json(out / "sweep" / "sweep_status.json")
    assert [b["trial"] for b in status["best"]] == ["0001", "0000"]

    assert collect(target, tmp_path / "results") == out
    assert tree_digest(out) == first
    a = collect(target, tmp_path / "a.tar.gz")
    b = collect(target, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".a.tar.gz.*"))


def test_collect_never_copies_sync_markers(local_pipeline, tmp_path):
    """W&B's `.synced` markers and wandb-osh's command files say what was uploaded from scratch."""
    run = local_pipeline / "runs" / "S1-best1-seed0"
    offline = run / "wandb" / "offline-run-20261202_010000-abc"
    offline.mkdir(parents=True)
    (offline / "run-abc.wandb").write_bytes(b"W&B")
    (offline / "run-abc.wandb.synced").write_text("")
    (run / "run-abc.wandb.synced").write_text("")  # WANDB_DIR pointed at the run directory itself
    (run / "figures" / "0f1e2d.command").write_text(str(offline))
    (local_pipeline / "wandb-osh").mkdir()
    (local_pipeline / "wandb-osh" / "0f1e2d.command").write_text(str(offline))
    out = collect(resolve(local_pipeline, "S1"), tmp_path / "results")
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    assert "runs/S1-best1-seed0/figures/confusion_matrix.png" in files
    assert not [f for f in files if f.endswith((".synced", ".command", ".wandb")) or "wandb" in f], files


def test_status_and_collect_commands(local_pipeline, tmp_path):
    result = cli("status", "S1", "--out", str(local_pipeline), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["jobs"]
    assert [(r["stage"], r["State"]) for r in rows] == [
        ("agent", "COMPLETED"), ("agent", "FAILED"), ("train", "COMPLETED"), ("train", "SKIPPED")]
    listing = cli("status", "--out", str(local_pipeline))
    assert listing.returncode == 0 and "S1" in listing.stdout and "1 FAILED" in listing.stdout
    one_error_line(cli("status", "nope", "--out", str(local_pipeline)), "'nope': no pipeline, sweep or job group")
    result = cli("collect", "--dest", str(tmp_path / "r.tar.gz"), "--out", str(local_pipeline))
    assert result.returncode == 0 and (tmp_path / "r.tar.gz").is_file(), result.stderr


def test_jobstate_expands_pending_arrays(monkeypatch):
    class Out:
        returncode, stderr = 0, ""
        stdout = ("5_[0-2%2]|5|inat-agent|PENDING|00:00:00|0|0:0|\n"
                  "6|6|inat-train|CANCELLED by 0|00:00:01|1|0:0|billing=1,cpu=1,mem=2G,node=1\n")

    monkeypatch.setattr(jobstate.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(jobstate.subprocess, "run", lambda *a, **k: Out())
    rows = jobstate.sacct(["5_0", "6"])
    assert sorted(rows) == ["5_0", "5_1", "5_2", "6"] and rows["6"]["State"] == "CANCELLED"


# ---- the whole pipeline, locally -----------------------------------------------------------------------------

TINY_SWEEP = (
    "method: random\nmetric: {name: val_accuracy, goal: maximize}\n"
    "parameters:\n  learning_rate: {values: [0.01, 0.003]}\n  dropout: {values: [0.0, 0.2]}\n"
)
TINY_SET = ["--set", "epochs=2", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set",
            "num_dense=16", "--set", "batch_size=32"]


@pytest.mark.slow
def test_local_pipeline_end_to_end(tmp_path, demo_data):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY_SWEEP)
    scratch = tmp_path / "scratch"
    result = run_cli("pipeline", "--sweep", str(sweep), "--agents", "2", "--trials-per-agent", "1",
                     "--data", str(demo_data), "--out", str(scratch), *TINY_SET, "--top-k", "3",
                     "--what", "grid,confusion", "--cluster", "local", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)  # nothing but the JSON on stdout, training logs included
    assert out["cluster"] == "local" and set(out["job_ids"]) == {"agent", "train", "test", "visualize"}
    record = read_json(Path(out["out"]) / "pipeline.json")
    states = {s["stage"]: s["states"] for s in record["stages"]}
    # 2 trials for a top 3: the third retraining, its test and its figures have nothing to do
    done2 = ["COMPLETED", "COMPLETED", "SKIPPED"]
    assert states == {"agent": ["COMPLETED"] * 2, "train": done2, "test": done2, "visualize": done2 + ["COMPLETED"]}
    assert not Path(out["runs"][2]).exists()
    for run in map(Path, out["runs"][:2]):
        assert read_json(run / "test_metrics.json")["n"] == 60
        assert (run / "figures" / "confusion_matrix.png").is_file()
        assert read_json(run / "retrain.json")["sweep_id"] == out["sweep_id"]
    assert (scratch / "sweeps" / out["sweep_id"] / "trials.csv").is_file()

    # retrain-best on the same sweep: same settings resume (nothing to do), other settings are refused
    again = cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--cluster", "local")
    assert again.returncode == 0, again.stderr[-2000:]
    one_error_line(cli("retrain-best", "--sweep-id", out["sweep_id"], "--out", str(scratch), "--cluster",
                       "local", "--epochs", "1"), "already holds a retraining with other settings")
    collected = cli("collect", out["sweep_id"], "--dest", str(tmp_path / "results"), "--out", str(scratch))
    assert collected.returncode == 0, collected.stderr
    got = tree_digest(tmp_path / "results" / out["sweep_id"])
    assert {f"runs/{Path(r).name}/test_metrics.json" for r in out["runs"][:2]} <= set(got)
    assert not any("checkpoint/" in p for p in got)
    assert yaml.safe_load((tmp_path / "results" / out["sweep_id"] / "sweep" / "sweep.yaml").read_text())


@pytest.mark.slow
def test_a_restarted_agent_runs_only_the_trials_it_has_left(tmp_path, demo_data):
    """What a requeue does to an agent task: the same call again, under the same agent id."""
    from inat.config import parse_overrides
    from inat.sweep import new_sweep
    from inat.sweep.study import create_study
    from jobs.tasks import AgentTask

    (tmp_path / "s.yaml").write_text(TINY_SWEEP)
    fixed = {**parse_overrides([v for v in TINY_SET if v != "--set"]), "epochs": 1}
    sw, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", demo_data, fixed)
    create_study(sw, spec)
    assert len(AgentTask()(sw.dir, 0, 2)["trials"]) == 2
    again = AgentTask()(sw.dir, 0, 2)
    assert again["trials"] == [] and "count reached" in again["stop_reason"]
    assert len(AgentTask()(sw.dir, 0, 3)["trials"]) == 1
    attempts = read_json(sw.agents_dir / "agent-0.attempts.json")
    assert [a["outcome"] for a in attempts] == ["completed"] * 3


def test_a_profile_may_not_write_the_wandb_key_into_job_scripts():
    with pytest.raises(ConfigError, match="key 'setup' sets WANDB_API_KEY"):
        cluster.parse_profile({"setup": ["export WANDB_API_KEY=abc"]}, "p.yaml")
    with pytest.raises(ConfigError, match="key 'stages.train.extra' sets WANDB_API_KEY"):
        cluster.parse_profile({"stages": {"train": {"extra": {"export": "WANDB_API_KEY=abc"}}}}, "p.yaml")


def test_stage_overrides_apply_only_the_keys_they_set():
    profile = cluster.parse_profile({"time": 300, "mem": 8, "stages": {"test": {"time": 20}}}, "p.yaml")
    profile = cluster.parse_profile({"stages": {"visualize": {"gpus": 0}}}, "--cluster-set", profile)
    assert (profile.for_stage("test").time, profile.for_stage("test").mem) == (20, 8.0)
    assert profile.for_stage("visualize").gpus == 0 and profile.for_stage("visualize").time == 300
    assert profile.for_stage("train") == profile and profile.source == "--cluster-set"
    assert cluster.ClusterProfile.model_json_schema()["properties"]["time"]["minimum"] == 1
