"""A sweep on scratch storage, whatever its backend: where it lives, what it fixed, what its trials did.

    SCRATCH/sweeps/<sweep_id>/
      sweep.yaml            the sweep file as given (W&B format)
      sweep.json            id, backend, data root, --set values, storage, seed, created
      optuna.journal        the local backend's study (unless --storage names a database)
      storage-url.secret    --storage's URL with its password, mode 0600 (inat.sweep.rdb)
      trials/<trial>/       one ordinary run directory per trial (see inat.rundir.RUN_FILES)
      agents/<agent>.json   which trial each agent is on, so a requeued agent resumes it
      agents/<agent>.log    agent output when started with --cluster local
      agents/local.json     the local agents' processes (pid, host), so sweep-stop --now finds them
      jobs.json             the Slurm jobs submitted for it (agents, retraining)
      stop.json             the stop flag of `inat-jobs sweep-stop`: agents take no new trial while it is there
      best_config.yaml      written by `inat-jobs sweep-status`

Trial results are read from the run directories (config.yaml, run.json, history.csv), which both
backends write, so the best configs are available without the W&B server or the Optuna storage.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .. import layout
from ..config import RunConfig
from ..data.splits import check_root
from ..errors import ConfigError, InatError
from ..fsutil import atomic_path, make_dir, read_json, write_json
from ..rundir import RunDir
from .spec import SweepSpec, load_spec

BACKENDS = ("local", "wandb")


@dataclass
class Sweep:
    id: str
    dir: Path
    backend: str
    data_root: str
    fixed: dict[str, Any] = field(default_factory=dict)  # the --set values every trial shares
    storage: str | None = None  # an Optuna RDB URL, its password masked (inat.sweep.rdb); None = the journal
    seed: int = 0
    created: str = ""
    wandb_sweep: str | None = None  # entity/project/sweep_id on the W&B server
    # How its agents were started (cluster, agents, trials_per_agent, the resolved cluster profile),
    # so that add-agents starts more the same way; written by the launcher, opaque here. No secrets:
    # the profile refuses WANDB_API_KEY, and the environment is not recorded.
    launch: dict[str, Any] | None = None

    @property
    def spec_path(self) -> Path:
        return self.dir / "sweep.yaml"

    @property
    def trials_dir(self) -> Path:
        return self.dir / "trials"

    @property
    def agents_dir(self) -> Path:
        return self.dir / "agents"

    @property
    def scratch_root(self) -> Path:
        return layout.root_of(self.dir)

    @property
    def stop_path(self) -> Path:
        return self.dir / "stop.json"

    def stop_request(self) -> dict[str, Any] | None:
        """The stop flag's record if `sweep-stop` set it, else None. Agents read it before each new
        trial; a damaged flag still stops them (it was there to stop them)."""
        if not self.stop_path.is_file():
            return None
        try:
            found = read_json(self.stop_path)
        except InatError:
            return {"stopped": "?", "now": False}
        return found if isinstance(found, dict) else {"stopped": "?", "now": False}

    def request_stop(self, now: bool) -> dict[str, Any]:
        record = {"stopped": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "now": now, "host": os.uname().nodename}
        write_json(self.stop_path, record)
        return record

    def clear_stop(self) -> bool:
        """Remove the stop flag; False if there was none."""
        try:
            self.stop_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def spec(self) -> SweepSpec:
        return load_spec(self.spec_path, self.fixed)

    def trial_config(self, spec: SweepSpec, params: dict[str, Any], name: str) -> RunConfig:
        return RunConfig.from_dict({**self.fixed, **spec.constants, **params, **spec.rank_config},
                                   f"sweep {self.id} trial {name}")

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        write_json(self.dir / "sweep.json", data)


def new_sweep(scratch: Path, spec_path: str | Path, backend: str, data_root: str | Path,
              fixed: dict[str, Any], storage: str | None = None, seed: int = 0) -> tuple[Sweep, SweepSpec]:
    """Validate everything (`check_new_sweep`), then create SCRATCH/sweeps/<id>/ with sweep.yaml and sweep.json."""
    spec = check_new_sweep(spec_path, backend, data_root, fixed)
    sweep_id = layout.new_id()
    root = make_dir(layout.sweeps_dir(scratch) / sweep_id)
    sweep = Sweep(sweep_id, root, backend, str(Path(data_root).resolve()), dict(fixed), storage, seed,
                  time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        with atomic_path(root / "sweep.yaml") as tmp:
            shutil.copyfile(spec_path, tmp)
        sweep.save()
    except BaseException:  # e.g. a full disk: leave no sweep directory that load_sweep half-reads
        shutil.rmtree(root, ignore_errors=True)
        raise
    return sweep, spec


def check_new_sweep(spec_path: str | Path, backend: str, data_root: str | Path,
                    fixed: dict[str, Any]) -> SweepSpec:
    """What new_sweep checks before it writes anything (a dry run stops here); returns the spec."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
    spec = load_spec(spec_path, fixed)
    spec.check_overrides(fixed)
    if not Path(data_root).is_dir():
        raise InatError(f"--data {data_root}: directory not found")
    check_root(data_root)  # every trial would fail on a root without train/ and val/
    return spec


def sweep_ids(scratch_root: str | os.PathLike) -> list[str]:
    """The ids of the sweeps under SCRATCH/sweeps/ (folders with a sweep.json), oldest first."""
    return sorted(p.parent.name for p in layout.sweeps_dir(Path(scratch_root)).glob("*/sweep.json"))


def find_sweep(scratch_root: str | os.PathLike, sweep_id: str, record: bool = True,
               missing_ok: bool = False) -> Path | None:
    """SCRATCH/sweeps/<sweep_id>: the one lookup of a sweep by id. The id must be one `layout.check_id`
    accepts (as --run-id), so it cannot lead outside SCRATCH/sweeps/; the folder must hold the sweep's
    record, sweep.json (with `record=False` it need only exist, as for a report of copied trials).
    Otherwise None with `missing_ok`, else a one-line error that names the latest sweeps there."""
    where = layout.sweeps_dir(Path(scratch_root))
    path = where / layout.check_id(sweep_id, "sweep id", "SCRATCH/sweeps/")
    wanted = path / "sweep.json" if record else path
    if not (wanted.is_file() if record else wanted.is_dir()):
        if missing_ok:
            return None
        known = sweep_ids(scratch_root)[-5:]
        hint = f" (latest there: {', '.join(known)})" if known else ""
        raise InatError(f"sweep {sweep_id!r} not found: looked for {wanted}{hint}; "
                        "pass --out (or set $INAT_SCRATCH) to the scratch root it was launched with")
    return path


def load_sweep(scratch_root: str | os.PathLike, sweep_id: str) -> Sweep:
    """The sweep `sweep_id` under SCRATCH/sweeps/ (see `find_sweep`), from its sweep.json."""
    path = find_sweep(scratch_root, sweep_id) / "sweep.json"
    try:
        data = read_json(path)
        fields = {k: v for k, v in data.items() if k in Sweep.__dataclass_fields__ and k != "dir"}
        return Sweep(**fields, dir=path.parent)
    except (InatError, TypeError, AttributeError) as exc:  # unreadable, or not the mapping save() writes
        what = str(exc) if isinstance(exc, InatError) else f"{path}: not a sweep record ({exc})"
        raise InatError(f"{what}; the sweep's own record is damaged: restore it from a copy, or "
                        "launch the sweep again") from None


# ---- trial results from run directories -----------------------------------------------------------


def trial_name(number: int) -> str:
    """Local-backend trial directories: trials/0000, trials/0001, ... (W&B trials use the run id)."""
    return f"{number:04d}"


def read_trial(run_dir: Path, metric: str = "val_accuracy", maximize: bool = True) -> dict[str, Any]:
    """What one trial's run directory says: status, epochs done, its best epoch by `metric`, config.

    The best epoch is picked by the rule train() keeps model.keras by (`inat.rundir.best_epoch`,
    over the committed epochs), so for a trial trained with the sweep's metric it is the epoch its
    model.keras holds; `best_val_accuracy` is the val_accuracy of that epoch.
    """
    run = RunDir(run_dir)
    history = run.committed_history()
    best = run.best(metric, maximize)
    at = next((r for r in history if best and int(r["epoch"]) == best[0]), {})
    val_acc = at.get("val_accuracy", math.nan)
    return {
        "trial": run.name,
        "state": run.state_name(),
        "epochs_done": len(history),
        "best_metric": best[1] if best else None,
        "best_epoch": best[0] if best else None,
        "best_val_accuracy": None if math.isnan(val_acc) else val_acc,
        "config_path": run.file("config.yaml"),
    }


class Ranked(NamedTuple):
    """A finished trial, ranked by the sweep's metric at its best epoch (the epoch its model.keras holds)."""

    trial: str
    config: RunConfig  # keeps its model by the sweep's metric (monitor) when retrained
    metric: str
    value: float  # the sweep's metric at the best epoch
    epoch: int
    val_accuracy: float | None  # val_accuracy at that epoch


def best_configs(sweep_dir: str | os.PathLike, top_k: int = 1) -> list[Ranked]:
    """The `top_k` finished trials by the sweep's metric, best first.

    Only trials that trained all their epochs count: pruned ones stopped early because they were
    behind, and failed or still-running ones have no final result.
    """
    sweep_dir = Path(sweep_dir)
    spec = load_spec(sweep_dir / "sweep.yaml")
    rows = [read_trial(d, spec.metric, spec.maximize) for d in trial_dirs(sweep_dir / "trials")]
    done = [r for r in rows if r["state"] == "finished" and r["best_metric"] is not None
            and r["config_path"].is_file()]
    done.sort(key=lambda r: r["best_metric"], reverse=spec.maximize)
    return [Ranked(r["trial"], RunConfig.load(r["config_path"]).replace(**spec.rank_config), spec.metric,
                   r["best_metric"], r["best_epoch"], r["best_val_accuracy"]) for r in done[:top_k]]


def mark_run(run_dir: Path, status: str, **extra: Any) -> None:
    """Record the sweep's verdict in the trial's run.json (train() only knows completed/stopped/failed)."""
    RunDir(run_dir).update_info(status=status, **extra)


def trial_dirs(trials: Path) -> list[Path]:
    """The trial run directories under SWEEP/trials/, sorted (none if it is not there yet)."""
    return sorted(d for d in trials.iterdir() if d.is_dir()) if trials.is_dir() else []
