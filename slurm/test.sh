#!/bin/bash
# Evaluate trained runs on the test split: writes RUN_DIR/test_metrics.json and predictions.csv.
#   sbatch slurm/test.sh RUN_DIR [RUN_DIR...]          (sbatch --wait ... blocks until it is done)
# Submit from the repository root (or set INAT_SLURM_DIR to this folder). Partition: sbatch -p NAME.
#SBATCH --job-name=inat-test
#SBATCH --time=00:30:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --output=%x-%j.out
# shellcheck source=slurm/common.sh
source "${INAT_SLURM_DIR:-${SLURM_SUBMIT_DIR:-.}/slurm}/common.sh"

(($# > 0)) || { echo "usage: sbatch slurm/test.sh RUN_DIR [RUN_DIR...]" >&2; exit 2; }
args=()
for run in "$@"; do args+=(--run "$run"); done
inat test "${args[@]}"
