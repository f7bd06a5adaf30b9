"""GPUs in a job (jobs/gpus.py): agents per job, their GPUs, memory and threads; the profile keys."""

from __future__ import annotations

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
