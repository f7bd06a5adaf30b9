"""Sweep controls without a cluster: the stop flag in the agent loop, stop --now of local agent
processes (stand-in trials, no TensorFlow), the launch record add-agents reads, and the one-line errors.
tests/jobs/test_controls_slurm.py runs the same controls on the CI Slurm cluster with real trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, cli, fake_trial, make_sweep, one_error_line
from inat.fsutil import read_json
from inat.sweep import load_sweep
from inat.sweep.local import Outcome, run_agent
from inat.sweep.study import open_study
from jobs import agents as local_agents
from jobs import controls
from jobs.slurm.profile import load_profile

RUN_CAP = "run_cap: 4\n"


def trials_of(sweep):
    return open_study(sweep, sweep.spec()).get_trials(deepcopy=False)


def test_stopped_agent_finishes_its_trial_and_takes_no_new_one(tmp_path):
    sweep = make_sweep(tmp_path)
    started = []

    def trial(tr):
        started.append(tr.name)
        if len(started) == 2:  # stopped while this trial trains: it still finishes
            sweep.request_stop(now=False)
        return fake_trial(tr)

    result = run_agent(sweep, "agent-0", count=6, trial_fn=trial)
    assert started == ["0000", "0001"] and result["trials"] == [0, 1]
    assert "sweep stopped" in result["stop_reason"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials_of(sweep))
    # A new agent of a stopped sweep takes nothing; after the resume it does.
    assert run_agent(sweep, "agent-1", count=2, trial_fn=trial)["trials"] == []
    assert sweep.clear_stop() and not sweep.clear_stop()
    assert run_agent(sweep, "agent-1", count=2, trial_fn=fake_trial)["trials"] == [2, 3]


def test_a_stop_that_lands_while_an_agent_asks_hands_the_untrained_trial_on(tmp_path, monkeypatch):
    """The flag is read before the ask and again after it: a trial asked for after the stop is
    never trained, and comes back (same run directory, not counted twice against run_cap)."""
    sweep = make_sweep(tmp_path, fixed={"epochs": 2})
    sweep_spec = sweep.spec_path.read_text() + RUN_CAP
    sweep.spec_path.write_text(sweep_spec)
    real_ask = optuna.Study.ask

    def ask_then_stop(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        sweep.request_stop(now=False)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_stop)
    called = []
    result = run_agent(sweep, "agent-0", count=3, trial_fn=lambda tr: called.append(tr) or fake_trial(tr))
    assert called == [] and result["trials"] == [] and "sweep stopped" in result["stop_reason"]
    states = {t.number: t for t in trials_of(sweep)}
    assert states[0].state == TrialState.FAIL and "stopped before it trained" in states[0].user_attrs["error"]
    assert states[1].state == TrialState.WAITING and states[1].user_attrs["resumes"] == 0
    monkeypatch.setattr(optuna.Study, "ask", real_ask)
    sweep.clear_stop()
    ran = run_agent(sweep, "agent-1", count=10, trial_fn=fake_trial)
    assert "run_cap 4" in ran["stop_reason"]
    done = [t for t in trials_of(sweep) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4  # the cap counts runs: the handed-on trial is not one more
    assert sorted(t.user_attrs.get("run_dir", f"{t.number:04d}") for t in done) == ["0000", "0002", "0003", "0004"]


# ---- local agent processes ---------------------------------------------------------------------------

# A local agent with a slow stand-in trial; argv names the sweep and the agent, as `python -m jobs agent`'s does.
WORKER = r"""
import sys, time
from inat.sweep import load_sweep
from inat.sweep.local import Outcome, run_agent

scratch, sweep_id, agent_id = sys.argv[1:4]

def trial(tr):
    for epoch in (1, 2, 3):
        time.sleep(1.0)
        tr.report(epoch, tr.config.dropout)
    return Outcome(tr.config.dropout, 3, False)

run_agent(load_sweep(scratch, sweep_id), agent_id, 20, trial_fn=trial, heartbeat_s=0.2)
"""


def start_worker(sweep, name: str) -> local_agents.LocalAgent:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(sweep.scratch_root), sweep.id, name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return local_agents.LocalAgent(name, proc)


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_stop_now_ends_local_agents_and_their_trials_resume_later(tmp_path):
    sweep = make_sweep(tmp_path, fixed={"epochs": 3})
    workers = [start_worker(sweep, f"agent-{i}") for i in range(2)]
    local_agents.record_local(sweep, workers)
    try:
        wait_until(lambda: sum(t.state == TrialState.RUNNING and "agent" in t.user_attrs for t in trials_of(sweep)) == 2,
                   60, "both agents on a trial")
        result = cli("sweep-stop", sweep.id, "--now", "--out", str(sweep.scratch_root))
        assert result.returncode == 0, result.stderr
        assert "agents ended: agent-0, agent-1" in result.stdout
        assert all(w.proc.wait(5) is not None for w in workers)
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    trials = trials_of(sweep)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 2 and all("resumes" in t.user_attrs for t in waiting)
    for t in waiting:  # the killed trials: superseded, their run directories marked interrupted
        old = trials[t.user_attrs["resumes"]]
        assert old.state == TrialState.FAIL and "sweep-stop --now" in old.user_attrs["error"]
        assert read_json(sweep.trials_dir / t.user_attrs["run_dir"] / "run.json")["status"] == "interrupted"
    status = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root))
    assert "stopped at" in status.stdout and "stopped: the run goes on as trial" in status.stdout

    assert cli("sweep-resume", sweep.id, "--out", str(sweep.scratch_root)).returncode == 0
    resumed = run_agent(load_sweep(sweep.scratch_root, sweep.id), "agent-2", count=2, trial_fn=fake_trial)
    assert resumed["trials"] == [t.number for t in waiting]  # the stopped runs first, in their own directories
    assert {trials_of(sweep)[n].user_attrs["run_dir"] for n in resumed["trials"]} == {
        t.user_attrs["run_dir"] for t in waiting}


def test_a_stopped_run_waiting_at_run_cap_still_resumes_and_keeps_the_sweep_open(tmp_path):
    from inat.sweep.liveness import stop_running
    from inat.sweep.study import storage_for

    sweep = make_sweep(tmp_path, LOCAL_CAPPED, {"epochs": 2})
    run_agent(sweep, "agent-0", count=1, trial_fn=fake_trial)
    storage = storage_for(sweep)
    study = open_study(sweep, sweep.spec(), storage=storage)
    killed = study.ask()  # what an agent killed by sweep-stop --now leaves: a RUNNING trial of its own
    killed.set_user_attr("agent", "agent-1")
    assert stop_running(study, storage, sweep, {"agent-1"}, "superseded: stopped by sweep-stop --now") == [1]
    controls.check_open(sweep)  # run_cap 2 is reached, but a run waits to be resumed: not finished
    resumed = run_agent(sweep, "agent-2", count=5, trial_fn=fake_trial)
    assert resumed["trials"] == [2] and "run_cap 2" in resumed["stop_reason"]
    attrs = trials_of(sweep)[2].user_attrs  # and what the dashboard shows (run_path, state, ...)
    assert {k: attrs.get(k) for k in ("run_dir", "resumes", "agent")} == {"run_dir": "0001", "resumes": 1,
                                                                         "agent": "agent-2"}
    with pytest.raises(Exception, match="is finished"):
        controls.check_open(sweep)


def test_stop_now_of_a_wandb_sweep_ends_its_local_agents(tmp_path):
    sweep = make_sweep(tmp_path)
    sweep.backend, sweep.wandb_sweep = "wandb", "me/proj/abc123"
    sweep.save()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sweep.id, "agent-0"],
                               start_new_session=True)
    local_agents.record_local(sweep, [local_agents.LocalAgent("agent-0", sleeper)])
    try:
        result = cli("sweep-stop", sweep.id, "--now", "--out", str(sweep.scratch_root))
        assert result.returncode == 0, result.stderr
        assert sleeper.wait(5) == -15 and "agents ended: agent-0" in result.stdout
    finally:
        sleeper.kill()
    assert not sweep.stop_path.exists()  # W&B's agents do not read it: the server hands out the runs


def test_a_reused_pid_is_not_signalled(tmp_path):
    """The record names a pid; after the agent exits, the pid may belong to anything: it must name
    the sweep and the agent on its command line to be signalled."""
    sweep = make_sweep(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    local_agents.record_local(sweep, [local_agents.LocalAgent("agent-0", other)])
    try:
        assert controls.kill_local(sweep, print) == set()
        assert other.poll() is None
    finally:
        other.kill()


# ---- the launch record ---------------------------------------------------------------------------------


def test_launch_record_gives_back_the_profile_and_the_next_agent_id(tmp_path):
    sweep = make_sweep(tmp_path)
    image = tmp_path / "inat.sif"
    image.write_bytes(b"sif")
    profile = load_profile(REPO / "configs" / "clusters" / "example.yaml", ["time=30", "stages={agent: {gpus: 2}}"],
                           image)
    controls.record_launch(sweep, "slurm", 3, 5, profile)
    again = load_sweep(sweep.scratch_root, sweep.id)
    assert again.launch["agents"] == 3 and again.launch["trials_per_agent"] == 5
    back = controls.launch_profile(again)
    for stage in ("agent", "train", "test", "visualize"):
        assert back.for_stage(stage).model_dump(exclude={"source"}) == profile.for_stage(stage).model_dump(
            exclude={"source"})
    assert back.for_stage("agent").gpus == 2 and back.image == str(image)
    assert controls.next_agent_index(again) == 3
    sweep.agents_dir.mkdir(exist_ok=True)
    for name in ("agent-4.json", "agent-7.attempts.json", "agent-123-9.log", "agent-x.log"):
        (sweep.agents_dir / name).write_text("{}")
    assert controls.next_agent_index(again) == 8  # past agent-7; sbatch's agent-<job>-<task> ids are not ours
    image.unlink()  # gone since the launch: add-agents says so in one line
    with pytest.raises(Exception, match="image"):
        controls.launch_profile(again)


# ---- one-line errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["sweep-stop"], ["sweep-resume"], ["add-agents", "--agents", "1"]])
def test_unknown_sweep_is_one_line(tmp_path, command):
    result = cli(command[0], "20990101-000000-abcd", *command[1:], "--out", str(tmp_path / "scratch"))
    one_error_line(result, "sweep '20990101-000000-abcd' not found")


def test_bad_agent_count_is_one_line(tmp_path):
    sweep = make_sweep(tmp_path)
    for n in ("0", "-2"):
        one_error_line(cli("add-agents", sweep.id, "--agents", n, "--out", str(sweep.scratch_root)),
                       f"--agents {n}: expected an integer >= 1")
    one_error_line(cli("add-agents", sweep.id, "--agents", "1", "--out", str(sweep.scratch_root)),
                   "no launch record")


@pytest.mark.parametrize("command", [["sweep-stop"], ["sweep-stop", "--now"], ["sweep-resume"],
                                     ["add-agents", "--agents", "2"]])
def test_finished_sweep_is_one_line(tmp_path, command):
    sweep = make_sweep(tmp_path, LOCAL_CAPPED, {"epochs": 2})
    controls.record_launch(sweep, "local", 1, None, None)
    run_agent(sweep, "agent-0", count=5, trial_fn=fake_trial)
    result = cli(command[0], sweep.id, *command[1:], "--out", str(sweep.scratch_root))
    one_error_line(result, f"sweep {sweep.id} is finished (run_cap 2 reached)")
    assert not sweep.stop_path.exists()


def test_add_agents_to_a_stopped_sweep_says_resume_first(tmp_path):
    sweep = make_sweep(tmp_path)
    controls.record_launch(sweep, "local", 1, 2, None)
    assert cli("sweep-stop", sweep.id, "--out", str(sweep.scratch_root)).returncode == 0
    one_error_line(cli("add-agents", sweep.id, "--agents", "1", "--out", str(sweep.scratch_root)),
                   f"run `inat-jobs sweep-resume {sweep.id}` first")
    assert not sweep.agents_dir.exists()  # nothing started


def test_wandb_sweep_stop_says_what_works(tmp_path):
    sweep = make_sweep(tmp_path)
    sweep.backend, sweep.wandb_sweep = "wandb", "me/proj/abc123"
    sweep.save()
    one_error_line(cli("sweep-stop", sweep.id, "--out", str(sweep.scratch_root)), "wandb sweep --pause|--stop me/proj/abc123")
    one_error_line(cli("sweep-resume", sweep.id, "--out", str(sweep.scratch_root)), "wandb sweep --resume me/proj/abc123")


def test_help_has_an_example():
    for command in ("sweep-stop", "sweep-resume", "add-agents"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Example: inat-jobs " + command in result.stdout, result.stdout


LOCAL_CAPPED = """
method: random
metric: {name: val_accuracy, goal: maximize}
run_cap: 2
parameters:
  dropout: {min: 0.0, max: 0.5}
"""


@pytest.mark.slow
def test_add_agents_to_a_local_sweep_starts_more_real_agents(tmp_path, demo_data):
    """launch-sweep --cluster local, then add-agents: one more `python -m jobs agent` process, with the
    launch's trials per agent and the next agent id; the trial count rises and no trial runs twice."""
    import json

    from conftest import SLURM_SWEEP, SLURM_TINY, run_cli

    (tmp_path / "s.yaml").write_text(SLURM_SWEEP)
    out = ["--out", str(tmp_path / "scratch")]
    launched = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--cluster", "local", "--agents", "1",
                       "--trials-per-agent", "1", "--data", str(demo_data), *out, *SLURM_TINY, "--wait", "--json")
    assert launched.returncode == 0, launched.stderr
    sweep_id = json.loads(launched.stdout)["sweep_id"]
    added = cli("add-agents", sweep_id, "--agents", "1", *out, "--json")
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert result["cluster"] == "local" and result["agents"] == ["agent-1"]
    pid = int(result["job_ids"][0])
    _, status = os.waitpid(pid, 0)  # a child of this process: add-agents ran in it
    sweep = load_sweep(tmp_path / "scratch", sweep_id)
    assert status == 0, (sweep.agents_dir / "agent-1.log").read_text()[-2000:]
    assert [r["agent"] for r in local_agents.local_records(sweep)] == ["agent-0", "agent-1"]
    assert sweep.launch["agents"] == 2 and sweep.launch["trials_per_agent"] == 1
    trials = trials_of(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs["agent"] for t in trials] == ["agent-0", "agent-1"]


def test_add_agents_dry_run_shows_the_array_and_writes_nothing(tmp_path):
    """--dry-run: the sbatch script of the new agents' array, sized by the launch profile's GPU plan
    (gpus 2 x agents_per_gpu 2: 5 agents are 2 tasks), and no file, record or id is taken."""
    sweep = make_sweep(tmp_path)
    profile = load_profile(REPO / "configs" / "clusters" / "ci.yaml", ["gpus=2", "agents_per_gpu=2"])
    controls.record_launch(sweep, "slurm", 3, 1, profile)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    shown = cli("add-agents", sweep.id, "--agents", "5", "--out", str(sweep.scratch_root), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "agent: would submit an array of 2 tasks" in shown.stdout
    assert "#SBATCH --gpus-per-node=2" in shown.stdout and "#SBATCH --array=0-1%2" in shown.stdout
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    assert load_sweep(sweep.scratch_root, sweep.id).launch["agents"] == 3
    as_json = cli("add-agents", sweep.id, "--agents", "1", "--out", str(sweep.scratch_root), "--dry-run", "--json")
    (sub,) = json.loads(as_json.stdout)["submissions"]
    assert sub["stage"] == "agent" and sub["array_size"] == 1
