"""Figures and reports, from run and sweep directories on disk, drawn with matplotlib.

  visualize      the figures of one trained run into RUN/figures/ (`visualize`)
  plots          the run figures as pure functions of numpy arrays
  guided         guided backpropagation for single conv neurons
  sweep_report   SWEEP/trials.csv and the three sweep plots (`sweep_report`)
  sweep_plots    those plots
  report         one self-contained report.html for a run or a sweep (`write_report`)

Most of these import matplotlib, Keras or TensorFlow: import them as modules.
"""
