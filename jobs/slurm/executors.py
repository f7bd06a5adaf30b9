"""Where jobs run: Slurm or this machine, and the one place executors and sbatch scripts are built
from a cluster profile (`profile.ClusterProfile`)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from inat import backends, layout
from inat.errors import ConfigError

from .profile import ClusterProfile

CLUSTERS = ("auto", "slurm", "local")
PING_TIMEOUT_S = 5.0


# ---- Slurm or local ---------------------------------------------------------------------------------


def slurm_available(timeout: float | None = None) -> tuple[bool, str]:
    """Is there a Slurm controller to submit to? (sbatch on PATH and `scontrol ping` answers UP)."""
    timeout = PING_TIMEOUT_S if timeout is None else timeout
    if not shutil.which("sbatch"):
        return False, "no sbatch on PATH"
    if not shutil.which("scontrol"):
        return False, "sbatch is here but scontrol is not"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the Slurm controller did not answer within {timeout:.0f} s"
    except OSError as exc:
        return False, f"scontrol ping failed ({exc})"
    if out.returncode != 0 or " is UP" not in out.stdout:
        first = (out.stdout.strip() or out.stderr.strip() or f"exit {out.returncode}").splitlines()[0]
        return False, f"the Slurm controller is not up ({first})"
    return True, "sbatch found and the controller answers"


def resolve_cluster(choice: str | None, quiet: bool = False) -> str:
    """'slurm' or 'local'. `auto` (or None) probes Slurm and says on stderr what it picked."""
    choice = (choice or "auto").strip().lower()
    if choice not in CLUSTERS:
        raise ConfigError(f"--cluster {choice!r} is invalid; allowed: {', '.join(CLUSTERS)}")
    if choice != "auto":
        return choice
    ok, why = slurm_available()
    picked = "slurm" if ok else "local"
    if not quiet:
        print(f"cluster: {picked} ({why})", file=sys.stderr)
    return picked


# ---- executors -----------------------------------------------------------------------------------------


def project_root() -> Path | None:
    """The checkout `jobs` was imported from, when it is not an installed copy in site-packages.

    Jobs run `python -m submitit.core._submit`, which must import this same `jobs` package; from a
    source checkout that only works with the checkout on PYTHONPATH.
    """
    root = Path(__file__).resolve().parents[2]
    if any(part in ("site-packages", "dist-packages") for part in root.parts):
        return None
    return root


def slurm_parameters(profile: ClusterProfile, job_name: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (its own names) for one submission."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": profile.time,
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": profile.array_parallelism,
    }
    for key, name in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                      ("gpus", "gpus_per_node"), ("cpus", "cpus_per_task"), ("constraint", "constraint")):
        value = getattr(profile, key)
        if value is not None:
            params[name] = value
    if profile.mem is not None:
        mem = profile.mem
        params["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"
    setup = list(profile.setup)
    root = project_root()
    in_container = bool(profile.image or profile.python or os.environ.get("INAT_IMAGE"))
    if root is not None and not in_container:  # a container brings its own installed copy
        setup.insert(0, f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}")
    if setup:
        params["setup"] = setup
    if profile.extra:
        params["additional_parameters"] = dict(profile.extra)
    if dependency:
        params["dependency"] = dependency
    return params


def job_python(profile: ClusterProfile, folder: Path | None = None) -> str:
    """The job's interpreter: the image's (--image, the profile's `image`), else the profile's `python`,
    else $INAT_IMAGE's, else this one. `folder`: the job folder, SCRATCH/jobs/..., whose SCRATCH is bound."""
    image = profile.image or (None if profile.python else os.environ.get("INAT_IMAGE"))
    if not image:
        return profile.python or shlex.quote(sys.executable)
    backend = backends.requested()
    if backend != "tensorflow":
        # The images hold TensorFlow only (containers/README.md); the job would die importing Keras.
        raise ConfigError(f"KERAS_BACKEND={backend}: the Apptainer image {image} runs TensorFlow only; "
                          "submit without an image, from an environment with '.[jax]' (docs/backends.md)")
    scratch = next((p.parent for p in [folder, *folder.parents] if p.name == "jobs"), None) if folder else None
    binds = ",".join(filter(None, [str(scratch or layout.scratch_root()), os.environ.get("INAT_BIND")]))
    # --nv unless the job asks for no GPU: without GPUs apptainer only warns, but a GPU job without
    # --nv would quietly train on the CPU. PYTHONSAFEPATH: the job starts in the submit directory,
    # and `python -m submitit...` would otherwise import a checkout there over the image's packages.
    nv = [] if profile.gpus == 0 else ["--nv"]
    return shlex.join(["apptainer", "exec", *nv, "--env", "PYTHONSAFEPATH=1", "-B", binds, image, "python"])


def make_executor(profile: ClusterProfile, folder: Path, job_name: str, dependency: str | None = None):
    """A submitit SlurmExecutor for one submission (one job or one array) of a stage."""
    from submitit import SlurmExecutor  # lazy: submitit, only when submitting

    folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = SlurmExecutor(folder, max_num_timeout=profile.max_timeouts, python=job_python(profile, folder))
    except RuntimeError as exc:  # no srun on this machine
        raise ConfigError(f"--cluster slurm: {exc}") from None
    executor.update_parameters(**slurm_parameters(profile, job_name, dependency))
    return executor


def sbatch_text(profile: ClusterProfile, stage: str, folder: Path, n_tasks: int = 1,
                dependency: str | None = None) -> str:
    """The sbatch script submitit writes for one submission of `stage` (for review and golden tests)."""
    from submitit.slurm.slurm import _make_sbatch_string  # lazy: submitit, only when submitting

    prof = profile.for_stage(stage)
    params = slurm_parameters(prof, f"inat-{stage}", dependency)
    if n_tasks > 1:
        params["map_count"] = n_tasks
    command = " ".join([job_python(prof, folder), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)
