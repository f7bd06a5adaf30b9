"""Compute placement (inat/devices.py): precision, XLA, threads and multi-replica training.

The machine has no GPU, so GPUs are what TensorFlow itself offers without one: the CPU split into
logical devices ($INAT_CPU_REPLICAS), which runs the same tf.distribute code a multi-GPU node does.
Logical devices and thread pools can only be set before TensorFlow starts, so those runs are fresh
processes (`inat-jobs train`).
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from conftest import TINY, cli, one_error_line, run_cli, start_cli
from inat import devices
from inat.config import RunConfig
from inat.errors import ConfigError, InatError
from inat.rundir import RunDir

# Dropout 0 and no augmentation: nothing random differs between one device and two.
EXACT = [*TINY, "batch_norm=true", "dropout=0", "epochs=3"]


def _set(values):
    return [arg for v in values for arg in ("--set", v)]


def _train(demo_data, out, run_id, extra=(), env=None, gpus=1, fresh=False):
    """`inat-jobs train` of EXACT (+ extra); fresh: in a new process, where devices can still be set."""
    args = ["train", "--data", str(demo_data), "--out", str(out), "--run-id", run_id, "--no-cache",
            *_set([*EXACT, *extra])]
    if gpus > 1:
        args += ["--gpus-per-trial", str(gpus)]
    return (run_cli if fresh else cli)(*args, env=env)


def _losses(run_dir):
    return np.array([row["loss"] for row in RunDir(run_dir).history()])


def _compute(run_dir):
    return json.loads((run_dir / "run.json").read_text())["compute"]


@pytest.mark.parametrize("precision, device, capability, expected", [
    ("auto", "gpu", "9.0", "mixed_bfloat16"),  # Hopper
    ("auto", "gpu", "8.0", "mixed_bfloat16"),  # Ampere
    ("auto", "gpu", "7.0", "mixed_float16"),   # Volta
    ("auto", "gpu", "6.1", "float32"),         # Pascal: no tensor cores
    ("auto", "gpu", None, "float32"),
    ("auto", "cpu", None, "float32"),
    ("mixed_float16", "cpu", None, "mixed_float16"),
    ("float32", "gpu", "9.0", "float32"),
])  # fmt: skip
def test_precision_auto(precision, device, capability, expected):
    assert devices.resolve_precision(precision, device, capability) == expected


@pytest.mark.parametrize("jit, device, backend, expected", [
    ("auto", "cpu", "tensorflow", False), ("auto", "gpu", "tensorflow", True), ("auto", "cpu", "jax", True),
    (True, "cpu", "tensorflow", True), (False, "gpu", "jax", False),
])  # fmt: skip
def test_jit_auto(jit, device, backend, expected):
    assert devices.resolve_jit(jit, device, backend) is expected


def test_thread_budget(monkeypatch):
    monkeypatch.delenv(devices.THREADS_ENV, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert devices.thread_budget() is None
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert devices.thread_budget() == 8
    monkeypatch.setenv(devices.THREADS_ENV, "2")  # a job's share for one of its agents wins
    assert devices.thread_budget() == 2
    monkeypatch.setenv(devices.THREADS_ENV, "two")
    with pytest.raises(ConfigError, match=r"\$INAT_THREADS='two' is invalid; expected an integer >= 1"):
        devices.thread_budget()


def test_in_process_placement(tiny_cfg, monkeypatch):
    monkeypatch.delenv(devices.CPU_REPLICAS_ENV, raising=False)
    compute = devices.place(tiny_cfg)
    assert (compute.device, compute.replicas, compute.precision, compute.jit_compile) == ("cpu", 1, "float32", False)
    # A resumed run keeps the precision it started with, whatever the config's auto picks here.
    assert devices.place(tiny_cfg, precision="mixed_bfloat16").precision == "mixed_bfloat16"
    with pytest.raises(InatError, match="one trial over 2 GPUs, but this process sees 0"):
        devices.place(tiny_cfg, replicas=2)


def test_mixed_float16_trains_and_resumes_its_loss_scale(demo_data, tmp_path):
    """float16 layers, a float32 softmax, Keras's loss scaling, and after a kill the resumed run's
    optimizer (loss scale included) is the one an uninterrupted run ends with."""
    import keras

    extra = ["precision=mixed_float16", "epochs=2"]
    assert _train(demo_data, tmp_path, "whole", extra).returncode == 0
    runs = tmp_path / "runs"
    assert _compute(runs / "whole")["precision"] == "mixed_float16"
    proc = start_cli("train", "--data", str(demo_data), "--out", str(tmp_path), "--run-id", "killed", "--no-cache",
                     *_set([*EXACT, *extra]))
    state = runs / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert RunDir(runs / "killed").committed_epochs() == 1
    assert _train(demo_data, tmp_path, "killed", extra).returncode == 0

    def optimizer_state(run):
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")  # as train() loads it: the optimizer is wrapped
        try:
            model = keras.saving.load_model(runs / run / "checkpoint" / "epoch-0002.keras")
        finally:
            keras.config.set_dtype_policy(previous)
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.get_layer("predictions").compute_dtype == "float32"
        # Keyed by (wrapper or inner optimizer, variable): the inner one's name is numbered per process.
        return {(v.path.startswith("loss_scale"), v.path.rsplit("/", 1)[-1]): float(v.numpy())
                for v in model.optimizer.variables if v.path.endswith(("step_counter", "dynamic_scale", "iteration"))}

    whole, resumed = optimizer_state("whole"), optimizer_state("killed")
    assert whole and resumed == whole
    np.testing.assert_allclose(_losses(runs / "killed"), _losses(runs / "whole"), rtol=1e-4)


def test_two_replicas_match_one_device(demo_data, tmp_path):
    """2 replicas on 2 logical CPUs, global batch 32, give the losses of one device at batch 32.

    Measured: the first epoch agrees to 3e-6, the third to 8e-4 (float sums in another order,
    grown by Adam); unsynchronized batch norm was 1e-2 off. Bound: 3e-3."""
    env = {devices.CPU_REPLICAS_ENV: "1"}
    assert _train(demo_data, tmp_path, "one").returncode == 0
    two = _train(demo_data, tmp_path, "two", env=env, gpus=2, fresh=True)
    assert two.returncode == 0, two.stderr
    runs = tmp_path / "runs"
    compute = _compute(runs / "two")
    assert compute["replicas"] == 2 and len(compute["devices"]) == 2, compute
    one, both = _losses(runs / "one"), _losses(runs / "two")
    print("1 vs 2 replicas, relative loss difference per epoch:", np.abs(both - one) / one)
    np.testing.assert_allclose(both, one, rtol=3e-3)


def test_killed_two_replica_run_resumes(demo_data, tmp_path):
    env = {devices.CPU_REPLICAS_ENV: "1"}
    args = ["train", "--data", str(demo_data), "--out", str(tmp_path), "--run-id", "r2", "--no-cache",
            "--gpus-per-trial", "2", *_set(EXACT)]
    proc = start_cli(*args, env=env)
    run = RunDir(tmp_path / "runs" / "r2")
    deadline = time.time() + 300
    while run.committed_epochs() < 1 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = run.committed_epochs()
    assert 1 <= done < 3
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert [int(r["epoch"]) for r in run.history()] == [1, 2, 3]
    assert _compute(run.path)["replicas"] == 2


def test_threads_limited_in_a_fresh_process(demo_data, tmp_path):
    result = _train(demo_data, tmp_path, "t1", ["epochs=1"], env={devices.THREADS_ENV: "1"}, fresh=True)
    assert result.returncode == 0, result.stderr
    threads = _compute(tmp_path / "runs" / "t1")["threads"]
    assert threads == {"budget": 1, "intra_op": 1, "inter_op": 1}


def test_bad_compute_requests(demo_data, tmp_path):
    bad = cli("train", "--data", str(demo_data), "--out", str(tmp_path), "--set", "precision=fp8")
    one_error_line(bad, "key 'precision' = 'fp8' is invalid; allowed: auto, float32, mixed_float16, mixed_bfloat16")
    bad = cli("train", "--data", str(demo_data), "--out", str(tmp_path), "--set", "jit_compile=sometimes")
    one_error_line(bad, "key 'jit_compile' = 'sometimes' is invalid; expected auto, true or false")
    bad = cli("train", "--data", str(demo_data), "--out", str(tmp_path), *_set(TINY), "--gpus-per-trial", "2",
              env={devices.CPU_REPLICAS_ENV: ""})
    one_error_line(bad, "one trial over 2 GPUs, but this process sees 0")
    bad = run_cli("train", "--data", str(demo_data), "--out", str(tmp_path), *_set(TINY), "--gpus-per-trial", "2",
                  env={"KERAS_BACKEND": "jax"})  # a fresh process: Keras picks its backend on import
    one_error_line(bad, "one trial over 2 devices needs KERAS_BACKEND=tensorflow")


def test_config_keys_spellings():
    cfg = RunConfig.load(None, ["jit_compile=True", "precision=mixed_bfloat16"])
    assert cfg.jit_compile is True and cfg.precision == "mixed_bfloat16"
    assert RunConfig.load(None, ["jit_compile=auto"]).jit_compile == "auto"
    assert RunConfig.load(None, ["jit_compile=off"]).jit_compile is False


def test_part_b_follows_the_policy_and_the_scope_restores_it():
    import keras

    from inat.models.common import make_model
    from inat.models.transfer import base_model

    cfg = RunConfig(model="resnet50", weights="none", trainable_layers=10, precision="mixed_bfloat16")
    compute = devices.place(cfg)
    assert compute.precision == "mixed_bfloat16"
    with compute.scope():
        model = make_model(cfg, 10)
    conv = next(layer for layer in base_model(model).layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.output.dtype == "float32"  # the softmax head
    assert keras.config.dtype_policy().name == "float32"
