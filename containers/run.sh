#!/bin/sh
# %runscript of containers/inat.def: `apptainer run IMAGE ARGS...` runs `inat-jobs ARGS...`,
# e.g. `apptainer run --nv -B /scratch,/data inat.sif train --config c.yaml --data /data/inat`.
#
# Scratch storage: the host's $INAT_SCRATCH when it passes in (bind it at its own path,
# `-B "$INAT_SCRATCH"`, so that runs have the same paths inside and out), else /scratch,
# whatever the host binds there (`-B /scratch`, `-B /big/disk:/scratch`). When it is writable,
# W&B files and Keras downloads go below it too, unless the host sets WANDB_DIR, KERAS_HOME.
# (`apptainer exec IMAGE inat-jobs ...` skips this and behaves like inat-jobs on the host.)
INAT_SCRATCH=${INAT_SCRATCH:-/scratch}
export INAT_SCRATCH
if [ -d "$INAT_SCRATCH" ] && [ -w "$INAT_SCRATCH" ]; then
    WANDB_DIR=${WANDB_DIR:-$INAT_SCRATCH/wandb}
    WANDB_CACHE_DIR=${WANDB_CACHE_DIR:-$INAT_SCRATCH/wandb/cache}
    KERAS_HOME=${KERAS_HOME:-$INAT_SCRATCH/keras}
    export WANDB_DIR WANDB_CACHE_DIR KERAS_HOME
    mkdir -p "$WANDB_DIR" "$KERAS_HOME" 2>/dev/null
fi
exec inat-jobs "$@"
