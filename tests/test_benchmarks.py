"""The benchmark scripts run, on this CPU, at sizes small enough for a test, and print what they promise.
(Their numbers are measured by running them, never asserted here.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, require


@pytest.mark.slow
def test_gpu_throughput_runs_without_tensorflow_and_reports_every_figure(tmp_path):
    """The script the H200 runs: under JAX, with TensorFlow made unimportable, as it is there."""
    require(importlib.util.find_spec("jax") is not None, "needs jax (the test extra)")
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--sizes", "32", "--partb", "resnet50",
         "--n", "64", "--steps", "2", "--batch-size", "16", "--filters", "8,8,8,8,8", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result == json.loads(out.read_text())
    assert result["backend"] == "jax" and result["device"].startswith("cpu")
    rows = result["rows"]
    assert [(r["model"], r["image_size"], r["precision"]) for r in rows] == [
        ("scratch", 32, "float32"), ("scratch", 32, "mixed_bfloat16"),
        ("resnet50", 224, "float32"), ("resnet50", 224, "mixed_bfloat16")]
    for row in rows:
        assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["loader_img_s"] > 0
        assert 0.0 <= row["input_stall"] <= 1.0
        assert row["gpu_util_pct"] is None and row["peak_mem_bytes"] is None  # no GPU, no nvidia-smi here


@pytest.mark.slow
def test_backend_speed_prints_a_ratio_per_round(tmp_path):
    require(importlib.util.find_spec("jax") is not None, "needs jax (the test extra)")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "backend_speed.py"), "--image-size", "32", "--batch-size", "16",
         "--steps", "2", "--rounds", "1", "--filters", "8,8,8,8,8"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    (row,) = result["rounds"]
    assert row["tensorflow"] > 0 and row["jax"] > 0 and row["ratio"] == pytest.approx(row["jax"] / row["tensorflow"], rel=1e-2)
    assert result["ratio_jax_over_tensorflow"]["median"] == row["ratio"]


@pytest.mark.slow
def test_gpu_train_runs_small_on_a_cpu_and_says_so(tmp_path):
    """The TensorFlow GPU benchmark, on this GPU-less machine: every precision x XLA row, from the
    decoded-image cache, and a note that these are not GPU numbers. (Part B is left out for time;
    its path is the same make_model call.)"""
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--partb", "none", "--batch-size", "8",
         "--filters", "8,8,8,8,8", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result == json.loads(out.read_text())
    assert result["device"] == "cpu" and "not a measurement" in result["note"]
    assert [(r["image_size"], r["precision"], r["jit_compile"]) for r in result["rows"]] == [
        (32, "float32", False), (32, "float32", True), (32, "mixed_bfloat16", False), (32, "mixed_bfloat16", True)]
    for row in result["rows"]:
        assert row["train_img_s"] > 0 and 0.0 <= row["input_stall"] <= 1.0 and row["peak_mem_bytes"] is None


def load_suite_time():
    spec = importlib.util.spec_from_file_location("suite_time", REPO / "benchmarks" / "suite_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_time_finds_each_earlier_test_under_its_name_now():
    st = load_suite_time()
    now = ["tests/jobs/test_cli.py::test_x", "tests/jobs/test_cluster.py::test_p[data9-key 'setup']",
           "tests/jobs/test_cluster.py::test_p[data3-key 'gpus' = -1]",
           "tests/test_kill_resume.py::test_kill9_at_twelve_moments_then_resume"]
    found = st.successors(["tests/test_cli.py::test_x", "tests/test_cluster.py::test_p[data7-key 'setup']",
                           "tests/test_kill_resume.py::test_kill9_at_ten_moments_then_resume",
                           "tests/test_cluster.py::test_figure_names_match_the_figures_module"], now)
    assert found == {"tests/test_cli.py::test_x": [now[0]],
                     "tests/test_cluster.py::test_p[data7-key 'setup']": [now[1]],
                     "tests/test_kill_resume.py::test_kill9_at_ten_moments_then_resume": [now[3]]}
    with pytest.raises(SystemExit, match="test_gone: no test carries it on now"):
        st.successors(["tests/test_a.py::test_gone"], now)


def test_suite_time_compares_two_junit_files(tmp_path):
    for name, tests, seconds in (("before", 3, 100.0), ("after", 3, 40.0)):
        (tmp_path / f"{name}.xml").write_text(
            f'<testsuites><testsuite name="pytest" tests="{tests}" time="{seconds}"></testsuite></testsuites>')
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "suite_time.py"), "compare",
                           str(tmp_path / "before.xml"), str(tmp_path / "after.xml"), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == json.loads((tmp_path / "r.json").read_text()) == {
        "before": {"tests": 3, "pytest_s": 100.0}, "after": {"tests": 3, "pytest_s": 40.0},
        "ratio_after_over_before": 0.4}
