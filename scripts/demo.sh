#!/usr/bin/env bash
# The whole workflow on demo data on this machine, no account, cluster or internet needed:
# a 6-trial sweep (2 agents), the best 2 configs retrained, tested, and their figures.
# Outputs land in ./scratch (override with INAT_SCRATCH); W&B runs are written offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH" WANDB_MODE="${WANDB_MODE:-offline}"
scratch="${INAT_SCRATCH:-$PWD/scratch}"
data="$scratch/demo-data"
[[ -d "$data/train" ]] || inat-jobs make-demo-data "$data"
inat-jobs pipeline --sweep configs/sweeps/sweep_demo.yaml --agents 2 --trials-per-agent 3 --top-k 2 \
    --data "$data" --out "$scratch" --cluster local --wait
inat-jobs collect --out "$scratch" --dest "$scratch/results"
echo "results: $scratch/results (full outputs: $scratch)"
