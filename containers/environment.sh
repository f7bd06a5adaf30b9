# Sourced by the %environment section of every definition in containers/ (POSIX sh), each
# time the container starts, after the binds are in place. Apptainer gives these values
# precedence over the host's variables of the same name; APPTAINERENV_X=value (or
# --env X=value) overrides them.

# The project's Python environment (containers/install-inat.sh).
PATH="/opt/venv/bin:$PATH"
export PATH
# Packages in a bound $HOME (~/.local) must not shadow the image's.
export PYTHONNOUSERSITE=1

# Scratch storage: whatever the host binds at /scratch (`-B /scratch`, `-B /big/disk:/scratch`).
# W&B runs and Keras' downloads go there when it is writable; otherwise the tools keep their
# own defaults (./wandb, ~/.keras).
INAT_SCRATCH=/scratch
export INAT_SCRATCH
if [ -d "$INAT_SCRATCH" ] && [ -w "$INAT_SCRATCH" ]; then
    WANDB_DIR="$INAT_SCRATCH/wandb"
    WANDB_CACHE_DIR="$INAT_SCRATCH/wandb/cache"
    KERAS_HOME="$INAT_SCRATCH/keras"
    export WANDB_DIR WANDB_CACHE_DIR KERAS_HOME
fi
