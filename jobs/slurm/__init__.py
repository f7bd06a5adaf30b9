"""Slurm: cluster profiles, submitting calls as (array) jobs with submitit, and their states.

  profile    cluster profiles: each stage's Slurm requests, checked in one place
  executors  the Slurm-or-local choice, and the one place executors and sbatch scripts are built
  submit     calls -> one array job per stage (or, locally, in this process), recorded on scratch
  jobstate   job states from Slurm's accounting (sacct); cancelling, waiting, dependencies of pending jobs

Exports the names the commands use; submitit is imported only when an executor is built.
"""

from .executors import make_executor, resolve_cluster, sbatch_text
from .jobstate import task_rows, wait_for
from .profile import ClusterProfile, load_profile
from .submit import Submitted, add_records, maybe_submit, run_calls, submit_agents, submit_calls

__all__ = [
    "ClusterProfile", "Submitted", "add_records", "load_profile", "make_executor", "maybe_submit",
    "resolve_cluster", "run_calls", "sbatch_text", "submit_agents", "submit_calls", "task_rows", "wait_for",
]
