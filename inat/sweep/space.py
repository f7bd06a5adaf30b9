"""The W&B -> Optuna mapping for the local backend (the table in docs/sweeps.md).

`optuna_space` gives each swept key its Optuna distribution (or a one-line ConfigError for forms
Optuna cannot express), `decode` turns a trial's params back into run config values, and
`make_sampler` / `make_pruner` map `method` and `early_terminate`.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

from ..errors import ConfigError
from .spec import INT_KEYS, UNBOUNDED, SweepSpec

def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be None/bool/int/float/str: lists travel as JSON strings."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    """name -> Optuna distribution for every swept key; ConfigError for forms Optuna cannot express."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # lazy: Optuna, only when the space is built

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


def make_sampler(spec: SweepSpec, seed: int, agent_id: str = "", trials_before: int = 0):
    """bayes -> TPE, random -> random, grid -> grid. Each agent gets its own seed from (seed, agent id,
    the trials the study held when the agent started): with one seed for all, agents started together
    would draw the same first configs, and an agent requeued under its id would draw its earlier ones."""
    import optuna  # lazy: Optuna, as above

    agent_seed = zlib.crc32(f"{seed}:{agent_id}:{trials_before}".encode()) & 0x7FFFFFFF
    if spec.method == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=agent_seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=agent_seed)
    # TPE, not GP: these spaces are categorical (lists of lists, activations, booleans), which TPE
    # models directly. constant_liar keeps parallel agents from piling onto the same point.
    return optuna.samplers.TPESampler(seed=agent_seed, constant_liar=True)


def make_pruner(spec: SweepSpec, epochs: int):
    """early_terminate -> W&B's own hyperband rule (`inat.sweep.hyperband`); none -> no pruning.

    `epochs` plays no part: W&B's bands do not depend on how long the runs are.
    """
    import optuna  # lazy: Optuna, as above

    from .hyperband import WandbHyperbandPruner  # lazy: its module subclasses an Optuna pruner

    if spec.early_terminate is None:
        return optuna.pruners.NopPruner()
    return WandbHyperbandPruner(spec.early_terminate)
