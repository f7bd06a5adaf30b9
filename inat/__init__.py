"""The library: data, models, training, evaluation, sweeps and figures for iNaturalist-12K CNNs.

It knows nothing of Slurm and never imports `jobs` (the command line and the batch jobs, which call
it). The top modules are the ground everything stands on: `errors`, `fsutil`, `config`, `layout`
(the scratch layout), `rundir` (a run directory's files), `seeding`, `tracking`; then `train` and
`evaluate`. The packages: `data`, `models`, `sweep`, `figures`. docs/architecture.md has the map.
"""
