"""The W&B sweep backend's glue, with W&B's server replaced: `wandb.sweep` and `wandb.agent` need it.

What stays real: the sweep folder, the trial configs, `train()` on tiny data and W&B's own run files
(offline). The stand-in agent does what W&B's does for each trial: sets WANDB_RUN_ID, lets the
function call `wandb.init` (which receives the trial's parameters as config) and finishes the run.
The no-key and no-server paths through the real CLI are in test_sweep_cli.py.
"""

from __future__ import annotations

import time

import pytest
import yaml

from conftest import TINY
from inat import sweep_wandb
from inat.config import RunConfig
from inat.errors import InatError
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
    assert sweep_wandb.create(sweep, spec) == "/birds/abc123"
    assert seen["sweep"] == yaml.safe_load(SPEC) and seen["project"] == "birds"
    assert load_sweep(sweep.scratch_root, sweep.id).wandb_sweep == "/birds/abc123"  # saved for the agents


def test_create_gives_up_in_one_line_when_the_server_hangs(monkeypatch, wandb_sweep):
    import wandb

    sweep, spec = wandb_sweep
    monkeypatch.setattr(wandb, "sweep", lambda **_: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(InatError, match=r"did not create the sweep within 1 s; use --backend local"):
        sweep_wandb.create(sweep, spec, timeout=1.0)
    assert time.monotonic() - start < 5


def test_create_reports_a_server_error_in_one_line(monkeypatch, wandb_sweep):
    import wandb

    sweep, spec = wandb_sweep

    def refused(**_):
        raise RuntimeError("permission denied for entity 'x'\nmore details")

    monkeypatch.setattr(wandb, "sweep", refused)
    with pytest.raises(InatError) as err:
        sweep_wandb.create(sweep, spec)
    assert str(err.value) == "--backend wandb: permission denied for entity 'x'; " + sweep_wandb.HINT


def fake_agent(monkeypatch, trials: list[tuple[str, dict]]):
    """Replace the server: `wandb.agent` runs `function` once per (run id, params), offline."""
    import wandb

    real_init = wandb.init
    monkeypatch.setattr(sweep_wandb, "preflight", lambda: "http://wandb.invalid")
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


def test_agent_trains_each_trial_into_the_sweep_folder(monkeypatch, wandb_sweep):
    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    sweep.save()
    trials = [("run0aaaa", {"learning_rate": 0.01, "dropout": 0.1}),
              ("run1bbbb", {"learning_rate": 0.003, "dropout": 0.3})]
    calls = fake_agent(monkeypatch, trials)
    sweep_wandb.run_agent(sweep, count=2)
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


def test_a_run_the_sweep_stops_is_marked_pruned(monkeypatch, wandb_sweep):
    """W&B's agent stops a run (hyperband) by raising a bare `Exception` in the trial's thread."""
    import inat.train

    sweep, spec = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"
    real_train = inat.train.train

    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # inside the second epoch, as W&B's agent would
                raise Exception  # noqa: TRY002 - what W&B's agent raises

    def stopped_after_one_epoch(*args, **kwargs):
        return real_train(*args, callbacks=[Stop()], **kwargs)

    monkeypatch.setattr(inat.train, "train", stopped_after_one_epoch)
    fake_agent(monkeypatch, [("run2cccc", {"learning_rate": 0.01, "dropout": 0.0})])
    sweep_wandb.run_agent(sweep, count=1)
    info = read_trial(sweep.trials_dir / "run2cccc", spec.metric, spec.maximize)
    assert info["state"] == "pruned" and info["epochs_done"] == 1


def test_any_other_error_in_a_trial_is_not_taken_for_a_stop(monkeypatch, wandb_sweep):
    import inat.train

    sweep, _ = wandb_sweep
    sweep.wandb_sweep = "/inat-jobs/abc123"

    def broken(*_, **__):
        raise ValueError("disk on fire")

    monkeypatch.setattr(inat.train, "train", broken)
    fake_agent(monkeypatch, [("run3dddd", {"learning_rate": 0.01, "dropout": 0.0})])
    with pytest.raises(ValueError, match="disk on fire"):
        sweep_wandb.run_agent(sweep, count=1)
