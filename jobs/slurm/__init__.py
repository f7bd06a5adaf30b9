"""Slurm: cluster profiles, submitting calls as (array) jobs with submitit, and their states.

  profile    cluster profiles, the Slurm-or-local choice, and the one place executors are built
  submit     calls -> one array job per stage (or, locally, in this process), recorded on scratch
  jobstate   job states from Slurm's accounting (sacct)

submitit is imported only when an executor is built.
"""
