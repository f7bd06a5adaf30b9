"""The commands of `inat-jobs`, one module per group; importing a module registers its commands on
`jobs.app.app` (`jobs.cli` imports them all).

  run        train, test, model-info, fetch-weights, make-demo-data
  data       cache-data
  figures    visualize, sweep-report, report
  sweep      launch-sweep, agent, sweep-status
  cluster    retrain-best, pipeline, status, collect
  options    the typer options several commands share
"""
