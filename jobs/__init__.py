"""`inat-jobs`: the command line and the batch jobs. It calls the `inat` library and owns everything
about where work runs: Slurm through submitit (`jobs.slurm`), or processes on this machine.

  app, cli      the typer app and `main()`; the commands are in `jobs.commands`
  tasks         the functions Slurm jobs run (their pickles name them: they keep their path)
  launch        creating a sweep from launch-sweep's options
  agents        sweep agents by id, and local agent processes
  controls      stopping a sweep's agents, resuming it, adding agents as the launch started them
  pipeline      sweep -> retrain -> test -> figures, chained on Slurm or run here
  collect       results off scratch
  quiet         TensorFlow's start-up chatter kept off stderr
"""
