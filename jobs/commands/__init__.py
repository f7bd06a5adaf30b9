"""The commands of `inat-jobs`, one module per group. Importing a module registers its commands on
`jobs.app.app`; `jobs.cli` imports them all. Nothing is exported: the commands are the API.

  run        train, test, model-info, fetch-weights, make-demo-data
  data       cache-data
  figures    visualize, sweep-report, report
  sweep      launch-sweep, agent, sweep-status
  cluster    retrain-best, pipeline, status, collect
  dashboard  dashboard
  sync       sync (offline W&B runs, uploaded while they train)
  controls   sweep-stop, sweep-resume, add-agents
  options    the typer options several commands take

A command module imports no other command module; what two of them share lives beside them in
`jobs` (launch, agents, controls, collect, pipeline, slurm) or in `inat`.
"""
