"""Where jobs run: cluster profiles, the Slurm-or-local choice, and the one place executors are built.

A cluster profile is a small YAML file (see configs/clusters/example.yaml):

    partition: gpu          # sbatch --partition
    account: proj123        # sbatch --account
    qos: normal             # sbatch --qos
    gpus: 1                 # sbatch --gpus-per-node
    cpus: 8                 # sbatch --cpus-per-task
    mem: 32                 # sbatch --mem, in GB
    time: 240               # sbatch --time, in minutes
    constraint: a100        # sbatch --constraint
    extra: {mail-type: FAIL}  # any other sbatch option, verbatim
    setup: [module load cuda/12.2]  # shell lines run before the job's python
    python: apptainer exec --nv -B /scratch /images/inat.sif python  # the job's interpreter
    image: /images/inat.sif # run the jobs in this Apptainer image (replaces `python`; --image)
    max_timeouts: 3         # requeues a training job gets after time-outs/preemptions
    signal_delay_s: 90      # seconds of warning (USR2) before the time limit, to save and requeue
    array_parallelism: 64   # array tasks running at once
    gpus_per_trial: 1       # GPUs one training run (or sweep trial) trains over (tf.distribute)
    agents_per_gpu: 1       # sweep agents sharing each GPU of an agent job
    stages:                 # per-stage overrides of the keys above
      test: {gpus: 0, time: 30}

Every key and value is checked (`ClusterProfile`, a pydantic model) in `parse_profile`; a bad one is a
one-line ConfigError naming it.
`--cluster-set KEY=VALUE` on the command line overrides one key, with the same checks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inat import backends, layout
from inat.config import load_yaml_mapping, parse_overrides
from inat.errors import ConfigError
from inat.validation import invalid, one_line, says

from ..gpus import agents_per_job

STAGES = ("agent", "train", "test", "visualize")
CLUSTERS = ("auto", "slurm", "local")
PROFILE_ENV = "INAT_CLUSTER_PROFILE"
PING_TIMEOUT_S = 5.0
# sbatch options the submission layer owns; a profile's `extra` may not set them.
RESERVED_SBATCH = {"array", "output", "error", "dependency", "open-mode", "signal", "job-name", "wckey"}

class _Keys(BaseModel):
    """The profile keys: what a file, --cluster-set or a stage may set."""

    # A key's `description` is what its error message says it expects (after its bounds, if any).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    partition: str | None = Field(None, description="a partition name")
    account: str | None = Field(None, description="an account name")
    qos: str | None = Field(None, description="a QOS name")
    gpus: int | None = Field(None, ge=0, description="GPUs per node")
    cpus: int | None = Field(None, ge=1, description="CPUs per task")
    mem: float | None = Field(None, gt=0, allow_inf_nan=False, description="GB per node")
    time: int = Field(60, ge=1, description="minutes")
    constraint: str | None = Field(None, description="a node feature expression")
    extra: dict[str, Any] = Field(default_factory=dict, description="a mapping of sbatch option: value")
    setup: list[str] = Field(default_factory=list, description="a list of shell lines")
    python: str | None = Field(
        None, description="a command that runs python, e.g. 'apptainer exec IMAGE python'"
    )
    image: str | None = Field(None, description="an Apptainer image file (.sif) on this machine")
    max_timeouts: int = Field(3, ge=0)
    signal_delay_s: int = Field(90, ge=0, description="seconds")
    array_parallelism: int = Field(64, ge=1)
    gpus_per_trial: int = Field(1, ge=1)
    agents_per_gpu: int = Field(1, ge=1)

    @field_validator("partition", "account", "qos", "constraint", "python", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise invalid()
        return str(value).strip()

    @field_validator("gpus", "cpus", "mem", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:  # None is "Slurm's default", which only leaving the key out says
            raise invalid()
        return value

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise invalid()
        path = Path(value.strip()).expanduser().resolve()
        if not path.is_file():
            raise invalid(detail=" (no such file)")
        return str(path)

    @field_validator("extra", mode="before")
    @classmethod
    def _sbatch(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic says it is not a mapping
        out = {}
        for name, v in value.items():
            flag = str(name).strip().lstrip("-").replace("_", "-")
            if flag in RESERVED_SBATCH:
                raise invalid(detail=f"; '{name}' is set by inat-jobs itself")
            if isinstance(v, (dict, list)) or v is None or not flag:
                raise invalid(detail=f" ('{name}' needs a single value)")
            out[flag.replace("-", "_")] = v  # submitit turns '_' back into '-'
        return out

    @field_validator("setup", "extra", mode="after")
    @classmethod
    def _no_wandb_key(cls, value: Any) -> Any:
        # These go verbatim into every sbatch script on scratch; a key there is a key on disk.
        if "WANDB_API_KEY" in repr(value):
            raise says("key '{key}' sets WANDB_API_KEY, which would be written into every job script; "
                       "export it in your shell (jobs inherit it) or use `wandb login` instead")
        return value

    def __repr_args__(self):  # a stage's overrides: only the keys it sets
        return [(key, getattr(self, key)) for key in type(self).model_fields if key in self.model_fields_set]


class _Profile(_Keys):
    """What a profile file may say: the keys, and per-stage overrides of them."""

    stages: dict[str, _Keys] = Field(
        default_factory=dict, description=f"a mapping of stage ({', '.join(STAGES)}) to profile keys"
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        for name, sub in value.items() if isinstance(value, dict) else ():
            if name not in STAGES:
                raise says(f"unknown stage 'stages.{name}' (stages: {', '.join(STAGES)})")
            if not isinstance(sub, dict):
                raise says(f"key 'stages.{name}' must be a mapping of profile keys")
        return value


class ClusterProfile(_Profile):
    source: str = "cluster profile"

    def __repr_args__(self):
        return [(key, getattr(self, key)) for key in type(self).model_fields]

    def for_stage(self, stage: str) -> "ClusterProfile":
        """This profile with the `stages: {stage: {...}}` overrides applied (already validated)."""
        overrides = self.stages.get(stage)
        if overrides is None:
            return self
        return self.model_copy(update={key: getattr(overrides, key) for key in overrides.model_fields_set})


def parse_profile(data: dict[str, Any], source: str, base: ClusterProfile | None = None) -> ClusterProfile:
    """Validate a profile mapping (file or --cluster-set) on top of `base`; one-line errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(data).__name__}")
    try:
        given = _Profile.model_validate(data)
    except ValidationError as err:
        raise one_line(err, source, _Profile, data, explain_keys=True) from None
    values = {key: getattr(given, key) for key in given.model_fields_set}
    base = base or ClusterProfile()
    if "stages" in values:
        values["stages"] = {**base.stages, **values["stages"]}
    return base.model_copy(update={**values, "source": source})


def load_profile(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                 image: str | os.PathLike | None = None) -> ClusterProfile:
    """Defaults <- profile file (--profile, else $INAT_CLUSTER_PROFILE) <- --cluster-set overrides <- --image."""
    path = path or os.environ.get(PROFILE_ENV) or None
    profile = ClusterProfile()
    if path:
        profile = parse_profile(load_yaml_mapping(path), str(path))
    overrides = list(overrides or [])
    if overrides:
        pairs = parse_overrides(overrides)
        profile = parse_profile(pairs, "--cluster-set", profile)
    if image is not None:
        profile = profile.model_copy(update={"image": parse_profile({"image": str(image)}, "--image").image})
    for stage in STAGES:
        agents_per_job(profile.for_stage(stage), stage)
    return profile



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
