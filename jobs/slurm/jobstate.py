"""Job states and what jobs cost, from Slurm's accounting (`sacct`), per array task, for `status`,
`sweep-status`, `collect` and `--wait`.

`sacct` is the source of truth because finished jobs leave `squeue` within seconds; submitit's
cached `job.state` is not consulted. Local (in-process) stages carry their states in their record.

Cost is what a job held, not what it used: AllocTRES (`cpu=N`, `gres/gpu=M`) x Elapsed, the way a
cluster's accounting charges an allocation. A requeued job (same id) cost every attempt: sacct -D
lists them in order, the last is the job's state, and its cost is the sum over all of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from typing import Any, Iterable

from inat.errors import InatError

FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "Elapsed", "ElapsedRaw", "ExitCode", "AllocTRES")
DONE_OK = {"COMPLETED", "SKIPPED"}
TERMINAL = DONE_OK | {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "REVOKED"}
_PENDING_ARRAY = re.compile(r"^(\d+)_\[([0-9,\-%]+)\]$")


def sacct(job_ids: Iterable[str], timeout: float = 30) -> dict[str, dict[str, str]]:
    """{task id: {FIELDS...}}; pending arrays are expanded per task."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if str(j) and str(j)[0].isdigit()})
    if not ids:
        return {}
    if not shutil.which("sacct"):
        raise InatError("sacct not found: job states need Slurm's accounting (run this on a login node)")
    try:
        out = subprocess.run(["sacct", "-j", ",".join(ids), "-X", "-D", "-n", "-P", "-o", ",".join(FIELDS)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InatError(f"sacct did not answer within {timeout:.0f} s") from None
    if out.returncode != 0:
        first = (out.stderr.strip() or f"exit {out.returncode}").splitlines()[0]
        raise InatError(f"sacct failed: {first}")
    rows: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != len(FIELDS):
            continue
        row = dict(zip(FIELDS, parts))
        row["State"] = row["State"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        match = _PENDING_ARRAY.match(row["JobID"])
        if match:
            for task in _expand(match.group(2)):
                # a pending task has no number of its own yet
                rows[f"{match.group(1)}_{task}"] = {**row, "JobID": f"{match.group(1)}_{task}", "JobIDRaw": ""}
        else:
            before = rows.get(row["JobID"])
            # an earlier attempt of a requeued job: this later row is the state, both are the cost
            row["attempts"] = (before["attempts"] if before else []) + [
                {"ElapsedRaw": row["ElapsedRaw"], "AllocTRES": row["AllocTRES"]}]
            rows[row["JobID"]] = row
    return rows


def allocations(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """sacct's row of each job id given, as an array task (<array>_<i>) or as Slurm's own number of
    the task (SLURM_JOB_ID, which run.json records): both name the same row."""
    wanted = {str(j) for j in job_ids if j}
    found = sacct(wanted)
    by_id = {**{r["JobIDRaw"]: r for r in found.values() if r.get("JobIDRaw")}, **found}
    return {j: by_id[j] for j in wanted if j in by_id}


def gpus_in(tres: str) -> int:
    """GPUs in a TRES string: `gres/gpu=M`, else the sum of the typed `gres/gpu:TYPE=M` (Slurm lists
    both for typed GPUs, and they count the same GPUs)."""
    plain = typed = 0
    for item in tres.split(","):
        name, _, value = item.strip().partition("=")
        if not value.isdigit():
            continue
        if name == "gres/gpu":
            plain += int(value)
        elif name.startswith("gres/gpu:"):
            typed += int(value)
    return plain or typed


def cpus_in(tres: str) -> int:
    return next((int(v) for k, _, v in (i.strip().partition("=") for i in tres.split(","))
                 if k == "cpu" and v.isdigit()), 0)


def cost(row: dict[str, str], seconds: float | None = None) -> dict[str, float | int | None]:
    """elapsed_s, cpus, gpus, cpu_hours, gpu_hours of a sacct row: its AllocTRES x `seconds` (default:
    the job's ElapsedRaw, summed over its attempts). None where sacct says nothing (a local task, a
    job not yet accounted). cpus and gpus are the latest attempt's."""
    attempts = row.get("attempts") or []
    if seconds is None and len(attempts) > 1:
        each = [cost(a) for a in attempts]
        total = {k: round(sum(c[k] or 0 for c in each), 4) for k in ("elapsed_s", "cpu_hours", "gpu_hours")}
        return {**each[-1], **total}
    if seconds is None:
        raw = row.get("ElapsedRaw", "")
        seconds = float(raw) if raw.isdigit() else None
    tres = row.get("AllocTRES", "")
    cpus, gpus = cpus_in(tres), gpus_in(tres)
    hours = None if seconds is None else seconds / 3600
    return {"elapsed_s": seconds, "cpus": cpus if tres else None, "gpus": gpus if tres else None,
            "cpu_hours": round(cpus * hours, 4) if hours is not None and tres else None,
            "gpu_hours": round(gpus * hours, 4) if hours is not None and tres else None}


def total_cost(rows: list[dict[str, Any]], keys=("elapsed_s", "cpu_hours", "gpu_hours")) -> dict[str, float]:
    """The sums of `keys` (elapsed_s, cpu_hours, gpu_hours) over rows; a missing value counts 0."""
    return {key: round(sum(r.get(key) or 0 for r in rows), 4) for key in keys}


def _expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def task_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per task of every record: stage, the sacct FIELDS, and its `cost` (None for local tasks)."""
    slurm_ids = [t for r in records if r.get("cluster", "slurm") == "slurm" for t in r["task_ids"]]
    found = sacct(slurm_ids) if slurm_ids else {}
    rows = []
    for rec in records:
        for i, task in enumerate(rec["task_ids"]):
            if rec.get("cluster", "slurm") == "slurm":
                row = found.get(task) or {"JobID": task, "JobName": f"inat-{rec['stage']}",
                                          "State": "SUBMITTED", "Elapsed": "", "ExitCode": ""}
                row = {**row, **cost(row)}
            else:
                states, errors = rec.get("states") or [], rec.get("errors") or []
                row = {"JobID": task, "JobName": f"inat-{rec['stage']}",
                       "State": states[i] if i < len(states) else "PENDING", "Elapsed": "", "ExitCode": "",
                       "Error": errors[i] if i < len(errors) and errors[i] else "", **cost({})}
            rows.append({"stage": rec["stage"], **row, "index": i, "folder": rec.get("folder", "")})
    return rows


def summary(rows: list[dict[str, str]]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["State"]] = counts.get(r["State"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items()) or "no jobs"


def all_done(rows: list[dict[str, str]]) -> bool:
    return all(r["State"] in TERMINAL for r in rows)


def failed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["State"] in TERMINAL - DONE_OK]


def wait_for(records: list[dict[str, Any]], poll_s: float = 5.0, timeout_s: float | None = None,
             say=print) -> list[dict[str, str]]:
    """Poll until every task of `records` has ended; returns the final rows."""
    start = time.monotonic()
    last = ""
    while True:
        rows = task_rows(records)
        text = summary(rows)
        if text != last:
            say(f"[{time.monotonic() - start:5.0f} s] {text}")
            last = text
        if all_done(rows):
            return rows
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise InatError(f"jobs still running after {timeout_s:.0f} s: {text}")
        time.sleep(poll_s)


def cancel(records: list[dict[str, Any]]) -> None:
    """Best effort: scancel the Slurm jobs of `records` (used when a later submission fails)."""
    ids = sorted({r["job_id"] for r in records if r.get("cluster", "slurm") == "slurm"})
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def wait_gone(job_ids: Iterable[str], timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait until squeue lists none of `job_ids` (array ids), COMPLETING included: sacct says CANCELLED
    at once, while the job's processes may run on for Slurm's KillWait."""
    wanted = {str(j).split("_")[0] for j in job_ids}
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, timeout=30)
        left = wanted & set(out.stdout.split()) if out.returncode == 0 else wanted
        if not left:
            return
        if time.monotonic() > deadline:
            raise InatError(f"job(s) {', '.join(sorted(left))} still in squeue after {timeout_s:.0f} s")
        time.sleep(poll_s)


def set_dependency(job_id: str, dependency: str) -> bool:
    """Replace the dependency of job `job_id` (an sbatch --dependency string) while it is pending;
    False if it is not pending any more (it started or ended: nothing to hold back) or Slurm refused."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                           timeout=30)
    fields = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
    if shown.returncode != 0 or fields.get("JobState") != "PENDING":
        return False
    done = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"Dependency={dependency}"],
                          capture_output=True, text=True, timeout=30)
    return done.returncode == 0
