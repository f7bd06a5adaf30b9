"""Shared fixtures and helpers: tiny synthetic data, one tiny trained run, a local sweep with stand-in
trials, and where the real photos are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# W&B stays off unless a test turns it on: it starts a service process per run.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
GPU_IMAGE_ENV = "INAT_TEST_GPU_IMAGE"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, as scripts/test.sh runs the suite), the tests
    that submit to the Slurm cluster, and the many-agent ones, run one after another on one worker:
    the cluster's one node has two CPUs, jobs are timed against their limits, and sixteen agents on
    the same two cores would slow the jobs further. A test that names its own group (the requeue
    test, whose job sleeps through its epochs) keeps it. The groups go first, one to each worker,
    so that the longest stretches start at once and the short tests fill in around them."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("slurm") or item.module.__name__.endswith("test_concurrent_agents"):
            item.add_marker(pytest.mark.xdist_group("cluster"))
    # The GPU image (3.7 GB, about 15 minutes to build) is not built in CI: its test runs where
    # $INAT_TEST_GPU_IMAGE names one (containers/README.md), and is deselected, not skipped, elsewhere.
    if not os.environ.get(GPU_IMAGE_ENV):
        gpu = [item for item in items if item.get_closest_marker("gpu_image")]
        if gpu:
            config.hook.pytest_deselected(items=gpu)
            items[:] = [item for item in items if not item.get_closest_marker("gpu_image")]
    first = {"requeue": 0, "cluster": 1}
    items.sort(key=lambda item: min((first.get(m.args[0], 2) for m in item.iter_markers("xdist_group")), default=2))


def require(condition: bool, reason: str) -> None:
    """Skip on a laptop that lacks a service; fail in CI, where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `inat-jobs ARGS` in a subprocess, as a user would.

    A fresh process costs a TensorFlow import (seconds) for most commands; use it where that process
    is the point: what TensorFlow writes to file descriptor 2 while it loads (jobs/quiet.py), start-up
    of the real entry point, environment read at import time, signals, or child processes whose
    output must land in the result. Everything else goes through `cli`."""
    return subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True,
                          env=_cli_env(env), cwd=cwd, timeout=timeout)


def start_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """`inat-jobs ARGS` started as `run_cli` runs it, without waiting for it: `.communicate()` it."""
    return subprocess.Popen([sys.executable, "-m", "jobs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_cli_env(env), cwd=cwd)


def _cli_env(env: dict | None) -> dict:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return full_env


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `inat-jobs ARGS` in this process, through the real entry point `jobs.cli.main`, and return
    what a user would see, like `run_cli` does: the exit status (2 and one `inat-jobs: error: ...` line
    for a user error, 1 and a traceback for a bug), stdout, and stderr with the `LEVEL: message` log
    lines main() sets up and the warnings a fresh interpreter would print.

    It cannot see what bypasses Python's sys.stdout/sys.stderr (TensorFlow's C++ logging, child
    processes) nor what happens only once per process (imports): those checks need `run_cli`."""
    import logging
    import traceback
    import warnings

    import submitit  # noqa: F401 - see below
    from typer.testing import CliRunner

    from jobs.cli import main

    # submitit's first import runs logging.config.dictConfig, which closes every logging handler; absl's
    # (TensorFlow's) then closes its stream, pytest's capture, unless that is the current sys.stderr.
    # So it is imported here, before sys.stderr is swapped, never inside the call.

    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.argv, os.getcwd()
    code = 0
    with CliRunner().isolation(env=env) as (out, err, _):
        # main()'s logging.basicConfig is a no-op under pytest, whose handlers are already on the root
        # logger: put main's own format on the (captured) stderr for the call.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        sys.argv = ["inat-jobs", *args]
        try:
            if cwd is not None:
                os.chdir(cwd)
            with warnings.catch_warnings():
                _fresh_interpreter_warnings()
                main()
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            code = 1 if isinstance(exc.code, str) else (exc.code or 0)
        except Exception:  # noqa: BLE001 - a bug: the interpreter would print the traceback, exit 1
            traceback.print_exc()
            code = 1
        finally:
            root.handlers[:], _, sys.argv, cwd_before = saved
            root.setLevel(saved[1])
            os.chdir(cwd_before)
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["inat-jobs", *args], code, stdout, stderr)


def _fresh_interpreter_warnings() -> None:
    """Python's start-up warning filters (not pytest's), shown on sys.stderr as the interpreter would."""
    import warnings

    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def one_error_line(result, fragment: str) -> str:
    """The CLI failed as users should see it: exit 2, no traceback, one error line naming `fragment`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("inat-jobs: error")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from inat.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", n_train_per_class=20, n_test_per_class=6)


TINY = [
    "model=scratch", "filt_org=[8,8,16,16,16]", "num_dense=16", "image_size=32",
    "batch_size=32", "epochs=2", "learning_rate=0.003", "activation=relu",
]


@pytest.fixture(scope="session")
def tiny_cfg():
    from inat.config import RunConfig

    return RunConfig.load(None, TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_data, tiny_cfg) -> Path:
    """One tiny model trained for 2 epochs; tests that only read a run share it."""
    from inat.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_cfg, run_dir, demo_data, verbose=0)
    return run_dir



# ---- one whole pipeline on the Slurm cluster, shared ----------------------------------------------

CI_PROFILE = REPO / "configs" / "clusters" / "ci.yaml"
SLURM_SWEEP = ("method: random\nmetric: {name: val_accuracy, goal: maximize}\n"
               "parameters:\n  learning_rate: {values: [0.01, 0.003]}\n  dropout: {values: [0.0, 0.2]}\n")
SLURM_TINY = ["--set", "epochs=2", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set",
              "num_dense=16", "--set", "batch_size=32"]


@pytest.fixture(scope="session")
def slurm_pipeline(tmp_path_factory, demo_data):
    """`inat-jobs pipeline --cluster slurm` (2 agents, top 1, W&B offline, a planted W&B key in the
    submitting environment), submitted once: tests/test_slurm.py checks the jobs and their outputs,
    tests/test_secrets.py that the key is nowhere. Returns a dict: tmp, scratch, key, result (the
    completed `pipeline --json` call), out (its JSON), submit_s. The caller waits for the jobs."""
    import secrets
    import time

    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    tmp = tmp_path_factory.mktemp("slurm-pipeline")
    (tmp / "s.yaml").write_text(SLURM_SWEEP)
    key = f"inat-planted-secret-{secrets.token_hex(10)}"
    env = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE), "WANDB_MODE": "offline", "WANDB_API_KEY": key}
    start = time.monotonic()
    result = run_cli("pipeline", "--sweep", str(tmp / "s.yaml"), "--agents", "2", "--trials-per-agent", "1",
                     "--data", str(demo_data), "--out", str(tmp / "scratch"), *SLURM_TINY, "--top-k", "1",
                     "--seeds", "1", "--cluster", "slurm", "--json", env=env)
    submit_s = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    return {"tmp": tmp, "scratch": tmp / "scratch", "key": key, "env": env, "result": result,
            "out": json.loads(result.stdout), "submit_s": submit_s}

# ---- a local-backend sweep whose trials are a stand-in function (no TensorFlow) ----------------------

LOCAL_SPEC = """
method: bayes
metric: {name: val_accuracy, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
parameters:
  kernel_size: {values: [[3, 3, 3, 3, 3], [5, 5, 5, 5, 5]]}
  dropout: {min: 0.0, max: 0.5}
  learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
"""


def empty_dataset(tmp_path):
    """A dataset root as new_sweep checks it (train/ and val/); stand-in trials never read images."""
    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)


def make_sweep(tmp_path, spec_text=LOCAL_SPEC, fixed=None):
    """A local-backend sweep of `spec_text` under TMP/scratch, with its study, on an empty dataset."""
    from inat.sweep import new_sweep
    from inat.sweep.study import create_study

    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(spec_text)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data",
                            fixed or {"epochs": 6})
    create_study(sweep, spec)
    return sweep


def fake_trial(tr):
    """Learning curve = dropout + 0.01 * epoch, written like train() would write it."""
    from inat.fsutil import write_csv, write_json
    from inat.sweep.local import Outcome

    tr.run_dir.mkdir(parents=True, exist_ok=True)
    rows, best = [], None
    for epoch in range(1, tr.config.epochs + 1):
        value = tr.config.dropout + 0.01 * epoch
        best = value if best is None else max(best, value)
        rows.append([epoch, 1.0, 0.5, 1.0, value, 0.01])
        write_csv(tr.run_dir / "history.csv", ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"], rows)
        tr.config.save(tr.run_dir / "config.yaml")
        if tr.report(epoch, value):
            write_json(tr.run_dir / "run.json", {"status": "stopped"})
            return Outcome(best, epoch, True)
    write_json(tr.run_dir / "run.json", {"status": "completed"})
    return Outcome(best, tr.config.epochs, False)


# ---- W&B's sweep server, replaced -----------------------------------------------------------------


def fake_agent(monkeypatch, trials: list[tuple[str, dict]]):
    """Replace the server: `wandb.agent` runs `function` once per (run id, params), offline."""
    import wandb

    from inat.sweep import wandb_backend

    real_init = wandb.init
    monkeypatch.setattr(wandb_backend, "preflight", lambda: "http://wandb.invalid")
    calls = []

    def agent(sweep_id, function, entity=None, project=None, count=None):
        calls.append((sweep_id, entity, project, count))
        for run_id, params in trials[:count]:
            monkeypatch.setenv("WANDB_RUN_ID", run_id)
            monkeypatch.setattr(wandb, "init", lambda **kw: real_init(
                **{**kw, "mode": "offline", "id": run_id, "config": params}))
            try:
                function()
            finally:
                if wandb.run is not None:
                    wandb.run.finish()

    monkeypatch.setattr(wandb, "agent", agent)
    return calls


# ---- sweep agents as processes, whose trials are a stand-in (sleep, then report the dropout) ------

STANDIN_SPEC = """
method: random
metric: {name: val_accuracy, goal: maximize}
parameters:
  dropout: {min: 0.0, max: 0.5}
"""

# argv = scratch, sweep id, agent id, count, log file, seconds per trial, stale_after, heartbeat seconds.
_STANDIN_AGENT = r"""
import os, sys, time
from inat.sweep import load_sweep
from inat.sweep.local import Outcome, run_agent

scratch, sweep_id, agent_id, count, log_path, sleep_s, stale_after, heartbeat_s = sys.argv[1:9]
log = open(log_path, "a", buffering=1)  # line-buffered: a SIGKILL loses no finished line

def trial(tr):
    log.write(f"start {tr.name} {agent_id} {os.getpid()}\n")
    time.sleep(float(sleep_s))
    tr.report(1, tr.config.dropout)
    log.write(f"end {tr.name} {agent_id} {os.getpid()}\n")
    return Outcome(tr.config.dropout, 1, False)

result = run_agent(load_sweep(scratch, sweep_id), agent_id, int(count), float(stale_after),
                   trial_fn=trial, heartbeat_s=float(heartbeat_s))
log.write(f"done {len(result['trials'])} {result['stop_reason']}\n")
"""


def start_standin_agent(sweep, agent_id: str, count: int, sleep_s: float = 0.0, stale_after: float = 600.0,
                        heartbeat_s: float = 0.2) -> subprocess.Popen:
    """One agent process of `sweep`; its trial events go to SWEEP/<agent id>.test.log
    ("start|end <run dir> <agent> <pid>", then "done <n> <reason>"), its output to .test.err."""
    log = sweep.dir / f"{agent_id}.test.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _STANDIN_AGENT, str(sweep.scratch_root), sweep.id, agent_id, str(count), str(log),
           str(sleep_s), str(stale_after), str(heartbeat_s)]
    return subprocess.Popen(cmd, env=env, stdout=open(sweep.dir / f"{agent_id}.test.err", "ab"),
                            stderr=subprocess.STDOUT)


def standin_events(sweep) -> list[tuple[str, int, str, int]]:
    """(start|end, run directory number, agent id, pid) from every stand-in agent's log, unordered."""
    out = []
    for log in sweep.dir.glob("*.test.log"):
        for line in log.read_text().splitlines():
            kind, *rest = line.split()
            if kind in ("start", "end"):
                out.append((kind, int(rest[0]), rest[1], int(rest[2])))
    return out


def wait_standin_agents(procs, sweep, timeout: float) -> None:
    """Wait for the agent processes; all killed and a failure after `timeout`; each must exit 0."""
    import time

    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"agents still running after {timeout} s")
    bad = {Path(p.args[5]).name: p.returncode for p in procs if p.returncode != 0}
    errs = {f.name: f.read_text()[-2000:] for f in sweep.dir.glob("*.test.err") if f.read_text().strip()}
    assert not bad, (bad, errs)
