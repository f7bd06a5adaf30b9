"""Cluster commands: retrain-best, pipeline, status, collect. The work is in pipeline/submit/collect."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer

from inat import layout
from inat.config import RunConfig
from inat.errors import ConfigError, InatError
from inat.figures import WHAT, parse_what
from inat.sweep import best_configs, load_sweep

from .. import controls
from ..app import app
from ..collect import collect as do_collect
from ..collect import recent, resolve
from ..launch import create_sweep
from ..slurm import jobstate
from ..slurm.profile import load_profile
from ..slurm.executors import resolve_cluster
from ..slurm.submit import DryRun, add_records, run_calls, submit_calls
from .options import (
    AgentsOpt, BackendOpt, ClusterOpt, ClusterSetOpt, DataOpt, DryRunOpt, EpochsOpt, ImageOpt, JsonOpt, OutOpt,
    ProfileOpt, SeedOpt, SeedsOpt, SetOpt, StorageOpt, SweepOpt, TopKOpt, TrialsPerAgentOpt, WaitOpt,
)  # fmt: skip


def _check_counts(top_k: int, seeds: int, epochs: Optional[int]) -> None:
    for flag, value in (("--top-k", top_k), ("--seeds", seeds), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected an integer >= 1")


@app.command("retrain-best")
def retrain_best(
    sweep_id: str = typer.Option(..., "--sweep-id", help="Sweep id (a directory under SCRATCH/sweeps/)."),
    top_k: int = TopKOpt,
    seeds: int = SeedsOpt,
    epochs: Optional[int] = EpochsOpt,
    out: Optional[Path] = OutOpt,
    cluster: Optional[str] = ClusterOpt,
    profile: Optional[Path] = ProfileOpt,
    cluster_set: Optional[List[str]] = ClusterSetOpt,
    image: Optional[Path] = ImageOpt,
    wait: bool = WaitOpt,
    dry_run: bool = DryRunOpt,
) -> None:
    """Retrain the sweep's top-K configs x S seeds as one array job, into runs/<sweep_id>-best<k>-seed<s>/.

    \b
    Example (--dry-run shows the sbatch script and submits nothing):
      inat-jobs retrain-best --sweep-id 20261202-013000-ab12 --top-k 3 --seeds 2 --dry-run
    """
    from ..tasks import TrainTask, retrain_plan, write_origin  # lazy: submitit

    _check_counts(top_k, seeds, epochs)
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    where = resolve_cluster(cluster)
    prof = load_profile(profile, cluster_set or [], image)
    best = best_configs(sw.dir, top_k)
    if not best:
        raise InatError(f"sweep {sw.id} has no finished trial yet; see `inat-jobs sweep-status {sw.id}`")
    if len(best) < top_k:
        typer.echo(f"warning: sweep {sw.id} has only {len(best)} finished trial(s); retraining those",
                   err=True)
    runs_root = layout.runs_dir(sw.scratch_root)
    replicas = prof.for_stage("train").gpus_per_trial if where == "slurm" else 1
    calls, runs = [], []
    for rank, seed in retrain_plan(len(best), seeds):
        picked = best[rank - 1]
        cfg = picked.config.replace(seed=seed, **({"epochs": epochs} if epochs else {}))
        run_dir = runs_root / layout.retrain_run_id(sw.id, rank, seed)
        _check_resumable(run_dir, cfg)
        if not dry_run:
            write_origin(run_dir, sw.id, picked, rank, seed)
        calls.append((TrainTask(), (cfg, run_dir, Path(sw.data_root), 0.0, replicas)))
        runs.append(run_dir)
        typer.echo(f"rank {rank} (trial {picked.trial}, {picked.metric} {picked.value:.4f}) seed {seed} -> {run_dir}")
    if dry_run:
        dry = DryRun(typer.echo)
        if where == "local":
            dry.local(f"--cluster local would retrain the {len(calls)} run(s) above one after another here")
        else:
            submit_calls("train", calls, prof, layout.jobs_dir(sw.scratch_root) / sw.id / "train", dry_run=dry)
        return
    if where == "local":
        sub = run_calls("train", calls, typer.echo)
    else:
        sub = submit_calls("train", calls, prof, layout.jobs_dir(sw.scratch_root) / sw.id / "train")
        typer.echo(f"submitted array job {sub.job_id}: {', '.join(sub.task_ids)}")
    sub.runs = [str(r) for r in runs]
    add_records(sw.dir / "jobs.json", [sub])
    rows = jobstate.task_rows([sub.record()])
    if where == "slurm":
        typer.echo(f"watch:   inat-jobs status {sw.id}")
        if wait:
            rows = jobstate.wait_for([sub.record()], say=typer.echo)
    if jobstate.failed(rows):
        raise typer.Exit(1)


def _check_resumable(run_dir: Path, cfg: RunConfig) -> None:
    saved = run_dir / "config.yaml"
    if saved.is_file() and RunConfig.load(saved) != cfg:
        raise InatError(f"{run_dir} already holds a retraining with other settings (e.g. --epochs); "
                        "move it away to retrain with these")


@app.command()
def pipeline(
    sweep: Path = SweepOpt,
    agents: int = AgentsOpt,
    trials_per_agent: Optional[int] = TrialsPerAgentOpt,
    backend: str = BackendOpt,
    data: Path = DataOpt,
    out: Optional[Path] = OutOpt,
    set_: Optional[List[str]] = SetOpt,
    storage: Optional[str] = StorageOpt,
    seed: int = SeedOpt,
    top_k: int = TopKOpt,
    seeds: int = SeedsOpt,
    epochs: Optional[int] = EpochsOpt,
    what: str = typer.Option(
        ",".join(WHAT), "--what", "-w", help="Figures per retrained run."
    ),
    cluster: Optional[str] = ClusterOpt,
    profile: Optional[Path] = ProfileOpt,
    cluster_set: Optional[List[str]] = ClusterSetOpt,
    image: Optional[Path] = ImageOpt,
    wait: bool = WaitOpt,
    json_: bool = typer.Option(
        False, "--json", help="Print one JSON object {sweep_id, job_ids, out, ...} only "
        "(with --dry-run: {dry_run, cluster, submissions})."
    ),
    dry_run: bool = DryRunOpt,
) -> None:
    """Sweep -> retrain the top K x S seeds -> test -> figures. On Slurm: four chained array jobs, submitted
    at once; with --cluster local: the same stages, one after another, on this machine.

    \b
    Example (--dry-run prints the four sbatch scripts and their dependencies; submits, writes nothing):
      inat-jobs pipeline --sweep configs/sweeps/sweep_partA.yaml --agents 8 --trials-per-agent 6 \\
          --data /scratch/$USER/inaturalist_12K --top-k 3 --seeds 2 --profile my-cluster.yaml --dry-run
    """
    from .. import pipeline as pl  # lazy: submitit

    _check_counts(top_k, seeds, epochs)
    figures = parse_what(what)
    where = resolve_cluster(cluster)
    prof = load_profile(profile, cluster_set or [], image)
    sw, spec = create_sweep(sweep, agents, trials_per_agent, backend, data, out, set_, storage, seed, dry_run)
    options = {"agents": agents, "trials_per_agent": trials_per_agent, "top_k": top_k, "seeds": seeds,
               "epochs": epochs, "what": figures}
    say = (lambda m: print(m, file=sys.stderr)) if json_ else typer.echo
    if dry_run:
        dry = DryRun(say)
        if where == "slurm":
            pl.submit_pipeline(sw, prof, options, dry)
        else:
            dry.local(f"--cluster local would run the four stages here ({agents} agent process(es), then "
                      f"{top_k * seeds} retraining(s), their tests and figures)")
        if json_:
            typer.echo(json.dumps({"dry_run": True, "cluster": where, "submissions": dry.shown}))
        return
    say(f"pipeline {sw.id}: {agents} agent(s) on a {spec.method} sweep, then top {top_k} x {seeds} seed(s)")
    controls.record_launch(sw, where, agents, trials_per_agent, prof)
    if where == "slurm":
        try:
            record = pl.submit_pipeline(sw, prof, options)
        except BaseException:
            shutil.rmtree(sw.dir, ignore_errors=True)
            raise
        for stage in record["stages"]:
            after = f" after {stage['dependency']}" if stage.get("dependency") else ""
            say(f"{stage['stage']:<10} job {stage['job_id']} ({len(stage['task_ids'])} task(s)){after}")
        rows = jobstate.wait_for(record["stages"], say=say) if wait else []
    else:
        record = pl.run_local(sw, options, say, quiet_stdout=json_)
        rows = jobstate.task_rows(record["stages"])
        say(f"states: {jobstate.summary(rows)}")
    pdir = pl.pipeline_dir(sw.scratch_root, sw.id)
    say(f"record:  {pdir / 'pipeline.json'}; runs: {', '.join(record['runs'])}")
    say(f"status:  inat-jobs status {sw.id}" + (f" --out {sw.scratch_root}" if out else ""))
    say(f"collect: inat-jobs collect {sw.id} --dest results/" + (f" --out {sw.scratch_root}" if out else ""))
    if json_:
        typer.echo(json.dumps({"sweep_id": sw.id, "pipeline_id": sw.id, "cluster": where,
                               "job_ids": pl.job_ids(record), "out": str(pdir), "runs": record["runs"]}))
    if jobstate.failed(rows):
        raise typer.Exit(1)


@app.command()
def status(
    ident: Optional[str] = typer.Argument(None, help="Pipeline or sweep id (default: list the recent ones)."),
    out: Optional[Path] = OutOpt,
    json_: bool = JsonOpt,
) -> None:
    """The jobs of a pipeline or sweep: states, elapsed time, CPU-hours and GPU-hours (from sacct), per
    job and in total; without an id, the recent ones.

    Hours are what each job was allocated (sacct's AllocTRES: cpu=N, gres/gpu=M) times its elapsed
    time, as accounting charges them; local tasks have none.

    \b
    Example:
      inat-jobs status 20261202-013000-ab12 --json
    """
    scratch = layout.scratch_root(out)
    if ident is None:
        targets = [resolve(scratch, item["id"]) for item in recent(scratch)]
        rows = jobstate.task_rows([r for t in targets for r in t.records])  # one sacct call for all
        listing = []
        for t in targets:
            ids = {task for rec in t.records for task in rec["task_ids"]}
            mine = [r for r in rows if r["JobID"] in ids]
            listing.append({"id": t.id, "kind": t.kind, "states": jobstate.summary(mine),
                            "total": jobstate.total_cost(mine)})
        if json_:
            typer.echo(json.dumps(listing))
            return
        if not targets:
            typer.echo(f"nothing under {scratch} yet (pipelines/, sweeps/)")
        for item in listing:
            typer.echo(f"{item['id']:<24} {item['kind']:<9} {_hours(item['total'])}  {item['states']}")
        return
    target = resolve(scratch, ident)
    rows = jobstate.task_rows(target.records)
    total = jobstate.total_cost(rows)
    if json_:
        typer.echo(json.dumps({"id": target.id, "kind": target.kind, "jobs": rows, "total": total,
                               "runs": [str(r) for r in target.runs]}))
        return
    typer.echo(f"{target.kind} {target.id}: {jobstate.summary(rows)}")
    typer.echo(f"{'stage':<10} {'JobID':<14} {'JobName':<16} {'State':<14} {'Elapsed':<10} {'CPU-h':>8} "
               f"{'GPU-h':>8} ExitCode")
    for r in rows:
        note = f"  {r['Error']}" if r.get("Error") else ""
        if len(r.get("attempts") or []) > 1:
            note += f"  ({len(r['attempts'])} attempts: requeued)"
        elapsed = r["Elapsed"] if r["elapsed_s"] is None else _clock(r["elapsed_s"])
        typer.echo(f"{r['stage']:<10} {r['JobID']:<14} {r['JobName']:<16} {r['State']:<14} "
                   f"{elapsed:<10} {_num(r['cpu_hours']):>8} {_num(r['gpu_hours']):>8} {r['ExitCode']}{note}")
    typer.echo(f"total: {_hours(total)}")
    for run in target.runs:
        typer.echo(f"run: {run}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _hours(total: dict) -> str:
    return (f"{_clock(total['elapsed_s'])} elapsed (summed over jobs), "
            f"{total['cpu_hours']:.3f} CPU-h, {total['gpu_hours']:.3f} GPU-h")


@app.command()
def collect(
    ident: Optional[str] = typer.Argument(None, help="Pipeline or sweep id (default: the most recent one)."),
    dest: Path = typer.Option(
        ..., "--dest", help="Directory to copy into (DEST/<id>/), or a file ending in .tar.gz."
    ),
    out: Optional[Path] = OutOpt,
) -> None:
    """Copy results off scratch: models, test metrics, figures, sweep table, configs, histories, logs of
    failed jobs; never checkpoints. Safe to repeat."""
    scratch = layout.scratch_root(out)
    if ident is None:
        items = recent(scratch, 1)
        if not items:
            raise InatError(f"nothing to collect under {scratch} (no pipelines/ or sweeps/ yet)")
        ident = items[0]["id"]
    written = do_collect(resolve(scratch, ident), dest)
    typer.echo(f"collected {ident} into {written}")
