"""Cluster profiles: what each stage's jobs ask Slurm for, checked in one place.

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
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inat.config import load_yaml_mapping, parse_overrides
from inat.errors import ConfigError
from inat.validation import invalid, one_line, says

from ..gpus import agents_per_job

# The pipeline's stages, in the order it chains them; each may override profile keys (`stages:`).
STAGES = ("agent", "train", "test", "visualize")
PROFILE_ENV = "INAT_CLUSTER_PROFILE"
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
