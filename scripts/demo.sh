#!/usr/bin/env bash
# The whole workflow on demo data on this machine: no account, no cluster, no internet needed.
# Outputs land in ./scratch (override with INAT_SCRATCH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH" WANDB_MODE="${WANDB_MODE:-offline}"
scratch="${INAT_SCRATCH:-$PWD/scratch}"
data="$scratch/demo-data"
[[ -d "$data/train" ]] || inat-jobs make-demo-data "$data"
run_id="demo-$(date +%Y%m%d-%H%M%S)"
inat-jobs train --data "$data" --config configs/train/demo.yaml --out "$scratch" --run-id "$run_id"
inat-jobs test --run "$scratch/runs/$run_id"
echo "done: $scratch/runs/$run_id"
