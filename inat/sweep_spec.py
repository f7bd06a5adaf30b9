"""W&B sweep files: parse, validate, and map them onto Optuna for the air-gapped backend.

One file serves both backends. `load_spec` checks everything W&B itself would check that we can check
offline (method, metric, distributions, early_terminate) plus what only we know: every parameter must
be a RunConfig key and every candidate value must pass RunConfig's own validation. Errors are one
line naming the file and the key. The W&B -> Optuna mapping is documented in docs/sweeps.md; the
functions `optuna_space`, `decode`, `make_sampler` and `make_pruner` implement it.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import RunConfig, load_yaml_mapping
from .errors import ConfigError

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
            if key in self.params:
                raise ConfigError(f"{flag} {key}=...: '{key}' is set by the sweep file {self.path}; "
                                  "edit the file instead, or --set only keys it does not name")
        base_config(self, fixed)

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"


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
    if et.get("min_iter") is None and et.get("s") is None:
        raise ConfigError(f"{src}: early_terminate with max_iter needs s (the number of brackets)")
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


# ---- the Optuna side ------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be None/bool/int/float/str: lists travel as JSON strings."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    """name -> Optuna distribution for every swept key; ConfigError for forms Optuna cannot express."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {}
    for key, p in spec.swept.items():
        d, where = p.distribution, f"{spec.path}: parameters.{key}"
        if d in UNBOUNDED or d.startswith("inv_"):
            raise ConfigError(f"{where}: distribution {d} has no Optuna equivalent; use a bounded one "
                              "(uniform, log_uniform_values, ...) or --backend wandb")
        if d == "categorical":
            if "probabilities" in p.raw:
                raise ConfigError(f"{where}: categorical 'probabilities' have no Optuna equivalent; "
                                  "drop them or use --backend wandb")
            space[key] = CategoricalDistribution([_encode(v) for v in p.values])
        elif d == "int_uniform":
            space[key] = IntDistribution(int(p.min), int(p.max))
        elif d == "uniform":
            space[key] = FloatDistribution(p.min, p.max)
        elif d == "q_uniform":
            if key in INT_KEYS and float(p.q).is_integer() and float(p.min).is_integer():
                space[key] = IntDistribution(int(p.min), int(p.max), step=int(p.q))
            else:
                space[key] = FloatDistribution(p.min, p.max, step=p.q)
        elif d in ("log_uniform", "q_log_uniform"):  # W&B's bounds here are natural logs
            space[key] = FloatDistribution(math.exp(p.min), math.exp(p.max), log=True)
        else:  # log_uniform_values, q_log_uniform_values
            space[key] = FloatDistribution(p.min, p.max, log=True)
    return space


def decode(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna trial params -> run config values (JSON strings back to lists, q-rounding applied)."""
    out = {}
    for key, value in params.items():
        p = spec.params.get(key)
        if p is None:
            continue
        if p.distribution == "categorical" and isinstance(value, str) and any(
            isinstance(v, (list, dict)) for v in p.values
        ):
            value = json.loads(value)
        elif p.distribution in ("q_log_uniform", "q_log_uniform_values"):
            # Optuna has no log-scale step: it samples the continuous value and we round like W&B.
            value = round(value / p.q) * p.q
            if float(value).is_integer() and (key in INT_KEYS or float(p.q).is_integer()):
                value = int(value)
        out[key] = value
    return out


def grid_space(spec: SweepSpec) -> dict[str, list]:
    space = {}
    for key, p in spec.swept.items():
        if p.distribution == "categorical":
            space[key] = [_encode(v) for v in p.values]
        elif p.distribution == "int_uniform":
            space[key] = list(range(int(p.min), int(p.max) + 1))
        elif p.distribution == "q_uniform":
            n = int(math.floor((p.max - p.min) / p.q + 1e-9))
            space[key] = [p.min + i * p.q for i in range(n + 1)]
            if key in INT_KEYS:
                space[key] = [int(v) for v in space[key]]
        else:
            raise ConfigError(f"{spec.path}: parameters.{key}: grid search needs discrete values "
                              f"(values, int_uniform or q_uniform), not {p.distribution}")
    return space


def make_sampler(spec: SweepSpec, seed: int, agent_id: str = ""):
    """bayes -> TPE, random -> random, grid -> grid. Each agent gets its own seed from (seed, agent id):
    with one seed for all, agents started together would draw the same first configs."""
    import optuna

    agent_seed = zlib.crc32(f"{seed}:{agent_id}".encode()) & 0x7FFFFFFF
    if spec.method == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=agent_seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=agent_seed)
    # TPE, not GP: these spaces are categorical (lists of lists, activations, booleans), which TPE
    # models directly. constant_liar keeps parallel agents from piling onto the same point.
    return optuna.samplers.TPESampler(seed=agent_seed, constant_liar=True)


def hyperband_resources(spec: SweepSpec, epochs: int) -> tuple[int, int, int] | None:
    """(min_resource, max_resource, reduction_factor) for Optuna's HyperbandPruner, in epochs.

    W&B's rungs sit at min_iter * eta**k for k < s (or max_iter / eta**k for k = s..1). Optuna derives
    its bracket count as floor(log_eta(max / min)) + 1, so max is capped at min * eta**(s-1) to get
    the file's s brackets (fewer when the run has fewer epochs).
    """
    et = spec.early_terminate
    if et is None:
        return None
    eta = et.get("eta", 3)
    s = et.get("s")
    if et.get("min_iter") is not None:
        low = et["min_iter"]
        high = et.get("max_iter") or epochs
    else:
        high = et["max_iter"]
        low = max(1, round(high / eta**s))
    if s is not None:
        high = min(high, low * eta ** (s - 1))
    return low, max(low, min(high, epochs)), eta


def make_pruner(spec: SweepSpec, epochs: int):
    import optuna

    resources = hyperband_resources(spec, epochs)
    if resources is None:
        return optuna.pruners.NopPruner()
    low, high, eta = resources
    return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=eta)
