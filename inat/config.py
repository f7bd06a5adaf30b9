"""The run config: one typed object that travels from the CLI (or a sweep) to the job to the library.

Keys keep the assignment's names (`filt_org`, `num_dense`, ...) so that W&B sweep files written for
the original notebooks paste in unchanged. Every value is checked here, in one place, and a bad one
is reported as a single line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError
from .fsutil import write_text

MODELS = ("scratch", "inceptionv3", "inceptionresnetv2", "resnet50", "xception")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "leaky_relu", "mish")
POOLINGS = ("avg", "max")
# What train() logs each epoch, so what can pick the kept epoch (and what a sweep can rank on).
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")
GOALS = ("auto", "maximize", "minimize")


@dataclass
class RunConfig:
    # Model family: "scratch" is Part A's 5-block CNN, the others are Part B's ImageNet bases.
    model: str = "scratch"
    # Part A knobs. Defaults are the best config of the original sweep.
    kernel_size: list[int] = field(default_factory=lambda: [3, 3, 3, 3, 3])
    filt_org: list[int] = field(default_factory=lambda: [32, 64, 64, 128, 128])
    activation: str = "selu"
    batch_norm: bool = False
    dropout: float = 0.2
    weight_decay: float = 0.0
    learning_rate: float = 1e-4
    batch_size: int = 64
    num_dense: int = 128
    data_augment: bool = False
    # Input and schedule.
    image_size: int = 224
    epochs: int = 10
    seed: int = 0
    val_fraction: float = 0.1
    # Part B knobs: the last `trainable_layers` layers of the base train, the rest stay frozen.
    trainable_layers: int = 100
    weights: str = "imagenet"
    pooling: str = "avg"
    # Which epoch model.keras keeps, and the number that ranks the run: a sweep sets both to its
    # `metric` (name and goal) so that the model kept is the model ranked. auto: accuracies are
    # maximised, losses minimised.
    monitor: str = "val_accuracy"
    monitor_goal: str = "auto"

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of key: value, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key '{unknown[0]}' (known keys: {', '.join(sorted(known))})"
            )
        values = {name: _coerce(name, data[name], source) for name in data}
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

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
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"{source}: key '{key}' = {getattr(self, key)!r} is invalid; {allowed}")

        if self.model not in MODELS:
            raise bad("model", f"allowed: {', '.join(MODELS)}")
        for key in ("kernel_size", "filt_org"):
            value = getattr(self, key)
            if len(value) != 5:
                raise bad(key, "expected a list of 5 positive integers, one per conv block")
            if any(v < 1 for v in value):
                raise bad(key, "every entry must be a positive integer")
        if any(k > 31 for k in self.kernel_size):
            raise bad("kernel_size", "kernel sizes above 31 are not supported")
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"allowed: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "allowed: 0 <= dropout < 1")
        if self.weight_decay < 0:
            raise bad("weight_decay", "allowed: weight_decay >= 0")
        if not 0.0 < self.learning_rate <= 1.0:
            raise bad("learning_rate", "allowed: 0 < learning_rate <= 1")
        for key in ("batch_size", "num_dense", "epochs"):
            if getattr(self, key) < 1:
                raise bad(key, "allowed: an integer >= 1")
        if not 8 <= self.image_size <= 1024:
            raise bad("image_size", "allowed: 8 <= image_size <= 1024")
        if not self.is_transfer and self.image_size < 2**5:
            # Five 2x2 max-pools need at least 32 px or the last feature map vanishes.
            raise bad("image_size", "the scratch CNN has 5 max-pool layers and needs image_size >= 32")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad("val_fraction", "allowed: 0 < val_fraction < 1")
        if self.trainable_layers < 0:
            raise bad("trainable_layers", "allowed: an integer >= 0 (0 freezes the whole base)")
        if self.pooling not in POOLINGS:
            raise bad("pooling", f"allowed: {', '.join(POOLINGS)}")
        if not self.weights:
            raise bad("weights", "allowed: imagenet, none, or a path to a weights file")
        if self.monitor not in MONITORS:
            raise bad("monitor", f"allowed: {', '.join(MONITORS)}")
        if self.monitor_goal not in GOALS:
            raise bad("monitor_goal", f"allowed: {', '.join(GOALS)}")


# ---- parsing helpers ------------------------------------------------------------------------------

_TYPES = {f.name: f.type for f in fields(RunConfig)}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise a one-line ConfigError."""
    kind = _TYPES[key]

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' = {value!r} is invalid; expected {expected}")

    if kind == "bool":
        # The original notebooks compared against 'True' while sweeps sent 'true', so batch norm
        # silently never switched on: accept every spelling, reject anything else.
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise bad("a number")
    if kind == "str":
        if value is None:
            return "none"
        if isinstance(value, (str, Path)):
            return str(value).strip()
        raise bad("a string")
    if kind == "list[int]":
        items = value
        if isinstance(value, str):
            items = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        elif isinstance(value, int) and not isinstance(value, bool):
            # `kernel_size: 3` means 3 in every block, as Keras itself would read it.
            items = [value] * 5
        if not isinstance(items, (list, tuple)):
            raise bad("a list of 5 integers")
        out = []
        for item in items:
            if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == item[1]:
                item = item[0]  # the seed's [(3,3), ...] square-kernel spelling
            try:
                if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                    raise ValueError
                out.append(int(item.strip()) if isinstance(item, str) else int(item))
            except (TypeError, ValueError):
                raise bad("a list of 5 integers") from None
        return out
    raise AssertionError(f"unhandled field type {kind} for {key}")  # pragma: no cover


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
