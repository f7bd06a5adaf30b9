"""Submitting work to Slurm with submitit: one array job per stage, recorded where `status` finds it.

Every submission goes through `submit_calls`: N calls become one array job (`executor.batch()`),
one call one plain job. Its submitit folder is SCRATCH/jobs/<owner>/<stage>/ (sbatch script, pickles,
and the logs <jobid>_<task>_0_log.out/.err), and a record of it is appended to the owner's job list:

    SCRATCH/sweeps/<id>/jobs.json         agents and retraining of a sweep
    SCRATCH/pipelines/<id>/pipeline.json  the four stages of a pipeline ("stages")
    SCRATCH/jobs/<id>/jobs.json           test/visualize arrays submitted on their own

Each of them takes `dry_run`, a `DryRun`: then the submission is shown instead of made (--dry-run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from inat import layout
from inat.errors import InatError
from inat.fsutil import read_json, write_json
from inat.rundir import RunDir

from ..gpus import JobAgents
from .executors import make_executor, resolve_cluster, sbatch_text
from .profile import ClusterProfile, load_profile

log = logging.getLogger("inat")
Call = tuple[Callable[..., Any], tuple]


@dataclass
class Submitted:
    """One submission: a job, or an array whose tasks are <job_id>_<i>."""

    stage: str
    job_id: str
    task_ids: list[str]
    folder: str
    cluster: str = "slurm"
    submitted: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    dependency: str | None = None
    # local runs: one state per task (COMPLETED/FAILED/SKIPPED) and the error of each failed one
    states: list[str] | None = None
    errors: list[str | None] | None = None
    runs: list[str] | None = None  # the run directories the tasks work on, when known

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class DryRun:
    """--dry-run: passed as `dry_run=` to the submitting functions here, it makes each submission print
    what it would submit and submit and write nothing: no job folder, no pickle, no sbatch, no record.

    Each submission prints its array size, its dependency and its sbatch script, the text submitit
    would write (`executors.sbatch_text`). Job ids do not exist yet: a submission's id is the placeholder
    `<STAGE job id>`, which a later stage's dependency then names. `shown` keeps every submission for
    --json. A command adds --dry-run with `dry = DryRun(say) if dry_run else None` and passes it on.
    """

    say: Callable[[str], None] = print
    shown: list[dict[str, Any]] = field(default_factory=list)

    def show(self, stage: str, n_tasks: int, profile: ClusterProfile, folder: Path,
             dependency: str | None) -> Submitted:
        script = sbatch_text(profile, stage, folder, n_tasks, dependency)
        job_id = f"<{stage} job id>"
        if not self.shown:
            self.say("dry run: nothing is submitted and nothing is written")
        self.shown.append({"stage": stage, "array_size": n_tasks, "dependency": dependency,
                           "folder": str(folder), "script": script})
        size = f"an array of {n_tasks} tasks, {job_id}_0 .. _{n_tasks - 1}" if n_tasks > 1 else "one job"
        self.say(f"{stage}: would submit {size}; dependency: {dependency or 'none'}")
        self.say(f"----- sbatch script of {stage} ({folder}/{job_id}_submission.sh) -----")
        self.say(script.rstrip("\n"))
        self.say(f"----- end of {stage} script -----")
        tasks = [f"{job_id}_{i}" for i in range(n_tasks)] if n_tasks > 1 else [job_id]
        return Submitted(stage, job_id, tasks, str(folder), dependency=dependency)

    def local(self, what: str) -> None:
        """The one line a dry run says where the work would run on this machine instead."""
        self.say(f"dry run: nothing would be submitted; {what}")


def submit_calls(stage: str, calls: Sequence[Call], profile: ClusterProfile, folder: Path,
                 dependency: str | None = None, dry_run: DryRun | None = None) -> Submitted:
    """Submit `calls` as one Slurm array (or one job), with the profile's settings for `stage`."""
    if not calls:
        raise InatError(f"{stage}: nothing to submit")
    if dry_run is not None:
        return dry_run.show(stage, len(calls), profile, folder, dependency)
    fresh = not folder.exists()
    executor = make_executor(profile.for_stage(stage), folder, f"inat-{stage}", dependency)
    try:
        # sbatch writes its complaint to our stderr; the error below repeats it as one line.
        with _stderr_to_devnull(), executor.batch():
            jobs = [executor.submit(fn, *args) for fn, args in calls]
    except Exception as exc:
        if fresh:  # nothing was queued: leave no job folder that looks like a submission
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # SCRATCH/jobs/<id>/, if this was its only stage
        raise InatError(f"submitting the {stage} job failed: {_sbatch_message(exc)}") from None
    ids = [j.job_id for j in jobs]
    array_id = ids[0].split("_")[0]
    log.info("%s: submitted %s (%d task(s))", stage, array_id, len(ids))
    return Submitted(stage, array_id, ids, str(folder), dependency=dependency)


def run_calls(stage: str, calls: Sequence[Call], say: Callable[[str], None] = print) -> Submitted:
    """Run `calls` one after another in this process: the `--cluster local` twin of submit_calls."""
    states, errors = [], []
    for i, (fn, args) in enumerate(calls):
        try:
            result = fn(*args)
        except Exception as exc:  # keep going: one failed task must not hide the others' results
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.error("%s task %d failed: %s", stage, i, message, exc_info=not isinstance(exc, InatError))
            states.append("FAILED")
            errors.append(message)
            continue
        skipped = isinstance(result, dict) and result.get("status") == "skipped"
        states.append("SKIPPED" if skipped else "COMPLETED")
        errors.append(result.get("reason") if skipped else None)
    say(f"{stage}: {len(calls)} task(s) in this process: " + _summary(states))
    return Submitted(stage, "local", [f"local_{i}" for i in range(len(calls))], "", "local",
                     states=states, errors=errors)


def submit_agents(sweep_dir: Path, n_agents: int, trials_per_agent: int | None, **options) -> list[str]:
    """Submit `n_agents` sweep agents as one Slurm array job; return the task ids (<array>_<i>).
    A task runs one agent, or several on a GPU job (`jobs.gpus`): the array may have fewer tasks.

    options: profile (ClusterProfile; default: $INAT_CLUSTER_PROFILE or Slurm's defaults),
    dependency (an sbatch --dependency string), dry_run (a DryRun: show, do not submit).
    """
    from ..tasks import AgentTask  # lazy: submitit

    sweep_dir = Path(sweep_dir)
    profile = options.get("profile") or load_profile()
    folder = layout.jobs_dir(layout.root_of(sweep_dir)) / sweep_dir.name / "agent"
    plan = JobAgents.for_profile(n_agents, profile.for_stage("agent"))  # n_agents in all, per_job a task
    calls = [(AgentTask(), (sweep_dir, i, trials_per_agent, plan)) for i in range(plan.tasks)]
    dry_run = options.get("dry_run")
    sub = submit_calls("agent", calls, profile, folder, options.get("dependency"), dry_run)
    if dry_run is None:
        add_records(sweep_dir / "jobs.json", [sub])
    return sub.task_ids


def submit_more_agents(sweep_dir: Path, first: int, n_agents: int, trials_per_agent: int | None,
                       profile: ClusterProfile, dry_run: DryRun | None = None) -> Submitted:
    """`add-agents`: agents first..first+n-1 (ids agent-<i>, after the sweep's existing ones) as one
    more array job, beside the first in the sweep's job folder and recorded in its jobs.json."""
    from ..tasks import AgentTask  # lazy: submitit

    sweep_dir = Path(sweep_dir)
    folder = layout.jobs_dir(layout.root_of(sweep_dir)) / sweep_dir.name / "agent"
    plan = JobAgents.for_profile(n_agents, profile.for_stage("agent"), first)
    calls = [(AgentTask(), (sweep_dir, i, trials_per_agent, plan)) for i in range(plan.tasks)]
    sub = submit_calls("agent", calls, profile, folder, dry_run=dry_run)
    if dry_run is None:
        add_records(sweep_dir / "jobs.json", [sub])
    return sub


def submit_group(stage: str, calls: Sequence[Call], runs: Sequence[Path],
                 profile: ClusterProfile, dry_run: DryRun | None = None) -> tuple[str, Submitted]:
    """Submit test/visualize tasks for given runs as one array; recorded in SCRATCH/jobs/<id>/jobs.json.

    SCRATCH is the one the first run lives in (SCRATCH/runs/<run>), else the default scratch root.
    """
    first = Path(runs[0]).resolve()
    scratch = layout.root_of(first) if first.parent.name == "runs" else layout.scratch_root()
    group = layout.new_id(f"{stage}-")
    folder = layout.jobs_dir(scratch) / group
    sub = submit_calls(stage, calls, profile, folder / stage, dry_run=dry_run)
    sub.runs = [str(Path(r).resolve()) for r in runs]
    if dry_run is None:
        add_records(folder / "jobs.json", [sub])
    return group, sub


def maybe_submit(stage: str, runs: Sequence[Path], cluster: str | None, profile_path: Path | None,
                 cluster_set: Sequence[str] | None, image: Path | None,
                 make_call: Callable[[Path], Call], dry_run: DryRun | None = None) -> bool:
    """For `test`/`visualize --cluster ...`: submit one array over `runs` and say so; False when the
    work should run in this process instead (no --cluster, or it resolved to local). A dry run is
    over here either way (True): it shows the submission, or says what would run here."""
    where = "local" if cluster is None else resolve_cluster(cluster)
    if where == "local" and dry_run is None:
        return False
    profile = load_profile(profile_path, cluster_set or [], image) if where == "slurm" else None
    for run in runs:  # a job for a run without a model would only fail on the node
        RunDir(Path(run).resolve()).require_model()
    if profile is None:
        dry_run.local(f"{stage} would run in this process on {len(runs)} run(s) (--cluster slurm submits it)")
        return True
    group, sub = submit_group(stage, [make_call(Path(r).resolve()) for r in runs], runs, profile, dry_run)
    if dry_run is not None:
        return True
    print(f"{stage}: submitted job {sub.job_id} ({len(sub.task_ids)} task(s)): {', '.join(sub.task_ids)}")
    print(f"watch:   inat-jobs status {group}")
    return True


def add_records(path: Path, subs: Sequence[Submitted]) -> None:
    """Append submissions to a jobs.json list (created if missing)."""
    records = read_json(path) if path.is_file() else []
    write_json(path, records + [s.record() for s in subs])


def _summary(states: list[str]) -> str:
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    return ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "none"


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _sbatch_message(exc: Exception) -> str:
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "sbatch: error" in ln or "error:" in ln.lower():
            return ln[ln.find("sbatch: error"):] if "sbatch: error" in ln else ln
    return lines[0] if lines else type(exc).__name__
