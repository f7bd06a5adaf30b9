"""Sweep controls on the CI Slurm cluster, with real (tiny) trials: stop while agents run, stop
--now, resume, add agents. Only this test's jobs are looked at (by the ids its sweep recorded), so
other users' jobs in the queue do not matter."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from optuna.trial import TrialState

from conftest import CI_PROFILE, SLURM_TINY, cli, require
from inat.fsutil import read_json
from inat.rundir import RunDir
from inat.sweep import load_sweep
from inat.sweep.study import open_study
from jobs.controls import slurm_records
from jobs.slurm import jobstate

SPEC = ("method: random\nmetric: {name: val_accuracy, goal: maximize}\n"
        "parameters:\n  learning_rate: {values: [0.01, 0.003]}\n  dropout: {min: 0.0, max: 0.3}\n")
# About 0.07 s an epoch on the CI node (one thread for the job's one CPU; 0.5 s when TensorFlow's
# pools oversubscribed it): 200 epochs leave a trial running long enough to be stopped.
N_EPOCHS = 200
EPOCHS = ["--set", f"epochs={N_EPOCHS}"]


def trials_of(sweep):
    return open_study(sweep, sweep.spec()).get_trials(deepcopy=False)


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def training(sweep, agents: set[str]) -> bool:
    """Each of `agents` is on a trial that has committed at least one epoch."""
    on: set = {t.user_attrs.get("agent") for t in trials_of(sweep) if t.state == TrialState.RUNNING
          and RunDir(sweep.trials_dir / t.user_attrs.get("run_dir", f"{t.number:04d}")).committed_epochs() >= 1}
    return agents <= on


def wait_jobs(sweep, timeout: float = 300) -> list[dict]:
    return jobstate.wait_for(slurm_records(sweep), poll_s=2.0, timeout_s=timeout, say=lambda _: None)


@pytest.mark.slurm
def test_stop_resume_and_add_agents_on_slurm(tmp_path, demo_data):
    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    (tmp_path / "s.yaml").write_text(SPEC)
    scratch = tmp_path / "scratch"
    out = ["--out", str(scratch)]
    env = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE)}
    launched = cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--cluster", "slurm", "--agents", "2",
                   "--trials-per-agent", "2", "--data", str(demo_data), *out, *SLURM_TINY, *EPOCHS, "--json", env=env)
    assert launched.returncode == 0, launched.stderr
    sweep_id = json.loads(launched.stdout)["sweep_id"]
    sweep = load_sweep(scratch, sweep_id)

    # 1. Stop while an agent trains (the other may still be queued behind other users' jobs): its
    # trial finishes, and no trial starts after the stop.
    wait_until(lambda: training(sweep, {"agent-0"}) or training(sweep, {"agent-1"}), 300, "an agent training")
    stopped_at = dt.datetime.now()
    assert cli("sweep-stop", sweep_id, *out).returncode == 0
    rows = wait_jobs(sweep)
    assert {r["State"] for r in rows} == {"COMPLETED"}, rows
    trials = trials_of(sweep)
    trained = [t for t in trials if (sweep.trials_dir / t.user_attrs.get("run_dir", f"{t.number:04d}")).exists()]
    assert all(t.datetime_start < stopped_at for t in trained), [(t.number, t.datetime_start) for t in trained]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trained)
    for t in trials:  # any other trial was asked for after the stop and handed on untrained
        assert t in trained or "stopped before it trained" in t.user_attrs.get("error", ""), t
    first_count = len([t for t in trials if t.state == TrialState.COMPLETE])
    untrained = len(trials) - len(trained)
    assert 1 <= first_count < 4  # the two agents were allowed two each: the stop cut them short
    for agent in ("agent-0", "agent-1"):
        log = read_json(sweep.agents_dir / f"{agent}.attempts.json")
        assert [a["outcome"] for a in log] == ["completed"]

    # 2. Resume, add an agent (the same profile, trials per agent: from the sweep's record), stop it --now.
    assert cli("sweep-resume", sweep_id, *out).returncode == 0
    added = cli("add-agents", sweep_id, "--agents", "1", *out, "--json", env={"INAT_CLUSTER_PROFILE": ""})
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["agents"] == ["agent-2"]
    wait_until(lambda: training(sweep, {"agent-2"}), 300, "the added agent training")
    now = cli("sweep-stop", sweep_id, "--now", *out, "--json")
    assert now.returncode == 0, now.stderr
    result = json.loads(now.stdout)
    assert result["agents_stopped"] == ["agent-2"] and len(result["trials_resumable"]) == 1
    rows = wait_jobs(sweep)
    assert [r["State"] for r in rows if r["JobID"] == json.loads(added.stdout)["job_ids"][0]] == ["CANCELLED"]
    trials = trials_of(sweep)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["resumes"] == result["trials_resumable"][0]
    interrupted = sweep.trials_dir / waiting[0].user_attrs["run_dir"]
    epochs_at_stop = RunDir(interrupted).committed_epochs()
    assert 1 <= epochs_at_stop < N_EPOCHS and read_json(interrupted / "run.json")["status"] == "interrupted"

    # 3. Resume and add another agent: it resumes the stopped run, then runs a new trial.
    assert cli("sweep-resume", sweep_id, *out).returncode == 0
    again = cli("add-agents", sweep_id, "--agents", "1", *out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["agents"] == ["agent-3"]
    rows = wait_jobs(sweep)
    assert [r["State"] for r in rows if r["JobID"] == json.loads(again.stdout)["job_ids"][0]] == ["COMPLETED"]
    trials = trials_of(sweep)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == first_count + 2  # the count rose: the resumed run and one new trial
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    run_dirs = [t.user_attrs.get("run_dir", f"{t.number:04d}") for t in done]
    assert len(set(run_dirs)) == len(run_dirs)  # no trial ran twice
    assert waiting[0].user_attrs["run_dir"] in run_dirs
    for name in run_dirs:  # and no epoch twice: the resumed run went on where it was stopped
        epochs = [int(r["epoch"]) for r in RunDir(sweep.trials_dir / name).committed_history()]
        assert epochs == list(range(1, N_EPOCHS + 1)), (name, epochs)
    assert {p.name.split(".")[0] for p in sweep.agents_dir.glob("*.attempts.json")} == {
        "agent-0", "agent-1", "agent-2", "agent-3"}
    print(f"\nsweep controls on Slurm: stop: {first_count} trial(s) finished, none trained after it, "
          f"{untrained} asked while stopping and handed on untrained; --now at epoch {epochs_at_stop}/30; "
          f"{len(done)} finished at the end, {len(trials)} Optuna trials")


@pytest.mark.slurm
def test_agents_added_to_a_pipeline_hold_back_its_retraining(tmp_path, demo_data):
    """A pipeline's retraining starts after its agents (afterany): agents added while it is still
    pending are added to its dependency, so it ranks their trials too."""
    import subprocess

    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    (tmp_path / "s.yaml").write_text(SPEC)
    out = ["--out", str(tmp_path / "scratch")]
    env = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE)}
    piped = cli("pipeline", "--sweep", str(tmp_path / "s.yaml"), "--cluster", "slurm", "--agents", "1",
                "--trials-per-agent", "1", "--top-k", "1", "--data", str(demo_data), *out, *SLURM_TINY, "--json",
                env=env)
    assert piped.returncode == 0, piped.stderr
    record = json.loads(piped.stdout)
    ours = {t.split("_")[0] for ids in record["job_ids"].values() for t in ids}
    try:
        added = cli("add-agents", record["sweep_id"], "--agents", "1", *out, "--json")
        assert added.returncode == 0, added.stderr
        result = json.loads(added.stdout)
        new_job = result["job_ids"][0].split("_")[0]
        ours.add(new_job)
        assert result["pipeline_held"] is True
        train = record["job_ids"]["train"][0].split("_")[0]
        shown = subprocess.run(["scontrol", "show", "job", "-o", train], capture_output=True, text=True).stdout
        dependency = next(f for f in shown.split() if f.startswith("Dependency="))
        assert f"{new_job}_" in dependency or f":{new_job}" in dependency, dependency
        stage = next(s for s in read_json(tmp_path / "scratch" / "pipelines" / record["sweep_id"] / "pipeline.json")
                     ["stages"] if s["stage"] == "train")
        assert stage["dependency"].endswith(f":{new_job}")
    finally:
        subprocess.run(["scancel", *sorted(ours)], capture_output=True)
