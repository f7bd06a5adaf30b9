"""A sweep's Optuna study on a database server (`--storage URL`): the URL and its password, the
connection check, and Optuna's own heartbeat in place of the journal's heartbeat files.

The password: sweep.json keeps the URL with the password masked (`***`, as SQLAlchemy prints it);
the real URL goes to SWEEP/storage-url.secret, created with mode 0600 (its owner alone reads it, as
with ~/.netrc or ~/.pgpass). Agents read it there when they open the study. So it is in no sbatch
script, no submitit pickle and no job environment (Slurm keeps a job's environment in its state
files and, where a site sets AccountingStoreFlags=job_env, in the accounting database), and an
agent requeued hours later, `add-agents` or `sweep-status` from another shell find it without the
user exporting anything. `collect` copies no such file. A URL without a password (socket or peer
authentication, ~/.pgpass) writes none.

The heartbeat: the RDBStorage of an agent is opened with Optuna's `heartbeat_interval` and
`grace_period`. Optuna records heartbeats from a thread of its own only inside `optimize()`; our
agents ask and tell, so `TrialHeartbeat` makes the same public `record_heartbeat` call, at once and
then every interval. Before each ask an agent calls `optuna.storages.fail_stale_trials`, which fails
the RUNNING trials whose last heartbeat is older than the grace period (by the database server's
clock, so node clocks do not matter) and passes each to the storage's
`heartbeat_stale_trial_callback`, `HandOn`. Like Optuna's RetryHeartbeatStaleTrialCallback it
enqueues the dead trial's parameters again, but as a trial that resumes the dead trial's run
directory (user attributes `run_dir`, `resumes`, as `liveness.requeue` sets them for a requeued
agent), so the run goes on after its last finished epoch rather than from scratch in a new
directory, `sweep-status` shows the old trial as superseded, and `run_cap` counts the run once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
from pathlib import Path

from ..errors import ConfigError, InatError
from .liveness import Beating, run_dir_of
from .store import Sweep, mark_run, trial_name

log = logging.getLogger("inat")
SECRET_FILE = "storage-url.secret"
# The drivers the .[mysql] and .[postgres] extras install, for URLs that name none (SQLAlchemy's own
# defaults, mysqlclient and psycopg2, need a compiler and client headers to install).
DRIVERS = {"mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql", "postgresql": "postgresql+psycopg",
           "postgres": "postgresql+psycopg"}
EXTRAS = {"pymysql": "mysql", "psycopg": "postgres"}
CONNECT_TIMEOUT_S = 10
# A trial that kills its agent every time (the kernel's OOM killer, a bad node) is not handed on for ever.
MAX_HAND_ONS = 3
_PASSWORD = re.compile(r"(//[^/@:]*:)[^@/]*@")


def _mask_raw(text: str) -> str:
    """What a message may show of a string that did not even parse as a URL: with anything that looks
    like a password masked, and nothing at all without a `//` to tell where the password would be."""
    return " " + _PASSWORD.sub(r"\1***@", text) if "//" in text else ""


def resolve(url: str) -> str:
    """`url` as SQLAlchemy takes it: a bare mysql://, mariadb:// or postgresql:// gets our extras' driver."""
    from sqlalchemy.engine import make_url  # lazy: SQLAlchemy, only for a --storage URL
    from sqlalchemy.exc import ArgumentError  # lazy: as above

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"--storage{_mask_raw(url)}: not a database URL; expected e.g. "
                          "mysql://USER:PASSWORD@HOST/DB or postgresql://USER:PASSWORD@HOST/DB") from None
    if parsed.drivername in DRIVERS:
        parsed = parsed.set(drivername=DRIVERS[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def masked(url: str) -> str:
    """`url` with its password as `***`: what sweep.json, logs and messages show."""
    from sqlalchemy.engine import make_url  # lazy: as above

    return make_url(url).render_as_string(hide_password=True)


def check_connection(url: str) -> None:
    """Connect once, within CONNECT_TIMEOUT_S: a wrong password, an unknown database, an unreachable
    host or a missing driver is one line naming the masked URL, before anything is created or submitted."""
    import sqlalchemy  # lazy: as above

    parsed = sqlalchemy.engine.make_url(url)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() in (
        "mysql", "mariadb", "postgresql") else {}
    where = f"--storage {masked(url)}"
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except sqlalchemy.exc.NoSuchModuleError:
        raise InatError(f"{where}: SQLAlchemy knows no database {parsed.drivername!r}; use mysql://, "
                        "mariadb:// or postgresql://") from None
    except ImportError as exc:
        driver = parsed.drivername.partition("+")[2] or parsed.get_driver_name()
        hint = f"pip install 'inat-jobs[{EXTRAS[driver]}]'" if driver in EXTRAS else "install it"
        raise InatError(f"{where}: no database driver {driver!r} ({exc}); {hint}") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        args = getattr(exc.orig, "args", ())  # PyMySQL: (code, message); psycopg: (message,)
        reason = " ".join(str(args[-1] if args and isinstance(args[-1], str) else exc.orig).split())
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        raise InatError(f"{where}: cannot connect ({reason})") from None
    finally:
        engine.dispose()


def save_secret(sweep_dir: Path, url: str) -> None:
    """Write the real URL to SWEEP/storage-url.secret, mode 0600 from its creation on; none without a password."""
    from sqlalchemy.engine import make_url  # lazy: as above

    if make_url(url).password is None:
        return
    path = sweep_dir / SECRET_FILE
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(url + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InatError(f"cannot write {path}: {exc.strerror}") from None


def real_url(sweep: Sweep) -> str:
    """The URL agents connect with: the secret file's, else sweep.json's (which then has no password)."""
    path = sweep.dir / SECRET_FILE
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InatError(f"{path}: cannot read the sweep's database URL ({exc.strerror}); it is readable "
                            "by the user who launched the sweep only") from None
    if "***" in (sweep.storage or ""):
        raise InatError(f"{path}: missing, and sweep.json holds the database URL with its password masked "
                        f"({sweep.storage}); write the full URL into that file (mode 0600)")
    return sweep.storage


def make_storage(sweep: Sweep, heartbeat_s: float | None = None, grace_s: float | None = None):
    """The sweep's RDBStorage; with `heartbeat_s`, with Optuna's heartbeat on and `HandOn` for stale trials."""
    import optuna  # lazy: Optuna, only when a study is opened

    kwargs, hand_on = {}, None
    if heartbeat_s is not None:
        hand_on = HandOn(sweep, grace_s)
        # Optuna's heartbeat takes whole seconds.
        kwargs = {"heartbeat_interval": max(1, math.ceil(heartbeat_s)),
                  "grace_period": max(1, math.ceil(grace_s)) if grace_s is not None else None,
                  "heartbeat_stale_trial_callback": hand_on}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(real_url(sweep), engine_kwargs={"pool_pre_ping": True}, **kwargs)
    if hand_on is not None:
        hand_on.storage = storage
    return storage


def fail_stale(study) -> None:
    """Optuna's own: fail RUNNING trials past the grace period, and hand each on (`HandOn`)."""
    import optuna  # lazy: as above

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def asking():
    """Around `study.ask`: Optuna warns that its heartbeat is meant for optimize(); ours asks and tells
    and beats itself (`TrialHeartbeat`, `fail_stale`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


class HandOn:
    """The heartbeat-stale trial callback: the dead trial's run goes on in a new, enqueued trial."""

    def __init__(self, sweep: Sweep, grace_s: float | None):
        self.sweep, self.grace_s, self.storage = sweep, grace_s, None

    def __call__(self, study, trial) -> None:
        run_dir = run_dir_of(trial)
        hops = int(trial.user_attrs.get("handed_on", 0))
        why = f"no heartbeat for {self.grace_s or 0:.0f} s (agent {trial.user_attrs.get('agent', '?')} killed?)"
        if hops >= MAX_HAND_ONS:
            mark_run(self.sweep.trials_dir / run_dir, "failed", error=f"{why}; handed on {hops} times: given up")
            log.warning("trial %s failed: %s; its run %s was handed on %d times already", trial_name(trial.number),
                        why, run_dir, hops)
            return
        study.enqueue_trial(dict(trial.params), user_attrs={"run_dir": run_dir, "resumes": trial.number,
                                                            "handed_on": hops + 1, "why": why})
        log.warning("trial %s failed: %s; its run %s goes on in a new trial", trial_name(trial.number), why, run_dir)


class TrialHeartbeat(Beating):
    """Record Optuna's heartbeat of trial `number` now, then every `interval` seconds, while the block
    runs. At once on entering: Optuna never fails a RUNNING trial that has no heartbeat at all."""

    name = "sweep-db-heartbeat"

    def __init__(self, storage, study, number: int, interval: float):
        super().__init__(max(1, math.ceil(interval)))
        self.storage = storage
        study_id = storage.get_study_id_from_name(study.study_name)
        self.trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def beat(self) -> None:
        self.storage.record_heartbeat(self.trial_id)

    def __str__(self) -> str:
        return f"trial {self.trial_id}"
