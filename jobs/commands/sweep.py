"""Sweep commands: launch-sweep, agent, sweep-status. The work is in inat.sweep; this is the CLI."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
import yaml

from inat import layout
from inat.config import RunConfig
from inat.errors import ConfigError, InatError
from inat.sweep import best_configs, load_sweep, wandb_backend
from inat.sweep.liveness import HEARTBEAT_S, MIN_STALE_AFTER_S
from inat.sweep.local import run_agent, train_trial
from inat.sweep.status import run_dir_rows, trial_rows

from .. import agents as local_agents
from .. import controls
from ..app import app
from ..launch import check_bounded, create_sweep
from ..slurm import jobstate
from ..slurm.profile import load_profile
from ..slurm.executors import resolve_cluster
from ..slurm.submit import DryRun, submit_agents
from .options import (
    AgentsOpt, BackendOpt, ClusterOpt, ClusterSetOpt, DataOpt, DryRunOpt, GpusPerTrialOpt, ImageOpt, OutOpt,
    ProfileOpt, SeedOpt, SetOpt, StaleOpt, StorageOpt, SweepOpt, TrialsPerAgentOpt,
)  # fmt: skip


@app.command("launch-sweep")
def launch_sweep(
    sweep: Path = SweepOpt,
    agents: int = AgentsOpt,
    trials_per_agent: Optional[int] = TrialsPerAgentOpt,
    backend: str = BackendOpt,
    cluster: Optional[str] = ClusterOpt,
    profile_path: Optional[Path] = ProfileOpt,
    cluster_set: Optional[List[str]] = ClusterSetOpt,
    image: Optional[Path] = ImageOpt,
    data: Path = DataOpt,
    out: Optional[Path] = OutOpt,
    set_: Optional[List[str]] = SetOpt,
    storage: Optional[str] = StorageOpt,
    seed: int = SeedOpt,
    wait: bool = typer.Option(False, "--wait", help="Block until the agents finish; non-zero exit if one failed."),
    json_: bool = typer.Option(
        False, "--json", help="Print one JSON object {sweep_id, job_ids, out} and nothing else "
        "(with --dry-run: {dry_run, cluster, submissions})."
    ),
    dry_run: bool = DryRunOpt,
) -> None:
    """Create a sweep under SCRATCH/sweeps/ID/ and start N agents on it.

    \b
    Example (--dry-run shows the agents' sbatch script and submits nothing):
      inat-jobs launch-sweep --sweep configs/sweeps/sweep_partA.yaml --agents 4 --trials-per-agent 10 \\
          --data /scratch/$USER/inaturalist_12K --cluster slurm --dry-run
    """
    if wait and cluster not in (None, "local"):
        raise ConfigError("--wait works with --cluster local; for Slurm watch `inat-jobs sweep-status ID`")
    cluster = resolve_cluster("local" if wait else cluster)
    profile = load_profile(profile_path, cluster_set or [], image)
    sw, spec = create_sweep(sweep, agents, trials_per_agent, backend, data, out, set_, storage, seed, dry_run)
    if dry_run:
        dry = DryRun((lambda m: print(m, file=sys.stderr)) if json_ else typer.echo)
        if cluster == "slurm":
            submit_agents(sw.dir, agents, trials_per_agent, profile=profile, dry_run=dry)
        else:
            dry.local(f"--cluster local would create sweep {sw.dir} and start {agents} agent process(es) here")
        if json_:
            typer.echo(json.dumps({"dry_run": True, "cluster": cluster, "submissions": dry.shown}))
        return
    say = (lambda *_: None) if json_ else typer.echo
    say(f"sweep {sw.id}: {backend} backend, {spec.method} search on {spec.metric} ({spec.goal})")
    if backend == "wandb":
        say(f"W&B sweep: {sw.wandb_sweep}")
    controls.record_launch(sw, cluster, agents, trials_per_agent, profile)
    if cluster == "slurm":
        try:
            job_ids = submit_agents(sw.dir, agents, trials_per_agent, profile=profile)
        except BaseException:
            shutil.rmtree(sw.dir, ignore_errors=True)  # a sweep nobody works on would only confuse
            raise
        say(f"submitted {agents} agent(s) in {len(job_ids)} array task(s): job id(s) {', '.join(job_ids)}")
        started = []
    else:
        started = local_agents.start_local(sw, agents, trials_per_agent)
        job_ids = [str(a.proc.pid) for a in started]
        say(f"started {agents} local agent(s): pids {', '.join(job_ids)}; logs: {local_agents.logs_glob(sw)}")
    say(f"outputs: {sw.dir} (trials/<trial>/ is one run directory per trial)")
    say(f"watch:   inat-jobs sweep-status {sw.id}" + (f" --out {sw.scratch_root}" if out else ""))
    failed = local_agents.wait(started, say) if wait else []
    if json_:
        typer.echo(json.dumps({"sweep_id": sw.id, "job_ids": job_ids, "out": str(sw.dir)}))
    if failed:
        names = ", ".join(a.exit_text() for a in failed)
        print(f"inat-jobs: error: agent(s) {names} failed; see their logs in {sw.agents_dir}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def agent(
    sweep_id: str = typer.Option(..., "--sweep-id", help="Sweep id (a directory under SCRATCH/sweeps/)."),
    out: Optional[Path] = OutOpt,
    count: Optional[int] = typer.Option(None, "--count", help="Trials to run (default: until the sweep is done)."),
    agent_id: Optional[str] = typer.Option(
        None, "--agent-id", help="Stable name; a restarted agent with the same name resumes its unfinished trial "
        "(default: agent-$SLURM_ARRAY_TASK_ID under Slurm)."
    ),
    stale_after: float = StaleOpt,
    gpus_per_trial: int = GpusPerTrialOpt,
) -> None:
    """Run one sweep agent: take a config, train it, report, repeat. At start it marks running trials
    whose heartbeat is older than --stale-after as failed (their agents are gone)."""
    _check_stale_after(stale_after)
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    if count is not None and count < 1:
        raise ConfigError(f"--count {count}: expected an integer >= 1")
    agent_id = local_agents.check_agent_id(agent_id or local_agents.default_agent_id())
    if sw.backend == "wandb":
        wandb_backend.run_agent(sw, count)
        return
    check_bounded(sw.spec(), count, "--count")
    trial_fn = functools.partial(train_trial, replicas=gpus_per_trial) if gpus_per_trial > 1 else None
    result = run_agent(sw, agent_id, count, stale_after, trial_fn=trial_fn)
    typer.echo(f"{agent_id}: ran trials {', '.join(map(str, result['trials'])) or 'none'} ({result['stop_reason']})")


@app.command("sweep-status")
def sweep_status(
    sweep_id: str = typer.Argument(..., help="Sweep id, as printed by launch-sweep."),
    out: Optional[Path] = OutOpt,
    json_: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    stale_after: float = StaleOpt,
    fail_stale: bool = typer.Option(
        False, "--fail-stale", help="Also mark running trials with no heartbeat for --stale-after seconds as "
        "failed in the study (local backend; agents do this when they start). Without it they are only shown."
    ),
) -> None:
    """Every trial's state, epochs and best val_accuracy; counts per state; the best config as YAML.

    Reads the study and the trial directories and changes neither. Its one output is
    SCRATCH/sweeps/ID/best_config.yaml, the best config for `inat-jobs train --config`, written
    atomically and only when the best changed. A running trial whose heartbeat is older than
    --stale-after is shown as stale; --fail-stale marks it failed. A trial that ran in a Slurm job
    also shows its CPU-hours and GPU-hours: its wall time x what its job was allocated (sacct).

    \b
    Example:
      inat-jobs sweep-status 20261202-013000-ab12 --json
    """
    _check_stale_after(stale_after)
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    spec = sw.spec()
    if sw.backend == "local":
        rows = trial_rows(sw, spec, stale_after, fail_stale=fail_stale)
    elif fail_stale:
        raise ConfigError("--fail-stale is for --backend local (W&B's server keeps its runs' states)")
    else:
        rows = run_dir_rows(sw, spec)
    costed = _add_cost(rows)
    counts = Counter(r["state"] for r in rows)
    best = best_configs(sw.dir, 1)
    best_out = None
    if best:
        top = best[0]
        best_out = {"trial": top.trial, "metric": top.metric, "value": top.value, "epoch": top.epoch,
                    "val_accuracy": top.val_accuracy, "config": top.config.to_dict(),
                    "config_path": _save_best_config(sw.dir / "best_config.yaml", top.config)}
    stopped = sw.stop_request()
    if json_:
        total = jobstate.total_cost(rows, ("cpu_hours", "gpu_hours")) if costed else None
        typer.echo(json.dumps({"sweep_id": sw.id, "backend": sw.backend, "dir": str(sw.dir), "counts": dict(counts),
                               "trials": rows, "total": total, "best": best_out, "stopped": stopped}, default=str))
        return
    if stopped:
        typer.echo(f"stopped at {stopped.get('stopped', '?')} (sweep-stop): agents take no new trial; "
                   f"inat-jobs sweep-resume {sw.id}")
    states = ("running", "finished", "pruned", "failed", *(s for s in ("superseded",) if counts.get(s)))
    typer.echo(f"sweep {sw.id} ({sw.backend}, {spec.method} on {spec.metric}, {spec.goal}): {len(rows)} trial(s): "
               + ", ".join(f"{counts.get(s, 0)} {s}" for s in states))
    metric_head = f"best {spec.metric}"
    hours_head = f" {'CPU-h':>7} {'GPU-h':>7}" if costed else ""
    typer.echo(f"{'trial':<10} {'state':<10} {'epochs':>6} {metric_head:>17} {'@epoch':>6} {'val_acc':>8}"
               f"{hours_head}  params")
    for r in rows:
        value = "-" if r.get("value") is None else f"{r['value']:.4f}"
        acc = "-" if r["best_val_accuracy"] is None else f"{r['best_val_accuracy']:.4f}"
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in r["params"].items())
        if r.get("superseded_by") is not None:
            why = r.get("why") or ("agent requeued" if (r.get("error") or "").startswith("superseded: agent")
                                   else "stopped")
            notes = [f"{why}: the run goes on as trial {r['superseded_by']:04d}"]
        else:
            notes = [r["error"]] if r.get("error") else []
        if r.get("resumes") is not None:
            notes.append(f"resumes trial {r['resumes']:04d} in trials/{r['run_dir']}")
        if r.get("stale_s") is not None:
            notes.append(f"stale: no heartbeat for {r['stale_s']} s")
        note = f"  ({'; '.join(notes)})" if notes else ""
        hours = "".join(f" {'-' if r.get(k) is None else format(r[k], '.3f'):>7}" for k in ("cpu_hours", "gpu_hours"))
        typer.echo(f"{r['trial']:<10} {r['state']:<10} {r['epochs_done']:>6} {value:>17} "
                   f"{r.get('best_epoch') or '-':>6} {acc:>8}{hours if costed else ''}  {params}{note}")
    if costed:
        total = jobstate.total_cost(rows, ("cpu_hours", "gpu_hours"))
        typer.echo(f"trials in Slurm jobs: {total['cpu_hours']:.3f} CPU-h, {total['gpu_hours']:.3f} GPU-h "
                   "(each trial's wall time x its job's allocated CPUs and GPUs)")
    if best_out is None:
        typer.echo("best: no finished trial yet")
        return
    head = f"\nbest: trial {best_out['trial']}, {spec.metric} {best_out['value']:.4f} at epoch {best_out['epoch']}; "
    if best_out["config_path"]:
        typer.echo(head + f"train it with: inat-jobs train --config {best_out['config_path']} --data DATA")
    else:
        typer.echo(head + "save this as a file and train it with: inat-jobs train --config FILE --data DATA")
    typer.echo(yaml.safe_dump(best_out["config"], sort_keys=False, default_flow_style=None).rstrip())


# ---- helpers -----------------------------------------------------------------------------------------


def _add_cost(rows: list[dict]) -> bool:
    """Give each trial that ran in a Slurm job its cpu_hours and gpu_hours: its wall seconds x what
    the job was allocated (an agent's job runs its trials one after another). False when none did."""
    ids = {r["slurm_job_id"] for r in rows if r.get("slurm_job_id")}
    if not ids:
        return False
    try:
        jobs = jobstate.allocations(ids)
    except InatError as exc:  # e.g. looking at a sweep from a machine without sacct
        print(f"inat-jobs: warning: no GPU-hours: {exc}", file=sys.stderr)
        return False
    for r in rows:
        job = jobs.get(r.get("slurm_job_id") or "")
        spent = jobstate.cost(job, r.get("seconds")) if job and r.get("seconds") is not None else {}
        r["cpu_hours"], r["gpu_hours"] = spent.get("cpu_hours"), spent.get("gpu_hours")
    return True



def _check_stale_after(seconds: float) -> None:
    if not seconds >= MIN_STALE_AFTER_S:  # NaN too
        raise ConfigError(f"--stale-after {seconds:g}: expected at least {MIN_STALE_AFTER_S:.0f} seconds (3 heartbeat "
                          f"intervals of {HEARTBEAT_S:.0f} s); a shorter grace declares live trials dead")


def _save_best_config(path: Path, cfg) -> str | None:
    """Write best_config.yaml (atomically) unless it already holds `cfg`; None if it cannot be written."""
    try:
        if path.is_file() and RunConfig.load(path) == cfg:
            return str(path)
    except InatError:  # damaged or from an older version: replace it
        pass
    try:
        cfg.save(path)
    except InatError as exc:  # e.g. looking at someone else's sweep on a read-only mount
        print(f"inat-jobs: warning: {exc}; the best config is only printed", file=sys.stderr)
        return None
    return str(path)
