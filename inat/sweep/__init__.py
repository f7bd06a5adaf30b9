"""Sweeps: a W&B sweep file run by agents on W&B's server or, air-gapped, with Optuna on scratch.

  spec           the sweep file: parse and check it (`load_spec`, `SweepSpec`)
  store          a sweep on scratch storage: create it, find it by id (the one lookup, which checks
                 the id), load it, and rank its trials from their run directories
  space          the W&B -> Optuna mapping: distributions, samplers, the pruner
  hyperband      W&B's hyperband rule as an Optuna pruner
  study          the local backend's Optuna study on scratch storage: create and open it
  local          the local backend's agent: an ask/tell loop around `inat.train.train`
  liveness       heartbeats, dead trials, requeued agents (local backend)
  rdb            the study on a database server (--storage URL): its password, the connection
                 check, Optuna's heartbeat (instead of liveness's files)
  status         the rows `sweep-status` shows, from the study or the trial directories
  wandb_backend  the W&B backend: W&B's server picks, we train
  dashboard      optuna-dashboard over the local backend's study, read-only, for a browser

Exports the light names of `spec` and `store`; the backends import Optuna or W&B when they run.
"""

from .spec import SweepSpec, load_spec
from .store import (
    BACKENDS, Ranked, Sweep, best_configs, check_new_sweep, find_sweep, load_sweep, mark_run, new_sweep, read_trial,
    sweep_ids, trial_dirs, trial_name,
)  # fmt: skip

__all__ = [
    "BACKENDS", "Ranked", "Sweep", "SweepSpec", "best_configs", "check_new_sweep", "find_sweep", "load_spec",
    "load_sweep", "mark_run", "new_sweep", "read_trial", "sweep_ids", "trial_dirs", "trial_name",
]
