"""Sweep controls, the cluster side: stop a sweep's agents, let them take trials again, start more.

The stop flag is SWEEP/stop.json (`inat.sweep.Sweep.request_stop`), on scratch beside the study,
because that is the one storage agents on compute nodes share with the login node; the agent loop
reads it before it asks for a trial (`inat.sweep.local.run_agent`). `sweep-stop --now` also ends
the agents' processes: the Slurm jobs recorded in SWEEP/jobs.json (and, for a pipeline, the agent
stage of its pipeline.json) are cancelled, local agents (SWEEP/agents/local.json, `jobs.agents`)
get SIGTERM then SIGKILL; once they are gone, their RUNNING trials are handed on as a requeued
agent's are (`inat.sweep.liveness.stop_running`), so the next agent resumes each run.

`add-agents` starts more agents the way the launch did, from the sweep's record (`Sweep.launch`,
written by `record_launch`): the cluster, trials per agent, and for Slurm the resolved profile
(image included). New agents get the next free ids, agent-<i>, so none takes over another's trial.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable

from inat.errors import ConfigError, InatError
from inat.fsutil import read_json, short_lock, write_json
from inat.sweep import Sweep
from inat.sweep.liveness import stop_running
from inat.sweep.local import finished_reason
from inat.sweep.study import open_study, storage_for

from . import agents as local_agents
from .slurm import jobstate
from .slurm.profile import ClusterProfile, parse_profile
from .slurm.submit import DryRun, submit_more_agents

CANCEL_TIMEOUT_S = 120.0
KILL_GRACE_S = 10.0
_AGENT_INDEX = re.compile(r"agent-(\d+)")


# ---- the launch record ---------------------------------------------------------------------------


def record_launch(sw: Sweep, cluster: str, n_agents: int, trials_per_agent: int | None,
                  profile: ClusterProfile | None) -> None:
    """Save in sweep.json how the agents were started, for add-agents."""
    sw.launch = {"cluster": cluster, "agents": n_agents, "trials_per_agent": trials_per_agent,
                 "profile": profile.model_dump(mode="json", exclude_unset=True, exclude={"source"})
                 if cluster == "slurm" and profile is not None else None}
    sw.save()


def launch_profile(sw: Sweep) -> ClusterProfile:
    """The profile the sweep was launched with, checked again (its image must still exist)."""
    return parse_profile((sw.launch or {}).get("profile") or {}, f"{sw.dir / 'sweep.json'}: launch.profile")


def next_agent_index(sw: Sweep) -> int:
    """The first agent number no agent of the sweep has used: past the launch record's count and
    every agent-<i> with a file in SWEEP/agents/ (a state, log or attempts file)."""
    used = [int((sw.launch or {}).get("agents") or 0) - 1]
    for rec in local_agents.local_records(sw):
        match = _AGENT_INDEX.fullmatch(str(rec.get("agent", "")))
        used += [int(match.group(1))] if match else []
    if sw.agents_dir.is_dir():
        for path in sw.agents_dir.iterdir():
            match = _AGENT_INDEX.fullmatch(path.name.split(".")[0])
            used += [int(match.group(1))] if match else []
    return max(used) + 1


# ---- checks every control makes --------------------------------------------------------------------


def check_open(sw: Sweep) -> None:
    """A one-line error if no agent would take another trial of the sweep (local backend)."""
    if sw.backend != "local":
        return  # W&B's server knows; this machine cannot ask it
    reason = finished_reason(sw)
    if reason:
        raise InatError(f"sweep {sw.id} is finished ({reason}); see `inat-jobs sweep-status {sw.id}`")


def check_count(n: int) -> int:
    if n < 1:
        raise ConfigError(f"--agents {n}: expected an integer >= 1")
    return n


# ---- the agents' processes ---------------------------------------------------------------------------


def slurm_records(sw: Sweep) -> list[dict[str, Any]]:
    """The sweep's agent submissions: SWEEP/jobs.json and, for a pipeline, its agent stage."""
    from .pipeline import load_record  # lazy: submitit, through jobs.tasks

    records = read_json(sw.dir / "jobs.json") if (sw.dir / "jobs.json").is_file() else []
    records += (load_record(sw.scratch_root, sw.id) or {}).get("stages", [])
    return [r for r in records if r.get("stage") == "agent" and r.get("cluster", "slurm") == "slurm"]


def live_agents(sw: Sweep) -> int:
    """How many of the sweep's recorded agents are queued or running."""
    records = slurm_records(sw)
    live = sum(1 for row in jobstate.task_rows(records) if row["State"] not in jobstate.TERMINAL) if records else 0
    return live + sum(1 for rec in local_agents.local_records(sw) if _local_agent_alive(sw, rec))


def cancel_slurm(sw: Sweep, timeout: float, say: Callable[[str], None]) -> set[str]:
    """scancel the sweep's agent jobs and wait until Slurm says they ended; return the agent ids
    that were running in them (from their attempts files, which each AgentTask writes when it starts)."""
    records = slurm_records(sw)
    if not records:
        return set()
    tasks = {row["JobID"] for row in jobstate.task_rows(records) if row["State"] not in jobstate.TERMINAL}
    if tasks:
        jobstate.cancel(records)
        say(f"cancelled job(s) {', '.join(sorted({r['job_id'] for r in records}))}; waiting for them to end")
        jobstate.wait_for(records, poll_s=2.0, timeout_s=timeout, say=lambda _: None)
        jobstate.wait_gone([r["job_id"] for r in records], timeout)
    ran = set()
    for path in sw.agents_dir.glob("*.attempts.json") if sw.agents_dir.is_dir() else []:
        attempts = read_json(path)
        if any(a.get("slurm_job_id") in tasks for a in attempts if isinstance(a, dict)):
            ran.add(path.name[: -len(".attempts.json")])
    return ran


def check_local_here(sw: Sweep) -> None:
    """Local agents can only be signalled from their own machine: refuse before anything is done."""
    here = os.uname().nodename
    elsewhere = sorted({r.get("host") for r in local_agents.local_records(sw) if r.get("host") != here})
    if elsewhere:
        raise InatError(f"sweep {sw.id}: its local agents run on {', '.join(map(str, elsewhere))}, not here "
                        f"({here}); run `inat-jobs sweep-stop {sw.id} --now` there")


def kill_local(sw: Sweep, say: Callable[[str], None], grace: float = KILL_GRACE_S) -> set[str]:
    """SIGTERM each recorded local agent's session, SIGKILL what is left after `grace` seconds;
    return the ids of the agents that were alive."""
    live = [r for r in local_agents.local_records(sw) if _local_agent_alive(sw, r)]
    ended = {r["agent"] for r in live}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for rec in live:
            try:
                os.killpg(int(rec["pid"]), sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            time.sleep(0.2)
            live = [r for r in live if _local_agent_alive(sw, r)]
        if not live:
            break
    if live:
        raise InatError(f"local agent(s) {', '.join(r['agent'] for r in live)} still alive after SIGKILL")
    if ended:
        say(f"stopped {len(ended)} local agent process(es)")
    return ended


def _local_agent_alive(sw: Sweep, rec: dict[str, Any]) -> bool:
    """Is the recorded process still this sweep's agent? Its pid may have been reused since: the
    command line must name the sweep and the agent. A zombie (exited, not yet reaped) is gone."""
    if rec.get("host") != os.uname().nodename:
        return False
    proc = Path("/proc") / str(rec.get("pid"))
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and sw.id in argv and rec.get("agent") in argv


def hold_pipeline(sw: Sweep, agents_job: str) -> bool:
    """A pipeline's retraining waits (afterany) for the agents submitted with it: make it wait for
    added ones too, while it is still pending, and note it in pipeline.json. False if there is no
    such pipeline stage or it already started."""
    from .pipeline import load_record, pipeline_dir  # lazy: submitit, through jobs.tasks

    record = load_record(sw.scratch_root, sw.id)
    train = next((s for s in (record or {}).get("stages", []) if s.get("stage") == "train"), None)
    if train is None or train.get("cluster", "slurm") != "slurm":
        return False
    dependency = f"{train.get('dependency') or 'afterany'}:{agents_job}"
    if not jobstate.set_dependency(train["job_id"], dependency):
        return False
    train["dependency"] = dependency
    write_json(pipeline_dir(sw.scratch_root, sw.id) / "pipeline.json", record)
    return True


# ---- the controls -------------------------------------------------------------------------------------


def stop(sw: Sweep, now: bool, say: Callable[[str], None], timeout: float = CANCEL_TIMEOUT_S) -> dict[str, Any]:
    """sweep-stop: set the flag (local backend); with `now`, end the agents and hand their trials on."""
    if sw.backend == "wandb" and not now:
        raise InatError(f"sweep {sw.id} runs on W&B's server, which hands out its runs: pause or stop it "
                        f"there (`wandb sweep --pause|--stop {sw.wandb_sweep}`, which needs the server); "
                        f"`sweep-stop {sw.id} --now` cancels the agents' jobs here")
    if now:
        check_local_here(sw)
    if sw.backend == "local":
        check_open(sw)
        sw.request_stop(now)
    killed = cancel_slurm(sw, timeout, say) | kill_local(sw, say) if now else set()
    handed: list[int] = []
    if killed and sw.backend == "local":
        storage = storage_for(sw)
        handed = stop_running(open_study(sw, sw.spec(), storage=storage), storage, sw, killed,
                              "superseded: stopped by sweep-stop --now; a later agent resumes its run")
    return {"sweep_id": sw.id, "now": now, "agents_stopped": sorted(killed), "trials_resumable": handed}


def resume(sw: Sweep) -> bool:
    """sweep-resume: clear the flag; True if there was one."""
    if sw.backend == "wandb":
        raise InatError(f"sweep {sw.id} runs on W&B's server: resume it there (`wandb sweep --resume "
                        f"{sw.wandb_sweep}`), then add agents with `inat-jobs add-agents {sw.id}`")
    check_open(sw)
    return sw.clear_stop()


def add_agents(sw: Sweep, n: int, dry_run: DryRun | None = None) -> dict[str, Any]:
    """add-agents: n more agents, started as the launch started them; returns {cluster, agents, job_ids,
    pipeline_held (whether a pending pipeline retraining now waits for them too)}. With `dry_run`,
    shows what it would submit, and submits and records nothing."""
    check_count(n)
    launch = sw.launch
    if not launch:
        raise InatError(f"sweep {sw.id} has no launch record in {sw.dir / 'sweep.json'} (launched by an older "
                        f"inat-jobs); start agents by hand: sbatch --array=0-{n - 1} slurm/sweep-agent.sh {sw.id}")
    request = sw.stop_request()
    if request:
        raise InatError(f"sweep {sw.id} is stopped (sweep-stop at {request.get('stopped', '?')}): new agents would "
                        f"take no trial; run `inat-jobs sweep-resume {sw.id}` first")
    check_open(sw)
    trials = launch.get("trials_per_agent")
    if dry_run is not None:
        first = next_agent_index(sw)
        ids = [local_agents.agent_id(i) for i in range(first, first + n)]
        if launch.get("cluster") == "slurm":
            sub = submit_more_agents(sw.dir, first, n, trials, launch_profile(sw), dry_run=dry_run)
            return {"cluster": "slurm", "agents": ids, "job_ids": sub.task_ids, "pipeline_held": False}
        dry_run.local(f"{n} agent process(es) {', '.join(ids)} on this machine")
        return {"cluster": "local", "agents": ids, "job_ids": [], "pipeline_held": False}
    with short_lock(sw.agents_dir / ".add.lock"):  # two add-agents at once must not pick the same ids
        first = next_agent_index(sw)
        ids = [local_agents.agent_id(i) for i in range(first, first + n)]
        if launch.get("cluster") == "slurm":
            sub = submit_more_agents(sw.dir, first, n, trials, launch_profile(sw))
            job_ids = sub.task_ids
            held = hold_pipeline(sw, sub.job_id)
        else:
            job_ids, held = [str(a.proc.pid) for a in local_agents.start_local(sw, n, trials, first=first)], False
        sw.launch = {**launch, "agents": first + n}
        sw.save()
    return {"cluster": launch.get("cluster"), "agents": ids, "job_ids": job_ids, "pipeline_held": held}
