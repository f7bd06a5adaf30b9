#!/bin/bash
# More agents for a sweep that `inat-jobs launch-sweep` created, as one array job (one agent per task):
#   sbatch --array=0-7 slurm/sweep-agent.sh SWEEP_ID [TRIALS_PER_AGENT]
# Agent ids are agent-<array job id>-<task>: stable when Slurm requeues a task (so it resumes its
# own unfinished trial) and distinct from the agent-<i> of launch-sweep's agents.
# Submit from the repository root (or set INAT_SLURM_DIR to this folder). Partition: sbatch -p NAME.
# GPUs: sbatch --gres=gpu:1 (or uncomment below).
#SBATCH --job-name=inat-agent
#SBATCH --array=0-3
#SBATCH --time=04:00:00
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
##SBATCH --gres=gpu:1
#SBATCH --output=%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
# shellcheck source=slurm/common.sh
source "${INAT_SLURM_DIR:-${SLURM_SUBMIT_DIR:-.}/slurm}/common.sh"

sweep_id=${1:?usage: sbatch --array=0-N slurm/sweep-agent.sh SWEEP_ID [TRIALS_PER_AGENT]}
requeueable inat agent --sweep-id "$sweep_id" --out "$INAT_SCRATCH" \
    --agent-id "agent-${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-0}}-${SLURM_ARRAY_TASK_ID:-0}" ${2:+--count "$2"}
