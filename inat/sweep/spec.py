"""W&B sweep files: parse and validate them, for both sweep backends.

One file serves both backends. `load_spec` checks everything W&B itself would check that we can check
offline (method, metric, distributions, early_terminate) plus what only we know: every parameter must
be a RunConfig key and every candidate value must pass RunConfig's own validation. Errors are one
line naming the file and the key. The W&B -> Optuna mapping is in `inat.sweep.space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import RunConfig, load_yaml_mapping
from ..errors import ConfigError

METHODS = ("bayes", "random", "grid")
GOALS = ("maximize", "minimize")
METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")  # what train() logs once per epoch
# Top-level keys W&B accepts. The local backend ignores the ones that only make sense on the server.
TOP_KEYS = ("method", "metric", "parameters", "early_terminate", "run_cap", "name", "description",
            "project", "entity", "program", "command", "controller")
RANGES = ("int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform",
          "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values")
UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta")
DISTRIBUTIONS = ("constant", "categorical", *RANGES, *UNBOUNDED)
INT_KEYS = {f.name for f in fields(RunConfig) if f.type == "int"}
# Run config keys a sweep sets from its metric (see SweepSpec.rank_config): never swept or --set.
RANK_KEYS = ("monitor", "monitor_goal")


@dataclass
class Param:
    key: str
    distribution: str
    values: list = field(default_factory=list)  # constant: [value]; categorical: the choices
    min: float | None = None
    max: float | None = None
    q: float | None = None
    raw: dict = field(default_factory=dict)


@dataclass
class SweepSpec:
    path: str
    raw: dict
    method: str
    metric: str
    goal: str
    params: dict[str, Param]
    early_terminate: dict | None
    run_cap: int | None
    target: float | None

    @property
    def constants(self) -> dict[str, Any]:
        return {k: p.values[0] for k, p in self.params.items() if p.distribution == "constant"}

    @property
    def swept(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.distribution != "constant"}

    def check_overrides(self, fixed: dict[str, Any], flag: str = "--set") -> None:
        """`--set` may fix keys the file leaves open, never a key the file itself sets or sweeps."""
        for key in fixed:
            if key in RANK_KEYS:
                raise ConfigError(f"{flag} {key}=...: a sweep's trials keep their model by the sweep's metric "
                                  f"({self.metric}, {self.goal}); change metric in {self.path} instead")
            if key in self.params:
                raise ConfigError(f"{flag} {key}=...: '{key}' is set by the sweep file {self.path}; "
                                  "edit the file instead, or --set only keys it does not name")
        base_config(self, fixed)

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"

    @property
    def rank_config(self) -> dict[str, str]:
        """The run config keys that make train() keep each trial's model by this sweep's metric."""
        return {"monitor": self.metric, "monitor_goal": self.goal}


def load_spec(path: str | Path, fixed: dict[str, Any] | None = None) -> SweepSpec:
    raw = load_yaml_mapping(path)
    src = str(path)
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{src}: unknown top-level key '{key}' (allowed: {', '.join(TOP_KEYS)})")
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"{src}: method {method!r} is invalid; allowed: {', '.join(METHODS)}")
    metric = raw.get("metric") or {"name": "val_accuracy", "goal": "maximize"}
    if not isinstance(metric, dict) or metric.get("name") not in METRICS:
        name = metric.get("name") if isinstance(metric, dict) else metric
        raise ConfigError(f"{src}: metric.name {name!r} is invalid; allowed: {', '.join(METRICS)}")
    goal = metric.get("goal", "minimize")  # W&B's default goal
    if goal not in GOALS:
        raise ConfigError(f"{src}: metric.goal {goal!r} is invalid; allowed: {', '.join(GOALS)}")
    target = metric.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise ConfigError(f"{src}: metric.target {target!r} is invalid; expected a number")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise ConfigError(f"{src}: run_cap {run_cap!r} is invalid; expected an integer >= 1")
    params_raw = raw.get("parameters")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{src}: 'parameters' must be a non-empty mapping of run config keys")
    known = {f.name for f in fields(RunConfig)}
    params = {}
    for key, body in params_raw.items():
        if key in RANK_KEYS:
            raise ConfigError(f"{src}: parameters.{key}: set by the sweep's metric (name and goal), "
                              "which every trial keeps its model by; remove it from parameters")
        if key not in known:
            raise ConfigError(f"{src}: parameters.{key}: unknown parameter (not a run config key; "
                              f"known: {', '.join(sorted(known))})")
        params[key] = _parse_param(src, key, body)
    spec = SweepSpec(src, raw, method, metric["name"], goal, params,
                     _parse_early_terminate(src, raw.get("early_terminate")), run_cap, target)
    _check_candidates(spec, fixed or {})
    return spec


def _parse_param(src: str, key: str, body: Any) -> Param:
    where = f"{src}: parameters.{key}"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{values: [...]}} or {{value: x}}")
    if "parameters" in body:
        raise ConfigError(f"{where}: nested parameters are not supported (run configs are flat)")
    dist = body.get("distribution") or _infer(body)
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: distribution {dist!r} is invalid; allowed: {', '.join(DISTRIBUTIONS)}")
    p = Param(key, dist, raw=dict(body))
    if dist == "constant":
        if "value" not in body:
            raise ConfigError(f"{where}: a constant needs 'value'")
        p.values = [body["value"]]
    elif dist == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: 'values' must be a non-empty list")
        p.values = values
    elif dist in RANGES:
        for bound in ("min", "max"):
            v = body.get(bound)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: {dist} needs numeric 'min' and 'max' (got {bound}: {v!r})")
        p.min, p.max = body["min"], body["max"]
        if not p.min < p.max:
            raise ConfigError(f"{where}: min ({p.min}) must be below max ({p.max})")
        if dist == "int_uniform" and not (isinstance(p.min, int) and isinstance(p.max, int)):
            raise ConfigError(f"{where}: int_uniform needs integer min and max")
        if dist.endswith("_values") and p.min <= 0:
            raise ConfigError(f"{where}: {dist} needs min > 0 (the bounds are values, not logs)")
        if dist.startswith("q_"):
            p.q = body.get("q", 1)
            if isinstance(p.q, bool) or not isinstance(p.q, (int, float)) or p.q <= 0:
                raise ConfigError(f"{where}: q {p.q!r} is invalid; expected a number > 0")
        if key in INT_KEYS and p.q is not None and not float(p.q).is_integer():
            raise ConfigError(f"{where}: '{key}' is an integer, so q must be an integer (got {p.q})")
        if key in INT_KEYS and dist in ("uniform", "log_uniform", "log_uniform_values") + RANGES[-2:]:
            raise ConfigError(f"{where}: '{key}' is an integer but {dist} draws real numbers; "
                              "use int_uniform, or a q_ distribution with an integer q")
    return p


def _infer(body: dict) -> str:
    """W&B's rules when `distribution` is left out."""
    if "value" in body:
        return "constant"
    if "values" in body:
        return "categorical"
    if "min" in body and "max" in body:
        both_int = all(isinstance(body[b], int) and not isinstance(body[b], bool) for b in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    if "mu" in body or "sigma" in body:
        return "normal"
    return "<missing: give value, values, or min/max>"


def _parse_early_terminate(src: str, et: Any) -> dict | None:
    if et is None:
        return None
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        got = et.get("type") if isinstance(et, dict) else et
        raise ConfigError(f"{src}: early_terminate.type {got!r} is invalid; allowed: hyperband")
    for key in et:
        if key not in ("type", "min_iter", "max_iter", "s", "eta", "strict"):
            raise ConfigError(f"{src}: early_terminate.{key}: unknown key "
                              "(allowed: type, min_iter, max_iter, s, eta, strict)")
    for key, low in (("min_iter", 1), ("max_iter", 1), ("s", 1), ("eta", 2)):
        v = et.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(f"{src}: early_terminate.{key} {v!r} is invalid; expected an integer >= {low}")
    if et.get("min_iter") is None and et.get("max_iter") is None:
        raise ConfigError(f"{src}: early_terminate needs min_iter (or max_iter with s)")
    # W&B's engine takes the max_iter form whenever max_iter is given (min_iter is then ignored), and
    # that form reads s: without it the engine fails, and with max_iter < eta it has no band at all.
    if et.get("max_iter") is not None and et.get("s") is None:
        raise ConfigError(f"{src}: early_terminate with max_iter needs s (the number of bands)")
    if et.get("max_iter") is not None and et["max_iter"] < et.get("eta", 3):
        raise ConfigError(f"{src}: early_terminate.max_iter {et['max_iter']} is below eta "
                          f"{et.get('eta', 3)}: hyperband would have no band to stop runs at")
    return dict(et)


def base_config(spec: SweepSpec, fixed: dict[str, Any]) -> RunConfig:
    """Defaults <- --set values <- the file's constants: what every trial shares."""
    return RunConfig.from_dict({**fixed, **spec.constants}, f"{spec.path} (with --set)")


def _check_candidates(spec: SweepSpec, fixed: dict[str, Any]) -> None:
    """Every value a trial could get must pass RunConfig on top of the shared settings."""
    base = {**fixed, **spec.constants}
    for key, p in spec.params.items():
        if p.distribution in RANGES:
            if p.distribution.startswith("inv_"):
                continue  # 1/x forms: rejected by the local backend, left to W&B's own checks
            low, high = p.min, p.max
            if p.distribution in ("log_uniform", "q_log_uniform"):
                low, high = math.exp(low), math.exp(high)
            candidates = [low, high]
            if key in INT_KEYS:
                candidates = [math.ceil(low), math.floor(high)]
        elif p.distribution in UNBOUNDED:
            continue  # unbounded: nothing finite to check
        else:
            candidates = p.values
        for value in candidates:
            RunConfig.from_dict({**base, key: value}, f"{spec.path}: parameters.{key}")
