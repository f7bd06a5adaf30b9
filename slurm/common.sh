# shellcheck shell=bash
# Shared by the sbatch scripts in slurm/ (sourced, not run): where outputs go, how inat-jobs runs
# (installed, or inside the Apptainer image), and requeue-on-time-out. No secrets here: W&B keys
# come from the environment (WANDB_API_KEY) or ~/.netrc, never from these files.
#
# Environment (all optional):
#   INAT_SCRATCH  scratch root for runs/ and sweeps/ (default: $SCRATCH/inat, else ./scratch)
#   INAT_IMAGE    an Apptainer image (.sif): run `inat-jobs` inside it, with --nv and INAT_SCRATCH bound
#   INAT_BIND     more bind paths for the image, comma-separated (e.g. the dataset: /data/inat)
#   INAT_JOBS     the command that runs inat-jobs without an image (default: inat-jobs)
#   INAT_MAX_REQUEUES  time-outs/preemptions a job may requeue itself after (default: 3)
set -euo pipefail

if [[ -z ${INAT_SCRATCH:-} ]]; then
    if [[ -n ${SCRATCH:-} ]]; then INAT_SCRATCH=$SCRATCH/inat; else INAT_SCRATCH=$PWD/scratch; fi
fi
export INAT_SCRATCH
mkdir -p "$INAT_SCRATCH"

# inat ARGS...: run `inat-jobs ARGS` here or in the image.
inat() {
    if [[ -n ${INAT_IMAGE:-} ]]; then
        apptainer exec --nv -B "$INAT_SCRATCH${INAT_BIND:+,$INAT_BIND}" "$INAT_IMAGE" inat-jobs "$@"
    else
        local -a cmd
        read -r -a cmd <<<"${INAT_JOBS:-inat-jobs}"
        "${cmd[@]}" "$@"
    fi
}

# requeueable CMD...: run CMD; when Slurm sends USR2 to this batch shell (#SBATCH --signal=B:USR2@S,
# S seconds before the time limit, or at preemption), requeue the job and stop CMD. The job starts
# again with the same id and arguments, and CMD resumes: training at its last finished epoch, a sweep
# agent with its unfinished trial.
requeueable() {
    "$@" &
    _inat_child=$!
    trap _inat_requeue USR2
    local rc=0
    wait "$_inat_child" || rc=$?
    # `wait` returns early (rc > 128) when the trap ran; then wait for the child to go.
    while kill -0 "$_inat_child" 2>/dev/null; do wait "$_inat_child" || rc=$?; done
    return "$rc"
}

_inat_requeue() {
    local done_before=${SLURM_RESTART_COUNT:-0}
    if ((done_before >= ${INAT_MAX_REQUEUES:-3})); then
        echo "inat: USR2 but this job was already requeued $done_before time(s); letting it end" >&2
        return
    fi
    echo "inat: USR2 (time limit near, or preempted): requeueing job ${SLURM_JOB_ID:-?}" >&2
    scontrol requeue "$SLURM_JOB_ID"
    kill -TERM "$_inat_child" 2>/dev/null || true
}

# Say where this job runs and what it will write, at the top of its log.
echo "inat: job ${SLURM_JOB_ID:-none}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)} on $(hostname)," \
    "restart ${SLURM_RESTART_COUNT:-0}; scratch $INAT_SCRATCH${INAT_IMAGE:+; image $INAT_IMAGE}" >&2
