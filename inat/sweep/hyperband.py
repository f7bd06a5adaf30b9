"""W&B's hyperband early termination as one Optuna pruner, so both backends stop the same runs.

This is the rule of W&B's sweep engine (`hyperband_stop_runs` in the `sweeps` package, 0.2.0),
written out again because the engine is not a dependency of the package; tests/sweep/test_hyperband_oracle.py
runs both on the same learning curves and requires the same decisions.

A run's history is its metric values in step order, non-finite values dropped, negated when the goal
is maximize (so lower is better). Our agent reports epoch e as step e, so history index i is step
i + 1 when no value was dropped.

- Bands: with `max_iter`, int(max_iter / eta^i) for i = 1..s while >= 1, sorted; else with `min_iter`,
  min_iter * eta^k for k = 0..99 (`s` plays no part). `eta` defaults to 3.
- The threshold of band b: the values at history index b of every run whose history is longer than
  b, whatever its state (finished, running, stopped, failed), sorted; the one at index int(n / eta).
- A running run is judged at the largest band below its history length, and stopped when its best
  value so far (the minimum of its history) is worse than (strictly above) that band's threshold.

There are no brackets: every trial is compared with all the others and the sampler learns from all.

One difference in bookkeeping, not in the rule: W&B resumes a requeued run under its own id, while
our agent hands the run on to a new trial (user attribute `resumes`) and fails the old one. The old
trial's values are the new one's first epochs, so it is left out: each run counts once, as in W&B.
"""

from __future__ import annotations

import math
from numbers import Number
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

DEFAULT_ETA = 3  # the engine's schema default
MIN_ITER_BANDS = 100  # the engine's min_iter form makes this many bands


def bands(early_terminate: dict[str, Any]) -> list[int]:
    """The history indices at which runs are compared; ValueError when there is none."""
    eta = early_terminate.get("eta", DEFAULT_ETA)
    out: list[int] = []
    if early_terminate.get("max_iter") is not None:
        # max_iter wins when min_iter is given too: the engine tests for max_iter first.
        band = early_terminate["max_iter"]
        for _ in range(early_terminate["s"]):
            band /= eta  # float division, truncated below: max_iter 10, eta 3 gives 3 and 1
            if band < 1:
                break
            out.append(int(band))
        out.sort()
    elif early_terminate.get("min_iter") is not None:
        band = early_terminate["min_iter"]
        for _ in range(MIN_ITER_BANDS):
            out.append(int(band))
            band *= eta
    if not out:
        raise ValueError(f"early_terminate {early_terminate}: no hyperband band (max_iter below eta?)")
    return out


def _is_number(x: Any) -> bool:
    """The engine's filter: a finite number, not a bool."""
    return isinstance(x, Number) and not isinstance(x, bool) and math.isfinite(x)


def history(trial: FrozenTrial, maximize: bool) -> list[float]:
    """The trial's values in step order as the engine sees a run's history: finite only, lower is better.
    Dropping values (rather than keeping step numbers) shifts later epochs down, as in the engine."""
    values = [v for _, v in sorted(trial.intermediate_values.items()) if _is_number(v)]
    return [-v for v in values] if maximize else values


class WandbHyperbandPruner(optuna.pruners.BasePruner):
    """Stops a running trial exactly when W&B's hyperband would stop the run (see the module doc)."""

    def __init__(self, early_terminate: dict[str, Any]):
        self.eta = early_terminate.get("eta", DEFAULT_ETA)
        self.bands = bands(early_terminate)

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        if trial.state != TrialState.RUNNING:  # the engine only decides for running runs
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        own = history(trial, maximize)
        # The engine walks the sorted bands and keeps the last one below the history's length. A run
        # is first judged one epoch after a band: band 3 needs history[3], the 4th epoch.
        below = [b for b in self.bands if b < len(own)]
        if not below:
            return False
        band = below[-1]
        # Every trial of every state counts (the engine filters none), this one included, with the
        # values it has just reported.
        all_trials = study.get_trials(deepcopy=False)
        handed_on = {t.user_attrs["resumes"] for t in all_trials if "resumes" in t.user_attrs}
        trials = {t.number: t for t in all_trials if t.number not in handed_on}
        trials[trial.number] = trial
        at_band = sorted(h[band] for h in (history(t, maximize) for t in trials.values()) if len(h) > band)
        threshold = at_band[int((1.0 / self.eta) * len(at_band))]  # the engine's expression, r = 1 / eta
        # Its best value over the whole history, later epochs included, against values at the band.
        return min(own) > threshold
