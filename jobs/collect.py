"""`collect`: copy a pipeline's or sweep's results off scratch, without the checkpoints.

    DEST/<id>/
      pipeline.json | jobs.json   what was submitted (job ids, options, run directories)
      sweep/                      sweep.yaml, sweep.json, best_config.yaml, trials.csv, figures/,
                                  sweep_status.json (every trial's state and best metric, and the best),
                                  trials/<t>/ config.yaml, run.json, history.csv (+ model.keras for the top K)
      runs/<run>/                 each retrained/tested run: config, history, model.keras, test_metrics.json,
                                  predictions.csv, figures/, run.json, retrain.json, attempts.json
      logs/<stage>/               submitit logs (*_log.out/err) of the jobs that FAILED, timed out or were
                                  cancelled; a failed local agent's agent-N.log

Left behind: checkpoint/ (resume state), wandb/ (offline W&B runs: `inat-jobs sync` or `wandb sync` them
on scratch), sync markers (W&B's *.synced, wandb-osh's *.command), lock and heartbeat files. Every file
is written atomically and an identical file is not rewritten, so a second collect of the same results
gives the same tree. DEST ending in .tar.gz: the same tree in a reproducible archive (sorted, zeroed
owners and times), built in a temporary file and then renamed.
"""

from __future__ import annotations

import filecmp
import gzip
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inat import layout
from inat.errors import InatError
from inat.fsutil import atomic_path, make_dir, read_json, write_json
from inat.sweep import best_configs, find_sweep, load_spec, read_trial, sweep_ids, trial_dirs

from . import agents
from .slurm import jobstate

log = logging.getLogger("inat")
SKIP_DIRS = {"checkpoint", "wandb", "__pycache__"}
SKIP_FILES = {".lock", "heartbeat", ".clock"}
# Sync markers: W&B's run-*.wandb.synced, wandb-osh's *.command (SCRATCH/wandb-osh/, and wherever a
# user pointed wandb-osh). They say what was uploaded from scratch, which a copy is not.
SKIP_SUFFIXES = (".tmp", ".synced", ".command")
TRIAL_FILES = ("config.yaml", "run.json", "history.csv", "retrain.json")


@dataclass
class Target:
    """What `status`/`collect` were pointed at: a pipeline, a sweep, or a group of test/figure jobs."""

    kind: str
    id: str
    records: list[dict[str, Any]]
    record_file: Path
    sweep_dir: Path | None = None
    runs: list[Path] = field(default_factory=list)
    top_k: int = 1


def resolve(scratch: Path, ident: str) -> Target:
    """Find IDENT under SCRATCH: pipelines/<id>, then sweeps/<id>, then jobs/<id>."""
    layout.check_id(ident, "pipeline or sweep id", f"{scratch}/pipelines/, sweeps/ or jobs/")
    pipe = layout.pipelines_dir(scratch) / ident / "pipeline.json"
    sweep = find_sweep(scratch, ident, missing_ok=True)
    jobs = sweep / "jobs.json" if sweep else None  # agents of launch-sweep, arrays of retrain-best
    sweep_records = read_json(jobs) if jobs and jobs.is_file() else []
    retrained = layout.retrain_runs(scratch, ident)
    if pipe.is_file():
        rec = read_json(pipe)
        runs = list(dict.fromkeys([Path(r) for r in rec["runs"]] + retrained))
        return Target("pipeline", ident, rec["stages"] + sweep_records, pipe, Path(rec["sweep_dir"]), runs,
                      rec.get("options", {}).get("top_k", 1))
    if sweep is not None:
        return Target("sweep", ident, sweep_records, jobs, sweep, retrained)
    group = layout.jobs_dir(scratch) / ident / "jobs.json"
    if group.is_file():
        records = read_json(group)
        runs = [Path(r) for rec in records for r in rec.get("runs", [])]
        return Target("jobs", ident, records, group, None, list(dict.fromkeys(runs)))
    known = recent(scratch, 5)
    hint = f" (latest there: {', '.join(k['id'] for k in known)})" if known else ""
    raise InatError(f"{ident!r}: no pipeline, sweep or job group of that id under {scratch}{hint}; "
                    "pass --out (or set $INAT_SCRATCH) to the scratch root it ran under")


def recent(scratch: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The newest pipelines and sweeps (ids sort by time), newest first."""
    found = {}
    for sweep_id in sweep_ids(scratch):
        found[sweep_id] = {"id": sweep_id, "kind": "sweep"}
    for p in layout.jobs_dir(scratch).glob("*/jobs.json"):
        found.setdefault(p.parent.name, {"id": p.parent.name, "kind": "jobs"})
    for p in layout.pipelines_dir(scratch).glob("*/pipeline.json"):
        found[p.parent.name] = {"id": p.parent.name, "kind": "pipeline"}
    return [found[k] for k in sorted(found, reverse=True)[:limit]]


# ---- collect -------------------------------------------------------------------------------------------


def collect(target: Target, dest: str | os.PathLike) -> Path:
    """Copy `target`'s results into DEST/<id>/ (or DEST.tar.gz); returns what was written."""
    dest = Path(dest).expanduser().resolve()
    if dest.name.endswith(".tar.gz"):
        make_dir(dest.parent, "--dest")
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _collect_tree(target, stage / target.id)
            with atomic_path(dest) as tmp:
                _write_tar(stage, tmp)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dest
    if dest.exists() and not dest.is_dir():
        raise InatError(f"--dest {dest}: {dest.name} is a file, not a directory; name a directory or a .tar.gz")
    root = dest / target.id
    _collect_tree(target, root)
    return root


def _collect_tree(target: Target, root: Path) -> None:
    make_dir(root, "--dest")
    if target.record_file.is_file():
        copy_file(target.record_file, root / target.record_file.name)
    if target.sweep_dir is not None and target.sweep_dir.is_dir():
        _collect_sweep(target.sweep_dir, root / "sweep", target.top_k)
    for run in target.runs:
        if run.is_dir():
            copy_tree(run, root / "runs" / run.name)
    _collect_failed_logs(target, root / "logs")


def _collect_sweep(sweep: Path, out: Path, top_k: int) -> None:
    for item in sorted(sweep.iterdir()):
        if item.is_file() and item.suffix in (".yaml", ".json", ".csv") and item.name not in SKIP_FILES:
            copy_file(item, out / item.name)
    if (sweep / "figures").is_dir():
        copy_tree(sweep / "figures", out / "figures")
    spec = load_spec(sweep / "sweep.yaml")
    best = best_configs(sweep, top_k)
    best_names = {b.trial for b in best}
    rows = []
    trials = trial_dirs(sweep / "trials")
    for trial in trials:
        info = read_trial(trial, spec.metric, spec.maximize)
        rows.append({k: v for k, v in info.items() if k != "config_path"})
        names = TRIAL_FILES + (("model.keras",) if trial.name in best_names else ())
        for name in names:
            if (trial / name).is_file():
                copy_file(trial / name, out / "trials" / trial.name / name)
    status = {"sweep_id": sweep.name, "metric": spec.metric, "goal": spec.goal, "trials": rows,
              "best": [{"trial": b.trial, "metric": b.metric, "value": b.value, "epoch": b.epoch,
                        "val_accuracy": b.val_accuracy, "config": b.config.to_dict()} for b in best]}
    _write_json_if_changed(out / "sweep_status.json", status)


def _collect_failed_logs(target: Target, out: Path) -> None:
    try:
        rows = jobstate.task_rows(target.records)
    except InatError as exc:
        log.warning("logs of failed jobs not collected: %s", exc)
        return
    for row in jobstate.failed(rows):
        folder = Path(row["folder"]) if row["folder"] else None
        if folder is None:
            continue
        if row["JobID"].startswith("pid_"):  # a local agent: its log is agents/agent-N.log
            candidates = [folder / agents.log_name(agents.agent_id(row["index"]))]
        else:
            candidates = [folder / f"{row['JobID']}_0_log.out", folder / f"{row['JobID']}_0_log.err"]
        for path in candidates:
            if path.is_file():
                copy_file(path, out / row["stage"] / path.name)


# ---- atomic, idempotent copies ---------------------------------------------------------------------------


def copy_file(src: Path, dst: Path) -> None:
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def copy_tree(src: Path, dst: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel = Path(dirpath).relative_to(src)
        for name in sorted(filenames):
            if name in SKIP_FILES or name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                continue
            copy_file(Path(dirpath) / name, dst / rel / name)


def _write_json_if_changed(path: Path, obj: Any) -> None:
    if path.is_file():
        try:
            if read_json(path) == obj:
                return
        except InatError:
            pass
    write_json(path, obj)


def _write_tar(stage: Path, out: Path) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(stage):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    path = Path(dirpath) / name
                    tar.add(path, arcname=str(path.relative_to(stage)), recursive=False, filter=clean)
