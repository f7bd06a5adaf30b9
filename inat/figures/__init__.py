"""Figures and reports, drawn from run and sweep directories on disk.

  names          the run figures by the names `--what` takes (`WHAT`, `parse_what`)
  visualize      the figures of one trained run into RUN/figures/ (`visualize`)
  plots          the run figures as pure functions of numpy arrays
  guided         guided backpropagation for single conv neurons
  trials         what a sweep's trial run directories say (`read_trials`)
  sweep_report   SWEEP/trials.csv and the sweep plots (`sweep_report`)
  sweep_plots    those plots
  report         one self-contained report.html for a run or a sweep (`write_report`)

Exports the names of `names`, which the command line and the jobs check before anything heavy loads.
`visualize`, `plots`, `guided`, `sweep_report` and `sweep_plots` import matplotlib, Keras or
TensorFlow; `trials` and `report` do not (report draws its history plot on demand): import them as
modules.
"""

from .names import WHAT, parse_what

__all__ = ["WHAT", "parse_what"]
