#!/bin/sh
# %runscript of every definition in containers/: `apptainer run IMAGE ARGS...` runs
# `inat-jobs ARGS...`, e.g. `apptainer run --nv -B /scratch inat.sif train --config c.yaml`.
for dir in "${WANDB_DIR:-}" "${KERAS_HOME:-}"; do
    [ -n "$dir" ] && mkdir -p "$dir" 2>/dev/null
done
exec inat-jobs "$@"
