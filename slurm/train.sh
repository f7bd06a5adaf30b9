#!/bin/bash
# Train one model; a time-out or preemption requeues it and it resumes at its last finished epoch.
#   sbatch slurm/train.sh CONFIG DATA [RUN_ID]      e.g. sbatch slurm/train.sh configs/train/default.yaml /data/inat
# The run goes to $INAT_SCRATCH/runs/RUN_ID/ (default RUN_ID: train-<job id>, stable across requeues).
# Submit from the repository root (or set INAT_SLURM_DIR to this folder). Partition: sbatch -p NAME.
# GPUs: sbatch --gres=gpu:1 (or uncomment below).
#SBATCH --job-name=inat-train
#SBATCH --time=04:00:00
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
##SBATCH --gres=gpu:1
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
# shellcheck source=slurm/common.sh
source "${INAT_SLURM_DIR:-${SLURM_SUBMIT_DIR:-.}/slurm}/common.sh"

config=${1:?usage: sbatch slurm/train.sh CONFIG DATA [RUN_ID]}
data=${2:?usage: sbatch slurm/train.sh CONFIG DATA [RUN_ID]}
requeueable inat train --config "$config" --data "$data" --out "$INAT_SCRATCH" \
    --run-id "${3:-train-${SLURM_JOB_ID:-local}}"
