"""The Apptainer image (containers/): `apptainer run IMAGE train` and `... test` on demo data, a
submitit job that runs inside the image on the Slurm cluster, and no build-time secret in the image.

The image is $INAT_TEST_IMAGE (CI: scripts/ci-container.sh builds it with containers/build.sh).
Skipped without apptainer or an image; failing under CI=true. The host's scratch directory is
bound at /scratch, the image's default $INAT_SCRATCH; the demo data is bound at its own path.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require, run_cli

pytestmark = [pytest.mark.apptainer, pytest.mark.slow]

IMAGE_ENV = "INAT_TEST_IMAGE"
# scripts/ci-container.sh builds the image with WANDB_API_KEY set to this; keep the two in step.
BUILD_CANARY = "inat-build-canary-3f9d2c71"
# Host variables that hold secrets by their name; none of their values may be in the image.
SECRET_NAME = re.compile(r"(^|_)(KEY|API_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
TINY_CONFIG = """\
model: scratch
filt_org: [8, 8, 16, 16, 16]
num_dense: 16
image_size: 32
batch_size: 32
epochs: 1
learning_rate: 0.003
activation: relu
"""


@pytest.fixture(scope="module")
def image() -> str:
    path = os.environ.get(IMAGE_ENV, "")
    require(shutil.which("apptainer") is not None and path != "" and Path(path).is_file(),
            f"needs apptainer and an image in ${IMAGE_ENV} (IMAGE=$(containers/build.sh --cpu); "
            f"CI: scripts/ci-container.sh); apptainer: {shutil.which('apptainer')}, ${IMAGE_ENV}={path!r}")
    return path


def apptainer(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    # The host's scratch settings would pass into the container and win over its /scratch.
    full_env = {k: v for k, v in os.environ.items() if k not in ("INAT_SCRATCH", "SCRATCH")}
    full_env.update(env or {})
    return subprocess.run(["apptainer", *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def container_run(image, tmp_path_factory, demo_data):
    """One epoch of a tiny model, trained by `apptainer run IMAGE train` into a bound scratch dir."""
    tmp = tmp_path_factory.mktemp("container")
    scratch = tmp / "scratch"
    scratch.mkdir()
    config = tmp / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    result = apptainer("run", "-B", f"{scratch}:/scratch", "-B", f"{demo_data},{tmp}", image,
                       "train", "--config", str(config), "--data", str(demo_data), "--run-id", "boxed")
    return scratch, result


def test_train_in_the_image(container_run):
    scratch, result = container_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run directory: /scratch/runs/boxed" in result.stdout
    run = scratch / "runs" / "boxed"
    with open(run / "history.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1"]
    assert (run / "model.keras").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 1


def test_test_in_the_image_writes_metrics_the_host_reads(image, container_run, demo_data):
    scratch, trained = container_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = apptainer("run", "-B", f"{scratch}:/scratch", "-B", str(demo_data), image,
                       "test", "--run", "/scratch/runs/boxed")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((scratch / "runs" / "boxed" / "test_metrics.json").read_text())
    assert metrics["n"] == 60  # 6 test images for each of the 10 classes (conftest.demo_data)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert (scratch / "runs" / "boxed" / "predictions.csv").is_file()


def _where_am_i() -> dict:
    """Run by the Slurm job: where its Python is."""
    import os
    import sys

    return {
        "executable": sys.executable,
        "container": os.environ.get("APPTAINER_CONTAINER"),
        "singularity_d": os.path.isdir("/.singularity.d"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "inat_jobs_in": __import__("jobs").__file__,
    }


def _slurm_up() -> tuple[bool, str]:
    from jobs.slurm.executors import slurm_available

    return slurm_available(timeout=10)


@pytest.mark.slurm
def test_submitit_job_runs_inside_the_image(image, tmp_path):
    ok, why = _slurm_up()
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    import cloudpickle

    from jobs.slurm.profile import load_profile
    from jobs.slurm.executors import make_executor

    # The executor inat-jobs itself uses, with --image: the job's python is the image's, so this
    # test module (not in the image) goes by value.
    profile = load_profile(REPO / "configs" / "clusters" / "ci.yaml", image=image)
    executor = make_executor(profile, tmp_path / "jobs" / "probe", "inat-image-test")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        job = executor.submit(_where_am_i)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    deadline = time.monotonic() + 300
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            pytest.fail(f"job {job.job_id} not done after 300 s: {job.state}")
        time.sleep(2)
    where = job.result()
    assert where == {
        "executable": "/opt/venv/bin/python",
        "container": image,
        "singularity_d": True,
        "slurm_job_id": job.job_id,
        "inat_jobs_in": where["inat_jobs_in"],
    }
    assert where["inat_jobs_in"].startswith("/opt/venv/"), where  # the image's installed copy


@pytest.mark.slurm
def test_cli_submits_a_test_job_that_runs_in_the_image(image, container_run):
    """`inat-jobs test --run RUN --cluster slurm --image IMAGE`: the job's python is the image's."""
    ok, why = _slurm_up()
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    scratch, trained = container_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = scratch / "runs" / "boxed-slurm"
    shutil.copytree(scratch / "runs" / "boxed", run)
    (run / "test_metrics.json").unlink(missing_ok=True)
    result = run_cli("test", "--run", str(run), "--cluster", "slurm", "--image", image,
                     env={"INAT_CLUSTER_PROFILE": str(REPO / "configs" / "clusters" / "ci.yaml")})
    assert result.returncode == 0, result.stderr
    assert "test: submitted job" in result.stdout, result.stdout
    deadline = time.monotonic() + 300
    while not (run / "test_metrics.json").is_file():
        assert time.monotonic() < deadline, f"no test_metrics.json after 300 s: {result.stdout}"
        time.sleep(2)
    assert json.loads((run / "test_metrics.json").read_text())["n"] == 60
    [script] = (scratch / "jobs").glob("test-*/test/*_submission.sh")
    assert f"apptainer exec --nv --env PYTHONSAFEPATH=1 -B {scratch} {image} python -u -m submitit" \
        in script.read_text()


def test_no_build_time_secret_in_the_image(image):
    needles = {BUILD_CANARY} | {
        value for name, value in os.environ.items()
        if SECRET_NAME.search(name) and len(value) >= 8
    }
    texts = {}
    for what in ("--deffile", "--environment", "--labels", "--runscript", "--test", "--helpfile"):
        result = apptainer("inspect", what, image)
        assert result.returncode == 0, result.stderr
        texts[f"inspect {what}"] = result.stdout
    result = apptainer("exec", "--cleanenv", "--contain", image, "env")
    assert result.returncode == 0, result.stderr
    texts["env"] = result.stdout
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"a host secret is in the image's {where}"
    # Every file of the image; --contain binds none of the host's directories.
    patterns = [arg for needle in sorted(needles) for arg in ("-e", needle)]
    result = apptainer("exec", "--contain", "--cleanenv", image, "grep", "-rlF", "--exclude-dir=proc",
                       "--exclude-dir=sys", "--exclude-dir=dev", *patterns, "/")
    assert result.returncode == 1 and result.stdout == "", (
        f"a host secret is in these files of the image: {result.stdout[:2000]}{result.stderr[-2000:]}")


def test_host_environment_in_the_image(image):
    """W&B keys and the scratch root come from the host when the container runs, never from the
    image; a host PYTHONPATH (a checkout, a `module load`ed Python) must not reach the image's python."""
    show = "import os, sys; print(os.environ.get('WANDB_API_KEY'), os.environ.get('INAT_SCRATCH'), sys.path)"
    result = apptainer("exec", image, "python", "-c", show,
                       env={"WANDB_API_KEY": "run-time-key", "INAT_SCRATCH": "/tmp/host-scratch",
                            "PYTHONPATH": "/tmp/host-checkout"})
    assert result.returncode == 0, result.stderr
    key, scratch, path = result.stdout.split(" ", 2)
    assert (key, scratch) == ("run-time-key", "/tmp/host-scratch")
    assert "/tmp/host-checkout" not in path
    result = apptainer("exec", "--cleanenv", "--env", "PYTHONPATH=/tmp/wanted", image, "python", "-c", show,
                       env={"APPTAINERENV_WANDB_API_KEY": "explicit-key"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("explicit-key None ") and "/tmp/wanted" in result.stdout


@pytest.mark.gpu_image
def test_gpu_image_has_a_cuda_build_and_no_gpu_is_no_error():
    """containers/build.sh --gpu (Debian bootstrap + `.[gpu]`): TensorFlow imports, was built with CUDA,
    finds its CUDA libraries in the image, and on a machine without a GPU reports none, without error."""
    from conftest import GPU_IMAGE_ENV

    image = os.environ[GPU_IMAGE_ENV]
    require(shutil.which("apptainer") is not None, "needs apptainer (scripts/apptainer/install.sh)")
    code = ("import json, tensorflow as tf; info = tf.sysconfig.get_build_info(); "
            "print(json.dumps({'cuda': tf.test.is_built_with_cuda(), 'cuda_version': info.get('cuda_version'), "
            "'cudnn_version': info.get('cudnn_version'), 'gpus': len(tf.config.list_physical_devices('GPU'))}))")
    out = subprocess.run(["apptainer", "exec", "--nv", image, "python", "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["cuda"] is True and found["cuda_version"] and found["cudnn_version"], found
    assert found["gpus"] == 0, found
