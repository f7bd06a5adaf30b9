"""The typer options that more than one command takes, defined once so that their flags, defaults
and help read the same everywhere.

The cluster options (--cluster, --profile, --cluster-set, --image) fill the cluster profile of
`jobs.slurm.profile`.
"""

from __future__ import annotations

import typer

from inat.sweep.liveness import MIN_STALE_AFTER_S, STALE_AFTER_S

from ..slurm.profile import PROFILE_ENV

__all__ = [
    "AgentsOpt", "BackendOpt", "ClusterOpt", "ClusterSetOpt", "ConfigOpt", "DataOpt", "DryRunOpt", "EpochsOpt",
    "GpusPerTrialOpt", "ImageOpt", "JsonOpt", "OutOpt", "ProfileOpt", "RunsClusterOpt", "SeedOpt", "SeedsOpt", "SetOpt",
    "StaleOpt", "StorageOpt", "SweepOpt", "TopKOpt", "TrialsPerAgentOpt", "WaitOpt",
]

# ---- runs -------------------------------------------------------------------------------------------

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML run config; keys as in `configs/default.yaml`.")
SetOpt = typer.Option(
    None, "--set", "-s", help="Override one config key, e.g. --set dropout=0.4 --set kernel_size=[3,5,5,7,7]. Repeatable."
)
DataOpt = typer.Option(..., "--data", "-d", help="Dataset root with train/<class>/ and val/<class>/ (val/ is the test set).")
OutOpt = typer.Option(
    None, "--out", "-o", help="Scratch root for outputs (default: $INAT_SCRATCH, else $SCRATCH/inat, else ./scratch)."
)

# ---- sweeps: launch-sweep's options, which `pipeline` takes too ----------------------------------------

SweepOpt = typer.Option(
    ..., "--sweep", help="Sweep file in W&B's format, e.g. configs/sweeps/sweep_partA.yaml."
)
AgentsOpt = typer.Option(..., "--agents", "-n", help=(
    "Number of agents (parallel trial runners) to start, in all. On Slurm each array task runs one, or, "
    "with a profile's gpus G, G x agents_per_gpu (or G / gpus_per_trial) of them: the array then has "
    "fewer tasks than agents."))
GpusPerTrialOpt = typer.Option(
    1, "--gpus-per-trial", min=1, help="Train over this many of the GPUs this process sees at once "
    "(tf.distribute; batch_size stays the global batch), e.g. --gpus-per-trial 4 on a 4-GPU node.")
TrialsPerAgentOpt = typer.Option(
    None, "--trials-per-agent", "-m", help="Trials each agent runs (default: until run_cap / the grid ends the sweep)."
)
BackendOpt = typer.Option(
    "local", "--backend", help="local: Optuna on scratch storage (air-gapped); wandb: W&B's server. "
    "method bayes is TPE in local, a Gaussian process in wandb."
)
StorageOpt = typer.Option(
    None, "--storage", help="Database URL for the Optuna study instead of the journal file (local backend), e.g. "
    "mysql://USER:PASSWORD@HOST/DB (pip install '.[mysql]') or postgresql://... ('.[postgres]'). Checked before "
    "anything is submitted; the password goes only to SWEEP/storage-url.secret (mode 600)."
)
SeedOpt = typer.Option(0, "--seed", help="Sampler seed (each agent derives its own from it).")
StaleOpt = typer.Option(
    STALE_AFTER_S, "--stale-after",
    help=f"Seconds without a heartbeat after which a running trial counts as dead (local backend; at least "
    f"{MIN_STALE_AFTER_S:.0f}, 3 heartbeat intervals; with --storage, Optuna's grace_period).",
)

# ---- retraining: retrain-best's options, which `pipeline` takes too ----------------------------------------

TopKOpt = typer.Option(1, "--top-k", "-k", help="Retrain the K best finished trials of the sweep.")
SeedsOpt = typer.Option(
    1, "--seeds", help="Seeds per config (seed 0..S-1; the seed also draws the train/val split)."
)
EpochsOpt = typer.Option(None, "--epochs", help="Epochs for retraining (default: the trial's).")
WaitOpt = typer.Option(False, "--wait", help="Block until the jobs end; exit 1 if one failed.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object and nothing else on stdout.")

# ---- cluster -----------------------------------------------------------------------------------------

# What the cluster options say in --help. Each has no default (None: unset), so one table serves.
_CLUSTER_HELP = {
    "cluster": "slurm: submit Slurm jobs; local: run on this machine; auto (default): Slurm when sbatch is "
        "here and the controller answers, else local.",
    "runs_cluster": "Run as one Slurm array job, one task per run (slurm; auto: Slurm when available). "
        "Default: in this process.",
    "profile": f"Cluster profile YAML (partition, time, gpus, ...; see configs/clusters/example.yaml). "
        f"Default: ${PROFILE_ENV}, else Slurm's defaults.",
    "cluster_set": "Override one cluster-profile key, e.g. --cluster-set time=30 --cluster-set partition=gpu. "
        "Repeatable.",
    "image": "Run the Slurm jobs in this Apptainer image (.sif, from containers/build.sh): apptainer exec "
        "[--nv] -B SCRATCH[,$INAT_BIND] IMAGE python. Default: the profile's `image`, else $INAT_IMAGE.",
}  # fmt: skip
ClusterOpt = typer.Option(None, "--cluster", help=_CLUSTER_HELP["cluster"])
RunsClusterOpt = typer.Option(None, "--cluster", help=_CLUSTER_HELP["runs_cluster"])
ProfileOpt = typer.Option(None, "--profile", help=_CLUSTER_HELP["profile"])
ClusterSetOpt = typer.Option(None, "--cluster-set", help=_CLUSTER_HELP["cluster_set"])
ImageOpt = typer.Option(None, "--image", help=_CLUSTER_HELP["image"], dir_okay=False)
DryRunOpt = typer.Option(
    False, "--dry-run", help="Submit and write nothing: print each sbatch script exactly as it would be submitted, "
    "its array size and dependency (ids not known yet are shown as <STAGE job id>). Options are still checked."
)
