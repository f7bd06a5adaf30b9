"""The sweep commands as a user meets them: one-line errors, the W&B no-key path, and a real local sweep
of 2 agent processes x 3 trials end to end."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, cli, fake_trial, make_sweep, one_error_line, run_cli
from inat.config import RunConfig
from inat.fsutil import read_json

PART_A = str(REPO / "configs" / "sweeps" / "sweep_partA.yaml")


@pytest.fixture
def data_dir(tmp_path):
    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    return str(tmp_path / "data")


def test_sweep_commands_are_listed():
    out = cli("--help").stdout
    for name in ("launch-sweep", "agent", "sweep-status"):
        assert name in out


@pytest.mark.parametrize(
    "sweep_text, extra, fragment",
    [
        ("method: bayes\nparameters:\n  filters: {values: [1]}\n", [], "parameters.filters: unknown parameter"),
        ("method: evolution\nparameters:\n  dropout: {values: [0.1]}\n", [], "method 'evolution' is invalid"),
        ("method: bayes\nparameters:\n  dropout: {distribution: uniformly, min: 0, max: 1}\n", [],
         "distribution 'uniformly' is invalid"),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1, 3]}\n", [], "key 'dropout' = 3"),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1]}\n", ["--set", "dropout=0.2"],
         "'dropout' is set by the sweep file"),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1]}\n", ["--agents", "0"], "--agents 0"),
        ("method: bayes\nparameters:\n  dropout: {distribution: normal, mu: 0.2, sigma: 0.1}\n", [],
         "no Optuna equivalent"),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1]}\n", ["--trials-per-agent", "-1"], "--trials-per-agent"),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1]}\n", ["--backend", "comet"], "--backend 'comet'"),
    ],
)
def test_launch_sweep_rejects_bad_input_in_one_line(tmp_path, data_dir, sweep_text, extra, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(sweep_text)
    args = ["launch-sweep", "--sweep", str(path), "--data", data_dir, "--out", str(tmp_path / "scratch"),
            "--cluster", "local", "--trials-per-agent", "1"]
    if "--agents" not in extra:
        args += ["--agents", "1"]
    line = one_error_line(cli(*args, *extra), fragment)
    if not extra or "--set" in extra:
        assert str(path) in line  # a problem in (or with) the file names the file
    assert not (tmp_path / "scratch" / "sweeps").exists() or not any((tmp_path / "scratch" / "sweeps").iterdir())


def test_unbounded_local_sweep_is_refused(tmp_path, data_dir):
    result = cli("launch-sweep", "--sweep", PART_A, "--agents", "2", "--cluster", "local", "--data", data_dir,
                 "--out", str(tmp_path))
    one_error_line(result, "--trials-per-agent")


def test_unknown_sweep_id_says_where_it_looked(tmp_path):
    for args in (["sweep-status", "nope"], ["agent", "--sweep-id", "nope"]):
        line = one_error_line(cli(*args, "--out", str(tmp_path)), "sweep 'nope' not found")
        assert str(tmp_path / "sweeps" / "nope") in line


def test_wandb_backend_without_key_fails_fast_in_one_line(tmp_path, data_dir):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "jobs", "launch-sweep", "--sweep", PART_A, "--agents", "2", "--backend", "wandb",
         "--data", data_dir, "--out", str(tmp_path / "scratch")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    elapsed = time.monotonic() - start
    line = one_error_line(result, "--backend local")
    assert "API key" in line
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not (tmp_path / "scratch" / "sweeps").exists()


@pytest.mark.slow
def test_local_sweep_two_agent_processes_end_to_end(tmp_path):
    from inat.data.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", n_train_per_class=6, n_test_per_class=2)
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(
        "method: bayes\nmetric: {name: val_accuracy, goal: maximize}\n"
        "early_terminate: {type: hyperband, min_iter: 1, eta: 2, s: 1}\n"  # judged after epochs 2, 3 and 4
        "parameters:\n"
        "  learning_rate: {values: [0.01, 0.003, 1.0e-6]}\n"  # 1e-6 barely learns: a pruning candidate
        "  kernel_size: {values: [[3, 3, 3, 3, 3], [5, 3, 3, 3, 3]]}\n"
        "  dropout: {distribution: uniform, min: 0.0, max: 0.4}\n"
    )
    scratch = tmp_path / "scratch"
    result = run_cli(
        "launch-sweep", "--sweep", str(sweep), "--cluster", "local", "--agents", "2", "--trials-per-agent", "3",
        "--data", str(data), "--out", str(scratch), "--wait", "--json",
        "--set", "epochs=4", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set", "num_dense=8",
        "--set", "batch_size=16",
        env={"WANDB_MODE": "offline"},  # each trial is an offline W&B run, as on an air-gapped node
    )
    assert result.returncode == 0, result.stderr
    launched = json.loads(result.stdout)  # only JSON on stdout
    assert set(launched) == {"sweep_id", "job_ids", "out"} and len(launched["job_ids"]) == 2
    sweep_dir = scratch / "sweeps" / launched["sweep_id"]
    assert str(sweep_dir) == launched["out"]
    assert (sweep_dir / "sweep.yaml").read_text() == sweep.read_text()
    meta = read_json(sweep_dir / "sweep.json")
    assert meta["backend"] == "local" and meta["fixed"]["epochs"] == 4 and meta["data_root"] == str(data)
    # The agents share one decoded-image cache under SCRATCH/cache (see tests/data/test_cache.py).
    manifests = list((scratch / "cache").glob("*/32px/manifest.json"))
    assert len(manifests) == 1 and len(read_json(manifests[0])["files"]) == 10 * 8

    status = cli("sweep-status", launched["sweep_id"], "--out", str(scratch), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    trials = report["trials"]
    assert sorted(t["number"] for t in trials) == list(range(6))  # 6 distinct trials, none lost
    assert {t["agent"] for t in trials} == {"agent-0", "agent-1"}
    assert sum(report["counts"].values()) == 6 and set(report["counts"]) <= {"finished", "pruned"}
    for t in trials:
        run = sweep_dir / "trials" / t["trial"]
        info = read_json(run / "run.json")
        if t["state"] == "pruned":
            assert info["status"] == "pruned" and t["epochs_done"] < 4
        else:
            assert info["status"] == "completed" and t["epochs_done"] == 4
        assert RunConfig.load(run / "config.yaml").learning_rate == t["params"]["learning_rate"]
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and launched["sweep_id"] in offline[0].name

    assert report["best"] is not None
    best = RunConfig.load(report["best"]["config_path"])
    assert best.to_dict() == report["best"]["config"] and best.epochs == 4 and best.image_size == 32

    text = cli("sweep-status", launched["sweep_id"], "--out", str(scratch))
    assert text.returncode == 0 and "6 trial(s)" in text.stdout
    emitted = text.stdout.split("--data DATA\n", 1)[1]
    assert RunConfig.from_dict(yaml.safe_load(emitted)) == best


def test_status_of_a_wandb_sweep_reads_the_trial_run_directories(tmp_path):
    """The W&B API may be out of reach: status and best configs come from scratch storage."""
    from inat.fsutil import write_csv, write_json
    from inat.sweep import new_sweep

    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    sweep, _ = new_sweep(tmp_path, PART_A, "wandb", tmp_path / "data", {"epochs": 2})
    for run_id, status, accs in (("abc123", "completed", [0.2, 0.4]), ("def456", "pruned", [0.1]),
                                 ("ghi789", "completed", [0.3, 0.35])):
        run = sweep.trials_dir / run_id
        RunConfig.from_dict({"epochs": 2, "dropout": 0.4 if run_id == "abc123" else 0.0}).save(run / "config.yaml")
        write_json(run / "run.json", {"status": status, "started": "2026-12-02T01:00:00+0000",
                                      "updated": "2026-12-02T01:30:00+0000"})
        write_csv(run / "history.csv", ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"],
                  [[i + 1, 1, 0.5, 1, a, 1] for i, a in enumerate(accs)])
    result = cli("sweep-status", sweep.id, "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # run.json's times give each trial's wall time; outside Slurm there is no job to charge it to
    assert [(t["seconds"], t["slurm_job_id"]) for t in report["trials"]] == [(1800.0, None)] * 3
    assert report["total"] is None and "cpu_hours" not in report["trials"][0]
    assert report["counts"] == {"finished": 2, "pruned": 1}
    assert report["best"]["trial"] == "abc123" and report["best"]["val_accuracy"] == 0.4
    assert RunConfig.load(report["best"]["config_path"]).dropout == 0.4


def _snapshot(root):
    """Every file and directory below `root` but best_config.yaml: size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.name != "best_config.yaml"}


def test_sweep_status_only_reads_unless_told_to_fail_stale_trials(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from inat.fsutil import write_json
    from inat.sweep.local import run_agent
    from inat.sweep.study import storage_for

    sweep = make_sweep(tmp_path)
    run_agent(sweep, "a0", count=1, trial_fn=fake_trial)  # trial 0 finished: there is a best config
    study = optuna.load_study(study_name=sweep.id, storage=storage_for(sweep))
    dead = study.ask()  # trial 1: its agent's node died mid-trial
    run = sweep.trials_dir / f"{dead.number:04d}"
    run.mkdir()
    write_json(run / "run.json", {"status": "running"})
    (run / "heartbeat").touch()
    old = time.time() - 3600
    os.utime(run / "heartbeat", (old, old))
    before, run_json = _snapshot(sweep.dir), (run / "run.json").read_bytes()

    text = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root))
    assert text.returncode == 0, text.stderr
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(f"{dead.number:04d} "))
    assert line.split()[1] == "running" and re.search(r"\(stale: no heartbeat for 36\d\d s\)", line), line
    best = sweep.dir / "best_config.yaml"
    written = best.stat().st_mtime_ns
    assert RunConfig.load(best).epochs == 6
    result = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root), "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["trials"][dead.number]
    assert row["state"] == "running" and row["stale_s"] >= 3600 and row["error"] is None

    assert _snapshot(sweep.dir) == before, "sweep-status changed the study or a trial directory"
    assert (run / "run.json").read_bytes() == run_json
    assert study.get_trials()[dead.number].state == TrialState.RUNNING
    assert best.stat().st_mtime_ns == written  # the same best: not rewritten

    result = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root), "--json", "--fail-stale")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["trials"][dead.number]
    assert row["state"] == "failed" and "no heartbeat for 36" in row["error"]
    assert study.get_trials()[dead.number].state == TrialState.FAIL
    assert read_json(run / "run.json")["status"] == "failed"


@pytest.mark.parametrize("command", ["sweep-status", "agent"])
def test_stale_after_below_three_heartbeats_is_refused(tmp_path, command):
    sweep = make_sweep(tmp_path)
    before = _snapshot(sweep.dir)
    args = [sweep.id] if command == "sweep-status" else ["--sweep-id", sweep.id, "--count", "1"]
    result = cli(command, *args, "--out", str(sweep.scratch_root), "--stale-after", "10")
    one_error_line(result, "--stale-after 10: expected at least 90 seconds (3 heartbeat intervals of 30 s)")
    assert _snapshot(sweep.dir) == before
