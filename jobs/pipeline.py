"""The whole assignment as one command: sweep agents -> retrain the best -> test -> figures.

On Slurm all four stages are submitted at once, chained with `--dependency=afterany:<previous array>`:

    agent      N tasks      AgentTask: trials of the sweep (a failed agent does not stop the rest)
    train      K*S tasks    RetrainTask: task i looks up rank k / seed s when it starts
    test       K*S tasks    evaluate SCRATCH/runs/<sweep_id>-best<k>-seed<s>/
    visualize  K*S+1 tasks  that run's figures; the last task writes the sweep report

`afterany`, not `afterok`: with `afterok` one failed agent (or one failed retraining) would leave every
later stage pending forever (DependencyNeverSatisfied). Each stage instead checks its own inputs: with
fewer finished trials than K the extra retraining tasks and their tests/figures end as "skipped", and
a run whose training failed fails its test job, which `status` shows.

With `--cluster local` the stages run one after another on this machine: the agents as local
processes (as `launch-sweep --cluster local`), then retraining, test and figures in this process,
calling the same task functions.

The pipeline id is the sweep id; SCRATCH/pipelines/<id>/pipeline.json records options, run
directories and every stage's job ids (and, for local runs, each task's state).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable

from inat import layout
from inat.fsutil import read_json, write_json
from inat.sweep import Sweep

from . import agents
from .gpus import JobAgents
from .slurm import jobstate
from .slurm.profile import STAGES, ClusterProfile
from .slurm.submit import DryRun, Submitted, run_calls, submit_calls
from .tasks import AgentTask, RetrainTask, evaluate_run, retrain_dirs, sweep_report, visualize_run


def pipeline_dir(scratch: Path, pipeline_id: str) -> Path:
    return layout.pipelines_dir(scratch) / pipeline_id


def stage_calls(sw: Sweep, options: dict[str, Any], profile: ClusterProfile | None = None) -> dict[str, list]:
    """Every stage's (function, args) list; the same for Slurm and local runs. `profile` (Slurm):
    its GPU keys decide the agents per job and the GPUs per retraining run (`jobs.gpus`)."""
    top_k, seeds = options["top_k"], options["seeds"]
    runs_root = layout.runs_dir(sw.scratch_root)
    runs = retrain_dirs(runs_root, sw.id, top_k, seeds)
    plan = JobAgents(options["agents"]) if profile is None else JobAgents.for_profile(
        options["agents"], profile.for_stage("agent"))
    replicas = 1 if profile is None else profile.for_stage("train").gpus_per_trial
    return {
        "agent": [(AgentTask(), (sw.dir, i, options["trials_per_agent"], plan)) for i in range(plan.tasks)],
        "train": [(RetrainTask(), (sw.dir, runs_root, i, top_k, seeds, options["epochs"], replicas))
                  for i in range(len(runs))],
        "test": [(evaluate_run, (run, None, None, True)) for run in runs],
        "visualize": [(visualize_run, (run, options["what"], None, 0, 200, True, True)) for run in runs]
        + [(sweep_report, (sw.dir,))],
    }


def new_record(sw: Sweep, cluster: str, options: dict[str, Any]) -> dict[str, Any]:
    runs = retrain_dirs(layout.runs_dir(sw.scratch_root), sw.id, options["top_k"], options["seeds"])
    return {
        "pipeline_id": sw.id, "sweep_id": sw.id, "cluster": cluster,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scratch": str(sw.scratch_root),
        "sweep_dir": str(sw.dir), "runs": [str(r) for r in runs], "options": options, "stages": [],
    }


def submit_pipeline(sw: Sweep, profile: ClusterProfile, options: dict[str, Any],
                    dry_run: DryRun | None = None) -> dict[str, Any]:
    """Submit the four stages to Slurm now, each depending on the previous; returns the record.
    With `dry_run` each stage is only shown, and nothing is written."""
    record = new_record(sw, "slurm", options)
    path = pipeline_dir(sw.scratch_root, sw.id) / "pipeline.json"
    folders = layout.jobs_dir(sw.scratch_root) / sw.id
    calls = stage_calls(sw, options, profile)
    previous: Submitted | None = None
    try:
        for stage in STAGES:
            dependency = f"afterany:{previous.job_id}" if previous else None
            previous = submit_calls(stage, calls[stage], profile, folders / stage, dependency, dry_run)
            record["stages"].append(previous.record())
            if dry_run is None:
                write_json(path, record)
    except BaseException:
        if dry_run is not None:
            raise
        jobstate.cancel(record["stages"])  # no half pipeline: its later stages would never come
        record["status"] = "submission failed; submitted jobs cancelled"
        write_json(path, record)
        raise
    return record


def run_local(sw: Sweep, options: dict[str, Any], say: Callable[[str], None],
              quiet_stdout: bool) -> dict[str, Any]:
    """Run the stages one after another on this machine; returns the record with every task's state."""
    record = new_record(sw, "local", options)
    path = pipeline_dir(sw.scratch_root, sw.id) / "pipeline.json"
    write_json(path, record)
    calls = stage_calls(sw, options)
    redirect = contextlib.redirect_stdout(sys.stderr) if quiet_stdout else contextlib.nullcontext()
    with redirect:
        say(f"agent: starting {options['agents']} local agent process(es); logs: {agents.logs_glob(sw)}")
        started = agents.start_local(sw, options["agents"], options["trials_per_agent"])
        failed = {a.id for a in agents.wait(started, say)}
        states = ["FAILED" if a.id in failed else "COMPLETED" for a in started]
        errors = [None if s == "COMPLETED" else "see the agent log" for s in states]
        agent_rec = Submitted("agent", "local", [f"pid_{a.proc.pid}" for a in started], str(sw.agents_dir), "local",
                              states=states, errors=errors)
        record["stages"].append(agent_rec.record())
        write_json(path, record)
        for stage in STAGES[1:]:
            record["stages"].append(run_calls(stage, calls[stage], say).record())
            write_json(path, record)
    return record


def load_record(scratch: Path, pipeline_id: str) -> dict[str, Any] | None:
    path = pipeline_dir(scratch, pipeline_id) / "pipeline.json"
    return read_json(path) if path.is_file() else None


def job_ids(record: dict[str, Any]) -> dict[str, list[str]]:
    return {s["stage"]: s["task_ids"] for s in record["stages"]}
