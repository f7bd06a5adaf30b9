"""The W&B sweep backend's glue, with W&B's server replaced: `wandb.sweep` and `wandb.agent` need it.

What stays real: the sweep folder, the trial configs, `train()` on tiny data and W&B's own run files
(offline). The stand-in agent does what W&B's does for each trial: sets WANDB_RUN_ID, lets the
function call `wandb.init` (which receives the trial's parameters as config) and finishes the run.
The stop tests run W&B's own agent (`wandb.agents.pyagent`) with only its register and heartbeat
calls replaced, so a "stop" from the server goes through W&B's own `_stop_run`.
The no-key and no-server paths through the real CLI are in test_sweep_cli.py.
"""

from __future__ import annotations

import time

import keras
import pytest
import yaml

from conftest import TINY, fake_agent
from inat.sweep import wandb_backend
from inat.config import RunConfig
from inat.errors import InatError
from inat.fsutil import read_json
from inat.sweep import load_sweep, new_sweep, read_trial

SPEC = """\
method: bayes
metric: {name: val_accuracy, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, s: 1}
parameters:
  learning_rate: {values: [0.01, 0.003]}
  dropout: {distribution: uniform, min: 0.0, max: 0.4}
"""
FIXED = dict(kv.split("=", 1) for kv in TINY if not kv.startswith(("learning_rate", "epochs")))


@pytest.fixture
def wandb_sweep(tmp_path, demo_data):
    path = tmp_path / "sweep.yaml"
    path.write_text(SPEC)
    fixed = {k: yaml.safe_load(v) for k, v in FIXED.items()} | {"epochs": 2}
    sweep, spec = new_sweep(tmp_path / "scratch", path, "wandb", demo_data, fixed)
    return sweep, spec


def test_create_registers_the_file_unchanged(monkeypatch, wandb_sweep):
    import wandb

    sweep, spec = wandb_sweep
    seen = {}

    def fake_sweep(sweep, project, entity):
        seen.update(sweep=sweep, project=project, entity=entity)
        return "abc123"

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setenv("WANDB_PROJECT", "birds")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    assert wandb_backend.create(sweep, spec) == "/birds/abc123"
    assert seen["sweep"] == yaml.safe_load(SPEC) and seen["project"] == "birds"
    assert load_sweep(sweep.scratch_root, sweep.id).wandb_sweep == "/birds/abc123"  # saved for the agents


def test_create_gives_up_in_one_line_when_the_server_hangs(monkeypatch, wandb_sweep):
    import wandb

    sweep, spec = wandb_sweep
    monkeypatch.setattr(wandb, "sweep", lambda **_: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(InatError, match=r"did not create the sweep within 1 s; use --backend local"):
        wandb_backend.create(sweep, spec, timeout=1.0)
    assert time.monotonic() - start < 5


def test_create_reports_a_server_error_in_one_line(monkeypatch, wandb_sweep):
    import wandb

    sweep, spec = wandb_sweep

    def refused(**_):
        raise RuntimeError("permission denied for entity 'x'\nmore details")

    monkeypatch.setattr(wandb, "sweep", refused)
    with pytest.raises(InatError) as err:
        wandb_backend.create(sweep, spec)
    assert str(err.value) == "--backend wandb: permission denied for entity 'x'; " + wandb_backend.HINT


def test_agent_trains_each_trial_into_the_sweep_folder(monkeypatch, wandb_sweep):
    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    sweep.save()
    trials = [("run0aaaa", {"learning_rate": 0.01, "dropout": 0.1}),
              ("run1bbbb", {"learning_rate": 0.003, "dropout": 0.3})]
    calls = fake_agent(monkeypatch, trials)
    wandb_backend.run_agent(sweep, count=2)
    assert calls == [("abc123", None, "inat-jobs", 2)]
    for run_id, params in trials:
        run_dir = sweep.trials_dir / run_id
        cfg = RunConfig.load(run_dir / "config.yaml")
        assert (cfg.learning_rate, cfg.dropout, cfg.epochs, cfg.image_size) == (
            params["learning_rate"], params["dropout"], 2, 32)
        info = read_trial(run_dir, spec.metric, spec.maximize)
        assert info["state"] == "finished" and info["epochs_done"] == 2
        # W&B's own run files, ready for `wandb sync`, inside the trial's run directory
        assert len(list(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))) == 1


class _InSecondEpoch(keras.callbacks.Callback):
    """At the start of epoch 2: call `then()`, e.g. to ask W&B for a stop or to raise."""

    def __init__(self, then):
        super().__init__()
        self.then = then

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.then()


def _with_callback(monkeypatch, callback):
    import inat.train

    real_train = inat.train.train
    monkeypatch.setattr(inat.train, "train", lambda *a, **kw: real_train(*a, callbacks=[callback], **kw))


def wandb_own_agent(monkeypatch, run_id: str, params: dict):
    """W&B's own agent, `wandb.agents.pyagent`, with only its server calls replaced.

    Registering returns an agent id; each heartbeat returns the next queued command: first a "run"
    command for `run_id` with `params`, then whatever the test puts in the queue (a "stop", as the
    server sends when hyperband stops the run). Everything else is W&B's: the job thread, the
    sweep's config file that `wandb.init` reads, `_stop_run` and its thread termination.
    Returns (commands queue, runs the agent counted as errored).
    """
    import queue

    import wandb
    from wandb.agents import pyagent

    monkeypatch.setattr(wandb_backend, "preflight", lambda: "http://wandb.invalid")
    monkeypatch.setattr(wandb, "Api", lambda *a, **kw: object())
    monkeypatch.setattr(pyagent.Agent, "HEARTBEAT_SLEEP_SECONDS", 0.05)
    monkeypatch.setattr(pyagent.Agent, "_register", lambda self: setattr(self, "_agent_id", "agent-test"))
    commands: queue.Queue = queue.Queue()
    commands.put({"type": "run", "run_id": run_id, "args": {k: {"value": v} for k, v in params.items()}})

    def heartbeat(self, run_status):
        try:
            return [commands.get_nowait()]
        except queue.Empty:
            return []

    monkeypatch.setattr(pyagent.Agent, "_heartbeat_commands", heartbeat)
    errored = []
    real_errored = pyagent.Agent._handle_errored_run

    def handle_errored(self, run_id, count):
        errored.append(run_id)
        return real_errored(self, run_id, count)

    monkeypatch.setattr(pyagent.Agent, "_handle_errored_run", handle_errored)
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: real_init(**{**kw, "mode": "offline"}))
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, function, entity=None, project=None, count=None:
                        pyagent.pyagent(sweep_id, function, entity, project, count))
    return commands, errored


def test_a_run_the_w_and_b_sweep_stops_is_marked_pruned(monkeypatch, wandb_sweep):
    """The server says stop in the run's second epoch; W&B's agent terminates the trial's thread."""
    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    commands, errored = wandb_own_agent(monkeypatch, "run2cccc", {"learning_rate": 0.01, "dropout": 0.0})

    def stop_me():
        commands.put({"type": "stop", "run_id": "run2cccc"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Python bytecode, where the async exception lands
            time.sleep(0.01)
        raise AssertionError("W&B's agent never stopped the run")

    _with_callback(monkeypatch, _InSecondEpoch(stop_me))
    wandb_backend.run_agent(sweep, count=1)
    info = read_trial(sweep.trials_dir / "run2cccc", spec.metric, spec.maximize)
    assert info["state"] == "pruned" and info["epochs_done"] == 1
    assert read_json(sweep.trials_dir / "run2cccc" / "run.json")["pruned_at_epoch"] == 1
    assert errored == []
    cfg = RunConfig.load(sweep.trials_dir / "run2cccc" / "config.yaml")  # W&B's config file reached the run
    assert (cfg.learning_rate, cfg.dropout) == (0.01, 0.0)


def test_without_w_and_b_s_thread_mark_a_stop_degrades_to_failed(monkeypatch, wandb_sweep):
    """Should a W&B upgrade stop marking the thread it terminates, its stop counts as a failure,
    never the other way round."""
    import ctypes

    from wandb.agents import pyagent

    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    commands, _ = wandb_own_agent(monkeypatch, "run6gggg", {"learning_rate": 0.01, "dropout": 0.0})

    def terminate_unmarked(thread):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Exception))

    monkeypatch.setattr(pyagent, "_terminate_thread", terminate_unmarked)

    def stop_me():
        commands.put({"type": "stop", "run_id": "run6gggg"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("W&B's agent never stopped the run")

    _with_callback(monkeypatch, _InSecondEpoch(stop_me))
    wandb_backend.run_agent(sweep, count=1)
    info = read_json(sweep.trials_dir / "run6gggg" / "run.json")
    assert info["status"] == "failed" and "pruned_at_epoch" not in info
    assert info["error"] == "Exception"  # W&B's stop arrived, and was not taken for one


def test_a_libraries_bare_exception_under_w_and_b_s_agent_is_a_failure(monkeypatch, wandb_sweep):
    """The same bare `Exception()` W&B uses to stop runs, raised by code, with no stop from W&B."""
    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    _, errored = wandb_own_agent(monkeypatch, "run4eeee", {"learning_rate": 0.01, "dropout": 0.0})

    def library_error():
        raise Exception  # noqa: TRY002 - what some libraries raise, and what W&B's stop looks like

    _with_callback(monkeypatch, _InSecondEpoch(library_error))
    wandb_backend.run_agent(sweep, count=1)  # W&B's agent catches it and counts the run as errored
    assert errored == ["run4eeee"]
    info = read_json(sweep.trials_dir / "run4eeee" / "run.json")
    assert info["status"] == "failed" and "pruned_at_epoch" not in info
    assert read_trial(sweep.trials_dir / "run4eeee", spec.metric, spec.maximize)["state"] == "failed"


def test_a_bare_exception_is_not_taken_for_a_stop(monkeypatch, wandb_sweep):
    """Outside W&B's agent thread nothing marks the run stopped: the error propagates."""
    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"

    def library_error():
        raise Exception  # noqa: TRY002

    _with_callback(monkeypatch, _InSecondEpoch(library_error))
    fake_agent(monkeypatch, [("run5ffff", {"learning_rate": 0.01, "dropout": 0.0})])
    with pytest.raises(Exception) as err:
        wandb_backend.run_agent(sweep, count=1)
    assert type(err.value) is Exception
    assert read_trial(sweep.trials_dir / "run5ffff", spec.metric, spec.maximize)["state"] == "failed"


def test_a_stop_mark_on_the_thread_alone_is_not_a_stop():
    """W&B's mark without its bare Exception (e.g. a genuine error right after a stop) is a failure."""
    import threading

    seen = {}

    def job():
        threading.current_thread()._terminated = True  # as wandb.agents.pyagent._terminate_thread sets it
        seen["value_error"] = wandb_backend.stopped_by_wandb(ValueError("disk on fire"))
        seen["bare"] = wandb_backend.stopped_by_wandb(Exception())
        try:
            try:
                raise Exception
            except Exception as stop:
                raise RuntimeError("wrapped on the way") from stop
        except RuntimeError as wrapped:
            seen["wrapped"] = wandb_backend.stopped_by_wandb(wrapped)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert seen == {"value_error": False, "bare": True, "wrapped": True}
    assert wandb_backend.stopped_by_wandb(Exception()) is False  # this thread carries no mark


def test_any_other_error_in_a_trial_is_not_taken_for_a_stop(monkeypatch, wandb_sweep):
    import inat.train

    sweep, _ = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"

    def broken(*_, **__):
        raise ValueError("disk on fire")

    monkeypatch.setattr(inat.train, "train", broken)
    fake_agent(monkeypatch, [("run3dddd", {"learning_rate": 0.01, "dropout": 0.0})])
    with pytest.raises(ValueError, match="disk on fire"):
        wandb_backend.run_agent(sweep, count=1)
