"""What jobs cost, from sacct's fields: GPUs and CPUs in a TRES string, hours from AllocTRES x elapsed,
and the rows `status` and `sweep-status` add them to. tests/test_slurm.py checks CPU-hours of real jobs."""

from __future__ import annotations

import pytest

from jobs.slurm import jobstate


@pytest.mark.parametrize("tres, cpus, gpus", [
    ("billing=8,cpu=8,gres/gpu=2,mem=32G,node=1", 8, 2),
    ("gres/gpu:a100=4", 0, 4),
    # Slurm lists typed GPUs twice, plain and typed: the same 4 GPUs, not 8
    ("billing=16,cpu=16,gres/gpu=4,gres/gpu:a100=4,mem=64G,node=1", 16, 4),
    ("cpu=4,gres/gpu:a100=2,gres/gpu:v100=1,node=2", 4, 3),
    ("billing=1,cpu=1,mem=2G,node=1", 1, 0),
    ("cpu=2,gres/gpumem=40G,gres/shard=3", 2, 0),  # other GRES are not GPUs
    ("", 0, 0),
])
def test_gpus_and_cpus_in_a_tres_string(tres, cpus, gpus):
    assert jobstate.cpus_in(tres) == cpus and jobstate.gpus_in(tres) == gpus


def test_cost_is_the_allocation_times_elapsed():
    row = {"ElapsedRaw": "5400", "AllocTRES": "billing=8,cpu=8,gres/gpu=2,mem=32G,node=1"}
    assert jobstate.cost(row) == {"elapsed_s": 5400.0, "cpus": 8, "gpus": 2, "cpu_hours": 12.0, "gpu_hours": 3.0}
    # a trial that held the job for 30 of its minutes
    assert jobstate.cost(row, 1800)["gpu_hours"] == 1.0
    pending = jobstate.cost({"ElapsedRaw": "0", "AllocTRES": ""})
    assert pending["cpu_hours"] is None and pending["elapsed_s"] == 0
    assert jobstate.cost({}) == {"elapsed_s": None, "cpus": None, "gpus": None, "cpu_hours": None,
                                 "gpu_hours": None}
    rows = [jobstate.cost(row), jobstate.cost(row, 1800), pending]
    assert jobstate.total_cost(rows) == {"elapsed_s": 7200.0, "cpu_hours": 16.0, "gpu_hours": 4.0}


def test_task_rows_carry_cost_and_allocations_find_raw_ids(monkeypatch):
    class Out:
        returncode, stderr = 0, ""
        stdout = ("7_0|8|inat-agent|COMPLETED|01:00:00|3600|0:0|billing=4,cpu=4,gres/gpu:a100=1,node=1\n"
                  "7_1|7|inat-agent|RUNNING|00:30:00|1800|0:0|billing=4,cpu=4,gres/gpu:a100=1,node=1\n"
                  "9_[0-1]|9|inat-train|PENDING|00:00:00|0|0:0|\n"
                  # sacct -D: a job requeued once, its attempts in order; both attempts cost
                  "10|10|inat-train|REQUEUED|00:10:00|600|0:0|cpu=2,gres/gpu=1\n"
                  "10|10|inat-train|COMPLETED|00:05:00|300|0:0|cpu=2,gres/gpu=1\n")

    asked = []
    monkeypatch.setattr(jobstate.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(jobstate.subprocess, "run", lambda cmd, **k: asked.append(cmd) or Out())
    rows = jobstate.task_rows([{"stage": "agent", "task_ids": ["7_0", "7_1"]},
                               {"stage": "train", "task_ids": ["9_0", "9_1"], "dependency": "afterany:7"},
                               {"stage": "train", "task_ids": ["10"]}])
    assert "AllocTRES" in asked[0][asked[0].index("-o") + 1] and "-D" in asked[0]
    assert [(r["JobID"], r["State"], r["elapsed_s"], r["cpu_hours"], r["gpu_hours"]) for r in rows] == [
        ("7_0", "COMPLETED", 3600, 4.0, 1.0), ("7_1", "RUNNING", 1800, 2.0, 0.5), ("9_0", "PENDING", 0, None, None),
        ("9_1", "PENDING", 0, None, None), ("10", "COMPLETED", 900, 0.5, 0.25)]
    assert jobstate.total_cost(rows)["gpu_hours"] == 1.75
    # run.json records SLURM_JOB_ID, Slurm's own number of an array task: 8 is 7_0
    found = jobstate.allocations(["8", "7_1", "9"])
    assert found["8"]["JobID"] == "7_0" and found["7_1"]["JobIDRaw"] == "7" and "9" not in found
