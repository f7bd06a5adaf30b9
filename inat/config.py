"""The run config: one typed object that travels from the CLI (or a sweep) to the job to the library.

Keys keep the assignment's names (`filt_org`, `num_dense`, ...) so that W&B sweep files written for
the original notebooks paste in unchanged. Every value is checked here, in one place (a pydantic
model: the types, choices and bounds below), and a bad one is reported as a single line naming the
key, the value and what is allowed (`inat.validation`).
"""

# Annotations stay strings: `dataclasses.fields(RunConfig)[i].type` is "int" for the integer keys,
# which is how inat.sweep_spec tells them apart.
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from .errors import ConfigError
from .fsutil import write_text
from .validation import invalid, one_line

MODELS = ("scratch", "inceptionv3", "inceptionresnetv2", "resnet50", "xception")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "leaky_relu", "mish")
POOLINGS = ("avg", "max")
# What train() logs each epoch, so what can pick the kept epoch (and what a sweep can rank on).
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")
GOALS = ("auto", "maximize", "minimize")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
Model = Literal[MODELS]
Activation = Literal[ACTIVATIONS]
Pooling = Literal[POOLINGS]
Monitor = Literal[MONITORS]
Goal = Literal[GOALS]
Precision = Literal[PRECISIONS]
JitCompile = Literal["auto"] | bool

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


# A pydantic dataclass: a real dataclass (fields(), ==, asdict), validated whenever one is made, and
# frozen so that it stays valid (change one with `replace`). Each field's "before" validator below
# reads the YAML/CLI spellings into the field's type; pydantic then checks choices and bounds, and
# `_cross_checks` the rules across keys.
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RunConfig:
    # Model family: "scratch" is Part A's 5-block CNN, the others are Part B's ImageNet bases.
    model: Model = "scratch"
    # Part A knobs. Defaults are the best config of the original sweep.
    kernel_size: list[int] = Field(default_factory=lambda: [3, 3, 3, 3, 3])
    filt_org: list[int] = Field(default_factory=lambda: [32, 64, 64, 128, 128])
    activation: Activation = "selu"
    batch_norm: bool = False
    dropout: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    num_dense: int = Field(128, ge=1)
    data_augment: bool = False
    # Input and schedule.
    image_size: int = Field(224, ge=8, le=1024)
    epochs: int = Field(10, ge=1)
    seed: int = 0
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # Part B knobs: the last `trainable_layers` layers of the base train, the rest stay frozen.
    trainable_layers: int = Field(100, ge=0, description="0 freezes the whole base")
    weights: str = Field("imagenet", min_length=1, description="imagenet, none, or a path to a weights file")
    pooling: Pooling = "avg"
    # Which epoch model.keras keeps, and the number that ranks the run: a sweep sets both to its
    # `metric` (name and goal) so that the model kept is the model ranked. auto: accuracies are
    # maximised, losses minimised.
    monitor: Monitor = "val_accuracy"
    monitor_goal: Goal = "auto"
    # Compute: `inat.devices` resolves "auto" on the machine that trains, and run.json records the
    # choice. precision auto: bfloat16 on GPUs of compute capability >= 8.0, float16 (with loss
    # scaling) on 7.x, float32 on CPUs. jit_compile auto: XLA on GPUs; on CPUs off under TensorFlow
    # (2.4x slower there), on under JAX (JAX without jit runs op by op).
    precision: Precision = "auto"
    jit_compile: JitCompile = "auto"

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of key: value, got {type(data).__name__}")
        try:
            return _VALIDATOR.validate_python(data)
        except ValidationError as err:
            raise one_line(err, source, cls, data) from None

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: Iterable[str] = (), extra: dict | None = None
    ) -> "RunConfig":
        """Defaults <- YAML file <- `extra` (e.g. sweep parameters) <- `--set key=value` overrides."""
        data: dict[str, Any] = {}
        source = "config"
        if path is not None:
            data = load_yaml_mapping(path)
            source = str(path)
        data.update(extra or {})
        if overrides:
            data.update(parse_overrides(overrides))
            source = "--set" if path is None else f"{path} (with --set)"
        return cls.from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes}, "config")

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The keys, their types, choices, bounds and defaults, as JSON Schema."""
        return _VALIDATOR.json_schema()

    @property
    def is_transfer(self) -> bool:
        return self.model != "scratch"

    @property
    def monitor_maximize(self) -> bool:
        if self.monitor_goal == "auto":
            return "accuracy" in self.monitor
        return self.monitor_goal == "maximize"

    # ---- validation ---------------------------------------------------------------------------

    def validate(self, source: str = "config") -> None:
        """Every RunConfig is checked when made or changed; this checks it once more, as from `source`."""
        RunConfig.from_dict(self.to_dict(), source)

    @field_validator("batch_norm", "data_augment", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> bool:
        # The original notebooks compared against 'True' while sweeps sent 'true', so batch norm
        # silently never switched on: accept every spelling, reject anything else.
        found = _read_bool(value)
        if found is None:
            raise invalid("expected true or false")
        return found

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> bool | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        found = _read_bool(value)
        if found is None:
            raise invalid("expected auto, true or false")
        return found

    @field_validator("batch_size", "num_dense", "image_size", "epochs", "seed", "trainable_layers", mode="before")
    @classmethod
    def _int(cls, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise invalid("expected an integer")

    @field_validator("dropout", "weight_decay", "learning_rate", "val_fraction", mode="before")
    @classmethod
    def _float(cls, value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise invalid("expected a number")

    @field_validator("model", "activation", "weights", "pooling", "monitor", "monitor_goal", "precision", mode="before")
    @classmethod
    def _str(cls, value: Any) -> str:
        if value is None:
            return "none"  # YAML's `weights: none`/`null`, and `--set weights=~`
        if isinstance(value, (str, Path)):
            return str(value).strip()
        raise invalid("expected a string")

    @field_validator("kernel_size", "filt_org", mode="before")
    @classmethod
    def _int_list(cls, value: Any) -> list[int]:
        items = value
        if isinstance(value, str):
            items = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        elif isinstance(value, int) and not isinstance(value, bool):
            # `kernel_size: 3` means 3 in every block, as Keras itself would read it.
            items = [value] * 5
        if not isinstance(items, (list, tuple)):
            raise invalid("expected a list of 5 integers")
        out = []
        for item in items:
            if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == item[1]:
                item = item[0]  # the seed's [(3,3), ...] square-kernel spelling
            try:
                if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                    raise ValueError
                out.append(int(item.strip()) if isinstance(item, str) else int(item))
            except (TypeError, ValueError):
                raise invalid("expected a list of 5 integers") from None
        return out

    @field_validator("kernel_size", "filt_org", mode="after")
    @classmethod
    def _five_blocks(cls, value: list[int], info) -> list[int]:
        if len(value) != 5:
            raise invalid("expected a list of 5 positive integers, one per conv block", value=value)
        if any(v < 1 for v in value):
            raise invalid("every entry must be a positive integer", value=value)
        if info.field_name == "kernel_size" and any(k > 31 for k in value):
            raise invalid("kernel sizes above 31 are not supported", value=value)
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        if not self.is_transfer and self.image_size < 2**5:
            # Five 2x2 max-pools need at least 32 px or the last feature map vanishes.
            raise invalid("the scratch CNN has 5 max-pool layers and needs image_size >= 32",
                          key="image_size", value=self.image_size)
        return self


_VALIDATOR = TypeAdapter(RunConfig)


def _read_bool(value: Any) -> bool | None:
    """A boolean in any of YAML's and the CLI's spellings, else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


# ---- parsing helpers ------------------------------------------------------------------------------


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["dropout=0.4", "kernel_size=[3,5,5,7,7]"]` -> dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set dropout=0.4")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; one-line errors for missing or broken files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; pass a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); pass a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data
