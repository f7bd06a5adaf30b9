"""The `inat-jobs` command line as a user meets it: help, one-line errors, and a tiny end-to-end run.

Most of it runs in this process (`conftest.cli`, the same entry point); a fresh `inat-jobs` process is
kept where only one can tell: the help of the real entry point, and errors of commands that load
TensorFlow first, whose start-up chatter must not reach stderr (jobs/quiet.py).
"""

import json

import pytest

from conftest import cli, run_cli

COMMANDS = ["train", "test", "model-info", "fetch-weights", "make-demo-data", "cache-data"]


@pytest.mark.parametrize("run", [cli, run_cli], ids=["in-process", "fresh-process"])
def test_help_lists_the_commands(run):
    result = run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_useful_help(name):
    result = cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 4


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--data", "/no/such/dir"], "--data /no/such/dir: directory not found"),
        (["train", "--data", ".", "--set", "dropout=7"], "key 'dropout' = 7"),
        (["train", "--data", ".", "--config", "/no/such.yaml"], "/no/such.yaml: file not found"),
        (["test", "--run", "/no/such/run"], "run directory not found"),
        (["model-info", "--set", "model=alexnet"], "allowed: scratch"),
        (["fetch-weights", "--models", "vgg"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, fragment):
    result = cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("inat-jobs: error")]) == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["test", "--run", "/no/such/run"], "run directory not found"),  # `test` loads TensorFlow first
        (["train", "--data", "/no/such/dir"], "--data /no/such/dir: directory not found"),
    ],
)
def test_bad_input_in_a_fresh_process_is_exactly_one_stderr_line(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("inat-jobs: error")]) == 1
    assert result.stderr.count("\n") == 1, result.stderr  # nothing else: no TensorFlow chatter


def test_model_info_formula_agrees_with_keras():
    result = cli("model-info", "--set", "kernel_size=[3,5,7,9,11]", "--set", "image_size=97")
    assert result.returncode == 0, result.stderr
    assert "(agree)" in result.stdout


def test_demo_train_test_end_to_end(tmp_path):
    data = tmp_path / "data"
    assert cli("make-demo-data", str(data), "--train-per-class", "12", "--test-per-class", "4").returncode == 0
    result = cli(
        "train", "--data", str(data), "--out", str(tmp_path / "scratch"), "--run-id", "r1",
        "--set", "epochs=1", "--set", "image_size=32", "--set", "filt_org=[8,8,8,8,8]", "--set", "num_dense=8",
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "scratch" / "runs" / "r1"
    assert (run / "model.keras").exists()
    result = cli("test", "--run", str(run))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert json.loads((run / "test_metrics.json").read_text())["n"] == 40
