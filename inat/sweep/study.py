"""The local backend's Optuna study on shared scratch storage: create it, open it, and count its trials.

Storage: by default a JournalStorage file, SCRATCH/sweeps/<id>/optuna.journal, with Optuna's
JournalFileOpenLock (an O_EXCL lock file: atomic on NFSv3+, Lustre, GPFS and BeeGFS, and no symlinks,
which some mounts forbid). `--storage URL` uses an Optuna RDB (MySQL/MariaDB, PostgreSQL) instead,
opened by `inat.sweep.rdb` (its password, Optuna's heartbeat). Optuna is imported when a study is
opened, not with this module.
"""

from __future__ import annotations

from ..config import RunConfig
from ..errors import InatError
from . import rdb
from .space import make_pruner, make_sampler, optuna_space
from .spec import SweepSpec
from .store import Sweep


def storage_for(sweep: Sweep, heartbeat_s: float | None = None, stale_after: float | None = None):
    """The sweep's Optuna storage. For a database, `heartbeat_s` turns Optuna's heartbeat on, with
    `stale_after` as its grace period (agents, `sweep-status --fail-stale`); the journal ignores both."""
    import optuna  # lazy: Optuna, only when a study is opened
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # lazy: Optuna, as above

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweep.storage:
        return rdb.make_storage(sweep, heartbeat_s, stale_after)
    path = str(sweep.dir / "optuna.journal")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    except ValueError as exc:  # json.JSONDecodeError, or Optuna's "Invalid log format." for a torn line
        raise InatError(
            f"{path}: the sweep's Optuna journal is damaged ({exc}); the trial run directories "
            f"still hold every result: `inat-jobs sweep-report {sweep.id}` reads them without it"
        ) from None


def create_study(sweep: Sweep, spec: SweepSpec) -> None:
    import optuna  # lazy: Optuna, as above

    optuna_space(spec)  # raise now, not in every agent, for forms Optuna cannot express
    make_sampler(spec, sweep.seed)
    try:
        optuna.create_study(study_name=sweep.id, storage=storage_for(sweep),
                            direction="maximize" if spec.maximize else "minimize")
    except ImportError as exc:
        raise InatError(f"--storage {sweep.storage}: missing database driver ({exc})") from None
    except Exception as exc:
        if sweep.storage:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InatError(f"--storage {sweep.storage}: cannot create the study ({first})") from None
        raise


def open_study(sweep: Sweep, spec: SweepSpec, agent_id: str = "", storage=None):
    """The sweep's study; pass `storage` (from `storage_for`) to keep a handle on it for
    `inat.sweep.liveness.set_frozen_attr`."""
    import optuna  # lazy: Optuna, as above

    epochs = sweep_epochs(sweep, spec)
    study = optuna.load_study(study_name=sweep.id, storage=storage or storage_for(sweep),
                              sampler=make_sampler(spec, sweep.seed, agent_id), pruner=make_pruner(spec, epochs))
    if agent_id:  # an agent's draws depend on how far the sweep had got when it (re)started
        study.sampler = make_sampler(spec, sweep.seed, agent_id, len(study.get_trials(deepcopy=False)))
    return study


def sweep_epochs(sweep: Sweep, spec: SweepSpec) -> int:
    p = spec.params.get("epochs")
    if p is not None and p.distribution != "constant":
        return int(p.max if p.max is not None else max(int(v) for v in p.values))
    return RunConfig.from_dict({**sweep.fixed, **spec.constants}).epochs
