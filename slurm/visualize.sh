#!/bin/bash
# Figures of trained runs: RUN_DIR/figures/ (predictions, filters, feature maps, guided backprop, confusion).
#   sbatch slurm/visualize.sh RUN_DIR [RUN_DIR...]
# Submit from the repository root (or set INAT_SLURM_DIR to this folder). Partition: sbatch -p NAME.
#SBATCH --job-name=inat-visualize
#SBATCH --time=00:30:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --output=%x-%j.out
# shellcheck source=slurm/common.sh
source "${INAT_SLURM_DIR:-${SLURM_SUBMIT_DIR:-.}/slurm}/common.sh"

(($# > 0)) || { echo "usage: sbatch slurm/visualize.sh RUN_DIR [RUN_DIR...]" >&2; exit 2; }
args=()
for run in "$@"; do args+=(--run "$run"); done
inat visualize "${args[@]}"
