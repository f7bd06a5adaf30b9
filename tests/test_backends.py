"""The same runs under Keras's JAX backend (KERAS_BACKEND=jax) as under TensorFlow.

The demo config trained on each backend from the same data and seed; each model tested on the
other backend (model.keras is portable); guided backprop on both; a sweep agent and retrain-best
under JAX. The JAX side always runs in a fresh process: Keras picks its backend once, at import.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

DEMO = REPO / "configs" / "train" / "demo.yaml"
JAX = {"KERAS_BACKEND": "jax"}


def predictions(run: Path) -> list[tuple[str, str]]:
    with open(run / "predictions.csv", newline="") as f:
        return [(row["path"], row["predicted"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("value,message", [
    ("torch", "KERAS_BACKEND='torch': inat-jobs runs on tensorflow or jax"),
    ("theano", "KERAS_BACKEND='theano': inat-jobs runs on tensorflow or jax"),
])
def test_an_unsupported_backend_is_one_line(value, message):
    result = run_cli("train", "--help", env={"KERAS_BACKEND": value})
    assert result.returncode == 2 and result.stderr.strip() == f"inat-jobs: error: {message}", result.stderr


def test_a_backend_that_is_not_installed_is_one_line(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'jax' else real(name, *a)\n")
    result = run_cli("train", "--help", env={"KERAS_BACKEND": "jax", "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "inat-jobs: error: KERAS_BACKEND=jax: jax is not installed (pip install -e '.[jax]')"


SEEDS = (0, 1, 2)
# The tests that read the twins run on one xdist worker, so that the six trainings happen once.
TWINS = pytest.mark.xdist_group("backends")


def test_a_job_in_an_image_is_refused_under_jax(tmp_path, monkeypatch):
    """The images hold TensorFlow only: a job there under JAX would die importing Keras."""
    from inat.errors import ConfigError
    from jobs.slurm.profile import load_profile
    from jobs.slurm.executors import job_python

    image = tmp_path / "inat.sif"
    image.write_bytes(b"")
    profile = load_profile(None, [], image)
    assert "apptainer" in job_python(profile, tmp_path / "jobs" / "x")  # the control, on TensorFlow
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(ConfigError, match=r"KERAS_BACKEND=jax: the Apptainer image .* runs TensorFlow only"):
        job_python(profile, tmp_path / "jobs" / "x")


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """configs/train/demo.yaml (at 32 px, 12 epochs, to fit 2 cores) trained on the same demo data
    with the same seeds on each backend, each run tested on its own backend.
    Keys: "tensorflow", "jax" (seed 0) and "tensorflow-1", "jax-1", ... (the other seeds)."""
    from inat.data.demo import make_demo_data

    work = tmp_path_factory.mktemp("backends")
    data = make_demo_data(work / "data", n_train_per_class=60, n_test_per_class=30)
    runs = {}
    for backend in ("tensorflow", "jax"):
        env = {"KERAS_BACKEND": backend}
        for seed in SEEDS:
            name = backend if seed == 0 else f"{backend}-{seed}"
            trained = run_cli("train", "--config", str(DEMO), "--data", str(data), "--out", str(work / "scratch"),
                              "--run-id", name, "--set", "image_size=32", "--set", "epochs=12", "--set", f"seed={seed}",
                              env=env)
            assert trained.returncode == 0, trained.stderr[-3000:]
            run = work / "scratch" / "runs" / name
            tested = run_cli("test", "--run", str(run), env=env)
            assert tested.returncode == 0, tested.stderr[-3000:]
            runs[name] = run
    return runs


@TWINS
@pytest.mark.slow
def test_the_demo_config_learns_alike_on_both_backends(twins):
    """Same data, same seeds: the mean test accuracy over three seeds within 5 points. (Single runs
    of this small model on 300 test images scatter by about 5 points on one backend, measured on
    TensorFlow: 0.72, 0.77, 0.72 for seeds 0-2; the mean of three is steadier.)"""
    acc = {name: json.loads((run / "test_metrics.json").read_text())["accuracy"] for name, run in twins.items()}
    mean = {b: sum(v for k, v in acc.items() if k.split("-")[0] == b) / len(SEEDS) for b in ("tensorflow", "jax")}
    print(f"\ntest accuracy by run: {acc}; mean: {mean}")
    assert json.loads((twins["jax"] / "run.json").read_text())["versions"]["keras_backend"] == "jax"
    assert json.loads((twins["tensorflow"] / "run.json").read_text())["versions"]["keras_backend"] == "tensorflow"
    assert min(acc.values()) >= 0.5  # chance is 0.1
    assert abs(mean["jax"] - mean["tensorflow"]) <= 0.05


@TWINS
@pytest.mark.slow
@pytest.mark.parametrize("trained,tested", [("jax", "tensorflow"), ("tensorflow", "jax")])
def test_a_model_trained_on_one_backend_predicts_the_same_on_the_other(twins, tmp_path, trained, tested):
    run = tmp_path / "run"
    shutil.copytree(twins[trained], run, ignore=shutil.ignore_patterns("checkpoint", "wandb"))
    (run / "predictions.csv").unlink()
    result = run_cli("test", "--run", str(run), env={"KERAS_BACKEND": tested})
    assert result.returncode == 0, result.stderr[-3000:]
    assert predictions(run) == predictions(twins[trained])  # every test image, the same argmax


GUIDED = """
import sys, numpy as np
from inat.models.common import load_model
from inat.figures import guided
model = load_model(sys.argv[1])
images = np.load(sys.argv[2])
fm = guided.guided_model(model, "conv5")
fmap = np.asarray(guided.activation_model(model, "conv5")(images, training=False))
rows, cols, chans = [0, 0, 0], [0, 0, 0], [0, 5, 9]
np.save(sys.argv[3], guided.NeuronGradients(fm)(images, rows, cols, chans))
"""


@TWINS
@pytest.mark.slow
def test_guided_backprop_on_jax_matches_tensorflow(twins, tmp_path):
    """The same trained weights (the JAX-trained model) and images, gradients from each backend."""
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    grads = {}
    for backend in ("tensorflow", "jax"):
        out = tmp_path / f"{backend}.npy"
        done = subprocess.run([sys.executable, "-c", GUIDED, str(twins["jax"]), str(tmp_path / "images.npy"), str(out)],
                              capture_output=True, text=True, cwd=REPO, env={**_env(), "KERAS_BACKEND": backend})
        assert done.returncode == 0, done.stderr[-3000:]
        grads[backend] = np.load(out)
    tf_g, jax_g = grads["tensorflow"], grads["jax"]
    assert tf_g.shape == (3, 32, 32, 3) and np.abs(tf_g).max() > 0
    scale = np.abs(tf_g).max()
    print(f"\nguided gradients: largest difference {np.abs(tf_g - jax_g).max() / scale:.2e} of the largest value")
    assert np.abs(tf_g - jax_g).max() <= 1e-4 * scale


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


@TWINS
@pytest.mark.slow
def test_visualize_with_guided_backprop_on_jax(twins, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(twins["jax"], run, ignore=shutil.ignore_patterns("checkpoint", "wandb", "figures"))
    result = run_cli("visualize", "--run", str(run), "--what", "guided,grid", "--no-pdf", env=JAX)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "figures" / "guided_backprop.png").is_file()


SWEEP = ("method: random\nmetric: {name: val_accuracy, goal: maximize}\nrun_cap: 2\n"
         "parameters:\n  dropout: {values: [0.0, 0.2]}\n")
TINY = ["--set", "epochs=2", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set", "num_dense=16"]


@pytest.mark.slow
def test_a_sweep_agent_and_retrain_best_on_jax(tmp_path, demo_data):
    (tmp_path / "s.yaml").write_text(SWEEP)
    scratch = tmp_path / "scratch"
    launched = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "1", "--cluster", "local",
                       "--wait", "--json", "--data", str(demo_data), "--out", str(scratch), *TINY, env=JAX)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    sweep_id = json.loads(launched.stdout)["sweep_id"]  # only JSON on stdout
    trials = sorted((scratch / "sweeps" / sweep_id / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        assert json.loads((trial / "run.json").read_text())["versions"]["keras_backend"] == "jax"
    retrained = run_cli("retrain-best", "--sweep-id", sweep_id, "--out", str(scratch), "--cluster", "local",
                        "--wait", env=JAX)
    assert retrained.returncode == 0, retrained.stdout[-2000:] + retrained.stderr[-3000:]
    (run,) = (scratch / "runs").glob(f"{sweep_id}-best1-seed0")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["versions"]["keras_backend"] == "jax"


# W&B's server replaced as tests/sweep/test_sweep_wandb.py replaces it (conftest.fake_agent), in a
# process of its own so that Keras starts on JAX.
WANDB_AGENT = """
import sys
from _pytest.monkeypatch import MonkeyPatch
from conftest import fake_agent
from inat.sweep import load_sweep, wandb_backend
sweep = load_sweep(sys.argv[1], sys.argv[2])
fake_agent(MonkeyPatch(), [("runjax01", {"learning_rate": 0.01, "dropout": 0.1})])
wandb_backend.run_agent(sweep, count=1)
"""


@pytest.mark.slow
def test_a_wandb_backend_agent_on_jax(tmp_path, demo_data):
    from inat.sweep import new_sweep

    (tmp_path / "s.yaml").write_text(SWEEP)
    fixed = {"epochs": 2, "image_size": 32, "filt_org": [8, 8, 8, 8, 8], "num_dense": 16}
    sweep, _ = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "wandb", demo_data, fixed)
    sweep.wandb_sweep = "/inat-jobs/abc123"
    sweep.save()
    env = {**_env(), "KERAS_BACKEND": "jax", "WANDB_MODE": "offline",
           "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", WANDB_AGENT, str(tmp_path / "scratch"), sweep.id],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((sweep.trials_dir / "runjax01" / "run.json").read_text())
    assert info["status"] == "completed" and info["versions"]["keras_backend"] == "jax", info
