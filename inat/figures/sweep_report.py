"""`sweep_report(sweep_dir)`: trials.csv and the assignment's sweep plots, from the trial run dirs.

    SWEEP/trials.csv                       one row per trial: state, epochs, best val_accuracy, start,
                                           every config key
    SWEEP/figures/accuracy_vs_created.png  best val accuracy of each trial against its start time
    SWEEP/figures/parallel_coordinates.png swept parameters -> best val accuracy, one line per trial
    SWEEP/figures/param_correlation.png    correlation of each parameter (value) with val accuracy
    SWEEP/figures/param_importance.png     Optuna's PED-ANOVA importance of each parameter (its plot)

The trials are read by `inat.figures.trials`, offline and from the run directories alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InatError
from ..fsutil import write_csv
from . import sweep_plots
from .trials import LEAD, read_trials, swept_keys


def sweep_report(sweep_dir: str | os.PathLike, pdf: bool = False) -> list[Path]:
    """Write SWEEP/trials.csv and the plots; returns the files written."""
    sweep_dir = Path(sweep_dir).resolve()
    trials = read_trials(sweep_dir)
    if not trials:
        raise InatError(f"{sweep_dir}: no trial run directories under trials/ yet; nothing to report")
    keys = list(trials[0].config)
    write_csv(sweep_dir / "trials.csv", LEAD + keys, [t.row(keys) for t in trials])
    written = [sweep_dir / "trials.csv"]
    swept = swept_keys(sweep_dir, trials)
    written += sweep_plots.write_all(trials, swept, sweep_dir / "figures", title=sweep_dir.name, pdf=pdf)
    return written
