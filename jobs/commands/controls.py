"""Sweep controls: sweep-stop, sweep-resume, add-agents. The work is in jobs.controls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from inat import layout
from inat.errors import ConfigError
from inat.sweep import load_sweep

from .. import controls
from ..app import app
from ..slurm.submit import DryRun
from .options import DryRunOpt, JsonOpt, OutOpt

SweepIdArg = typer.Argument(..., help="Sweep id, as printed by launch-sweep or pipeline.")


@app.command("sweep-stop")
def sweep_stop(
    sweep_id: str = SweepIdArg,
    out: Optional[Path] = OutOpt,
    now: bool = typer.Option(
        False, "--now", help="Also end the agents now: scancel their Slurm jobs (or signal the local agent "
        "processes) and record their running trials as stopped, for a later agent to resume."
    ),
    timeout: float = typer.Option(
        controls.CANCEL_TIMEOUT_S, "--timeout", help="With --now: seconds to wait for the cancelled jobs to end."
    ),
    json_: bool = JsonOpt,
) -> None:
    """Stop a sweep: its agents take no new trial; running trials finish, then the agents exit.

    The flag is SCRATCH/sweeps/ID/stop.json, read by every agent before it asks for a trial.
    `sweep-resume ID` clears it; `add-agents ID --agents N` starts agents again.

    Example: inat-jobs sweep-stop 20261202-014000-ab12 --now
    """
    if not timeout > 0:  # NaN too
        raise ConfigError(f"--timeout {timeout:g}: expected a number of seconds > 0")
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    say = (lambda _: None) if json_ else typer.echo
    result = controls.stop(sw, now, say, timeout)
    if json_:
        typer.echo(json.dumps(result))
        return
    if now:
        handed = ", ".join(f"{n:04d}" for n in result["trials_resumable"]) or "none"
        say(f"sweep {sw.id}: stopped now; agents ended: {', '.join(result['agents_stopped']) or 'none running'}; "
            f"trials to resume later: {handed}")
    else:
        say(f"sweep {sw.id}: stopped; running trials finish, then the agents exit")
    say(f"resume: inat-jobs sweep-resume {sw.id}, then inat-jobs add-agents {sw.id} --agents N")


@app.command("sweep-resume")
def sweep_resume(sweep_id: str = SweepIdArg, out: Optional[Path] = OutOpt) -> None:
    """Let a stopped sweep's agents take trials again (clears SCRATCH/sweeps/ID/stop.json).

    Agents that exited at the stop do not come back: start new ones with add-agents.

    Example: inat-jobs sweep-resume 20261202-014000-ab12 && inat-jobs add-agents 20261202-014000-ab12 --agents 4
    """
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    cleared = controls.resume(sw)
    live = controls.live_agents(sw)
    typer.echo(f"sweep {sw.id}: " + ("resumed" if cleared else "was not stopped")
               + f"; {live} agent(s) queued or running")
    if not live:
        typer.echo(f"start agents: inat-jobs add-agents {sw.id} --agents N")


@app.command("add-agents")
def add_agents(
    sweep_id: str = SweepIdArg,
    agents: int = typer.Option(..., "--agents", "-n", help="Number of agents to add."),
    out: Optional[Path] = OutOpt,
    json_: bool = typer.Option(False, "--json", help="Print one JSON object {sweep_id, cluster, agents, job_ids, pipeline_held}."),
    dry_run: bool = DryRunOpt,
) -> None:
    """Start N more agents on a sweep, as its launch did: the same cluster, profile, image and trials per
    agent, read from SCRATCH/sweeps/ID/sweep.json. They get new ids (agent-<i> after the last one).

    Example: inat-jobs add-agents 20261202-014000-ab12 --agents 4 [--dry-run]
    """
    controls.check_count(agents)
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    dry = DryRun(typer.echo if not json_ else (lambda *_: None)) if dry_run else None
    result = controls.add_agents(sw, agents, dry)
    if dry is not None:
        if json_:
            typer.echo(json.dumps({"dry_run": True, "cluster": result["cluster"], "submissions": dry.shown}))
        return
    if json_:
        typer.echo(json.dumps({"sweep_id": sw.id, **result}))
        return
    what = "job id(s)" if result["cluster"] == "slurm" else "pid(s)"
    typer.echo(f"sweep {sw.id}: added {len(result['agents'])} {result['cluster']} agent(s) "
               f"{', '.join(result['agents'])}: {what} {', '.join(result['job_ids'])}")
    if result["pipeline_held"]:
        typer.echo(f"pipeline {sw.id}: its retraining now waits for these agents too")
    typer.echo(f"watch:   inat-jobs sweep-status {sw.id}" + (f" --out {sw.scratch_root}" if out else ""))
