"""The W&B sweep backend: W&B's server picks the configs and stops runs (hyperband); we train.

Every call that needs the server is guarded so that a node without a key or without a route to the
server fails within seconds with one line pointing at `--backend local`, instead of hanging in W&B's
retry loop: the API key is looked up first (WANDB_API_KEY, or the netrc entry W&B itself would use),
then the server's port is probed with a short timeout, and `wandb.sweep` runs under a deadline.

Trials still write ordinary run directories under SCRATCH/sweeps/<id>/trials/<wandb run id>/, so
`sweep-status` and `best_configs` work from scratch storage without asking the server.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
from urllib.parse import urlsplit

from .. import layout, tracking
from ..errors import InatError
from .spec import SweepSpec
from .store import Sweep, mark_run, read_trial

log = logging.getLogger("inat")
PROBE_TIMEOUT_S = 5.0
CREATE_TIMEOUT_S = 30.0
HINT = "use --backend local (the same sweep file, run with Optuna on scratch storage)"


def preflight(timeout: float = PROBE_TIMEOUT_S) -> str:
    """Fail fast unless W&B is online, has a key and the server answers; return the server URL."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise InatError(f"--backend wandb needs the W&B server, but WANDB_MODE={mode}; unset it, or {HINT}")
    os.environ.setdefault("WANDB_SILENT", "true")
    base_url = server_url()
    if not _has_api_key(base_url):
        raise InatError(f"--backend wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`); "
                        f"on nodes without internet {HINT}")
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise InatError(f"--backend wandb: cannot reach the W&B server {base_url} "
                        f"({exc.strerror or exc}); {HINT}") from None
    return base_url


def server_url() -> str:
    """The W&B server's API URL: WANDB_BASE_URL, else W&B's default."""
    import wandb  # lazy: W&B, only for the W&B backend

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def _has_api_key(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib import wbauth  # lazy: W&B, as above

        return bool(wbauth.read_netrc_auth(host=base_url))
    except ImportError:  # an older/newer wandb without this module: read the netrc ourselves
        try:
            return netrc.netrc().authenticators(urlsplit(base_url).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False
    except Exception as exc:  # a key in the wrong format
        raise InatError(f"--backend wandb: {str(exc).splitlines()[0]}") from None


def create(sweep: Sweep, spec: SweepSpec, timeout: float = CREATE_TIMEOUT_S) -> str:
    """Register the sweep file with W&B, unchanged; return entity/project/sweep_id."""
    import wandb  # lazy: W&B, as above

    project = spec.raw.get("project") or os.environ.get("WANDB_PROJECT", tracking.PROJECT)
    entity = spec.raw.get("entity") or os.environ.get("WANDB_ENTITY") or None
    box: dict = {}

    def call():
        try:
            box["id"] = wandb.sweep(sweep=dict(spec.raw), project=project, entity=entity)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise InatError(f"--backend wandb: the W&B server did not create the sweep within {timeout:.0f} s; {HINT}")
    if "error" in box:
        first = (str(box["error"]).splitlines() or [type(box["error"]).__name__])[0]
        raise InatError(f"--backend wandb: {first}; {HINT}")
    sweep.wandb_sweep = f"{entity or ''}/{project}/{box['id']}"
    sweep.save()
    return sweep.wandb_sweep


def sweep_page(sweep: Sweep) -> str:
    """The sweep's page on W&B, W&B's own dashboard of it, as W&B builds the URL from `server_url`.
    Without an entity in the sweep file or in WANDB_ENTITY, W&B chose the API key's default entity,
    which only the server knows: ENTITY stands in for it."""
    import wandb  # lazy: W&B, as above

    if not sweep.wandb_sweep:
        raise InatError(f"sweep {sweep.id}: {sweep.dir / 'sweep.json'} names no W&B sweep (wandb_sweep)")
    entity, project, sweep_id = sweep.wandb_sweep.split("/")
    entity = entity or os.environ.get("WANDB_ENTITY") or "ENTITY"
    return wandb.Settings(base_url=server_url(), entity=entity, project=project, sweep_id=sweep_id).sweep_url


def run_agent(sweep: Sweep, count: int | None = None) -> None:
    """`wandb.agent` with a function that trains one trial into trials/<run id>/."""
    preflight()
    import wandb  # lazy: W&B, as above

    from ..train import train  # lazy: Keras; and tests replace inat.train.train

    spec = sweep.spec()
    entity, project, sweep_id = sweep.wandb_sweep.split("/")
    sweep.agents_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(sweep.agents_dir))  # W&B's agent keeps its files here

    def trial() -> None:
        run_id = os.environ.get("WANDB_RUN_ID") or wandb.util.generate_id()
        run_dir = sweep.trials_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(dir=str(run_dir), group=sweep.id, job_type="sweep", mode="online")
            # The sweep reads the summary: make it the best epoch, as the local backend's value is.
            run.define_metric("epoch")
            run.define_metric(spec.metric, step_metric="epoch", summary="max" if spec.maximize else "min")
            cfg = sweep.trial_config(spec, dict(run.config), run_id)
            train(cfg, run_dir, sweep.data_root, wandb_group=sweep.id, wandb_job_type="sweep", verbose=0,
                  cache_root=layout.cache_dir(sweep.scratch_root))
        except Exception as exc:
            if stopped_by_wandb(exc):
                info = read_trial(run_dir, spec.metric, spec.maximize)
                mark_run(run_dir, "pruned", pruned_at_epoch=info["epochs_done"], stopped_by="wandb sweep")
                log.info("trial %s stopped early by the W&B sweep", run_id)
                return
            # A genuine error, even a bare Exception() from some library: W&B's agent counts the
            # run as errored (and stops after too many); the run directory says failed.
            mark_run(run_dir, "failed", error=(str(exc).splitlines() or [type(exc).__name__])[0])
            raise

    wandb.agent(sweep_id, function=trial, entity=entity or None, project=project, count=count)


def stopped_by_wandb(exc: BaseException) -> bool:
    """True only if W&B's agent stopped the run that this thread trains, and `exc` is how it did.

    W&B's agent (`wandb.agents.pyagent.Agent._stop_run`, on a "stop" command from the server, e.g.
    hyperband, and on its own exit) sets the agent's `_run_status[run_id] = STOPPED` and calls
    `_terminate_thread(thread)`, which marks the thread running our function with
    `thread._terminated = True` and then raises the class `Exception` in it asynchronously
    (`PyThreadState_SetAsyncExc`). The agent object is not reachable from the function; the thread
    is, as `threading.current_thread()`. So a stop needs both: W&B's mark on this thread, and a bare
    `Exception()` as the exception or in its chain (code on the way may wrap it). The mark is a
    private attribute: should a W&B upgrade rename it, this returns False and a stopped run is
    recorded as failed, never the other way round. A library's own bare `Exception()` on a thread
    W&B did not stop is a failure.
    """
    if getattr(threading.current_thread(), "_terminated", None) is not True:
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if type(exc) is Exception and not exc.args:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
