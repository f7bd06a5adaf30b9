"""GPUs in a job (jobs/gpus.py): agents per job, their GPUs, memory and threads; the profile keys."""

from __future__ import annotations

import json
import time

import pytest

from conftest import cli, one_error_line
from inat.errors import ConfigError
from jobs.gpus import JobAgents, agents_per_job, check_visible, visible_gpus
from jobs.slurm.profile import load_profile


def _profile(*pairs):
    return load_profile(None, list(pairs))


@pytest.mark.parametrize("pairs, per_job", [
    ((), 1),                                             # a CPU job: one agent
    (("gpus=1",), 1),
    (("gpus=4",), 4),                                    # one agent per GPU
    (("gpus=2", "agents_per_gpu=2"), 4),                 # G x K
    (("gpus=4", "gpus_per_trial=2"), 2),                 # G / P
    (("gpus=4", "gpus_per_trial=4"), 1),
])  # fmt: skip
def test_agents_per_job(pairs, per_job):
    assert agents_per_job(_profile(*pairs)) == per_job


@pytest.mark.parametrize("pairs, message", [
    (("gpus=4", "gpus_per_trial=2", "agents_per_gpu=2"), "set only one of them above 1"),
    (("gpus=3", "gpus_per_trial=2"), "key 'gpus_per_trial' = 2 needs 'gpus' (GPUs per node) to be a multiple"),
    (("gpus_per_trial=2",), "key 'gpus_per_trial' = 2 needs 'gpus'"),
    (("agents_per_gpu=2",), "key 'agents_per_gpu' = 2 needs 'gpus' (GPUs per node) >= 1"),
    (("agents_per_gpu=0",), "agents_per_gpu"),
])  # fmt: skip
def test_bad_gpu_keys(pairs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _profile(*pairs)


def test_a_stage_is_checked_too(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("gpus: 2\nstages: {test: {gpus: 0, agents_per_gpu: 2}}\n")
    with pytest.raises(ConfigError, match=r"p.yaml \(stage test\): key 'agents_per_gpu' = 2 needs 'gpus'"):
        load_profile(path)


def test_launch_sweep_says_it_in_one_line(tmp_path):
    result = cli("launch-sweep", "--sweep", "configs/sweeps/sweep_partA.yaml", "--agents", "2", "--data", str(tmp_path),
                 "--cluster", "local", "--cluster-set", "agents_per_gpu=2")
    one_error_line(result, "--cluster-set: key 'agents_per_gpu' = 2 needs 'gpus'")


def test_n_agents_in_all():
    plan = JobAgents.for_profile(10, _profile("gpus=2", "agents_per_gpu=2"))
    assert (plan.per_job, plan.tasks) == (4, 3)
    assert [plan.indices(t) for t in range(plan.tasks)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert JobAgents(3).tasks == 3 and JobAgents(3).indices(2) == [2]  # one per job: agent i is task i


def test_each_agent_gets_its_gpu_and_its_share_of_cpus():
    envs = JobAgents(4, 4, agents_per_gpu=2).environments(4, gpus=["0", "1"], cpus=8)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "1", "1"]
    assert {e["INAT_THREADS"] for e in envs} == {"2"}
    assert {e["TF_FORCE_GPU_ALLOW_GROWTH"] for e in envs} == {"true"}
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in envs} == {"0.45"}
    envs = JobAgents(2, 2, gpus_per_trial=2).environments(2, gpus=["4", "5", "6", "7"], cpus=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4,5", "6,7"]  # Slurm's numbering, kept
    assert JobAgents(3, 3).environments(3, gpus=[], cpus=2) == [{"INAT_THREADS": "1"}] * 3  # never 0


def test_visible_gpus_and_a_job_with_too_few(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    with pytest.raises(ConfigError, match=r"runs 4 agent\(s\) needing 2 GPU\(s\) but sees 1"):
        check_visible(JobAgents(4, 4, agents_per_gpu=2), 4, ["0"])
    with pytest.raises(ConfigError, match=r"needing 2 GPU\(s\) but sees 0"):
        check_visible(JobAgents(4, 4, agents_per_gpu=2), 4, [])


SPEC = ("method: random\nmetric: {name: val_accuracy, goal: maximize}\n"
        "parameters:\n  learning_rate: {values: [0.01, 0.003]}\n  dropout: {values: [0.0, 0.2]}\n")


@pytest.mark.slow
def test_a_requeued_multi_agent_job_resumes_each_agents_own_trial(tmp_path, demo_data, monkeypatch):
    """One array task of 4 agents on 2 GPUs (as Slurm would list them), killed while every agent
    trains, then run again as a requeue runs it: each agent, by its id, resumes its own run, and
    every epoch of every run is in its history once."""
    import threading

    from inat.rundir import RunDir
    from inat.sweep import load_sweep
    from inat.sweep.status import trial_rows
    from jobs import agents
    from jobs.launch import create_sweep
    from jobs.tasks import AgentTask

    (tmp_path / "s.yaml").write_text(SPEC)
    fixed = ["epochs=8", "image_size=32", "filt_org=[8,8,8,8,8]", "num_dense=16", "batch_size=32"]
    sw, _ = create_sweep(tmp_path / "s.yaml", 4, 1, "local", demo_data, tmp_path / "scratch", fixed, None, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    plan = JobAgents(4, 4, agents_per_gpu=2)
    task = AgentTask()
    first = threading.Thread(target=lambda: pytest.raises(Exception, task, sw.dir, 0, 1, plan), daemon=True)
    first.start()

    def committed():
        return {d.name: RunDir(d).committed_epochs() for d in sw.trials_dir.iterdir()} if sw.trials_dir.is_dir() else {}

    deadline = time.time() + 300
    while not (len(committed()) == 4 and min(committed().values()) >= 1) and time.time() < deadline:
        time.sleep(0.2)
    assert len(committed()) == 4, committed()
    agents.stop(task._children)  # the job ends under its agents (a time limit, a preemption)
    first.join(60)
    assert not first.is_alive()
    at_kill = committed()
    assert all(1 <= n < 8 for n in at_kill.values()), at_kill

    AgentTask()(sw.dir, 0, 1, plan)  # the requeued task: the same agents, by id
    again = load_sweep(sw.scratch_root, sw.id)
    rows = trial_rows(again, again.spec())
    finished = [r for r in rows if r["state"] == "finished"]
    assert sorted(r["agent"] for r in finished) == ["agent-0", "agent-1", "agent-2", "agent-3"], rows
    assert sorted(r["run_dir"] for r in finished) == sorted(at_kill)  # each resumed its own run, no new one
    for name in at_kill:
        assert [int(r["epoch"]) for r in RunDir(sw.trials_dir / name).history()] == list(range(1, 9))
    for i in range(4):
        attempts = json.loads((sw.agents_dir / f"agent-{i}.attempts.json").read_text())
        assert [a["outcome"].split(":")[0] for a in attempts] == ["failed", "completed"], attempts
