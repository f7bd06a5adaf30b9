# shellcheck shell=bash disable=SC2034  # sourced; the variables are used by the callers
# Shared settings and helpers for setup-cluster.sh and stop-cluster.sh.
# Sourced, not run. Plain bash; the callers set -euo pipefail.

CLUSTER_NAME=inat-ci
PARTITION=debug

SLURM_ETC=/etc/slurm
SLURM_LOG_DIR=/var/log/slurm
SLURM_RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd

MUNGE_PIDFILE=/run/munge/munged.pid
MUNGE_LOG=/var/log/munge/munged.log
MYSQL_PIDFILE=/run/mysqld/mysqld.pid
MYSQL_LOG=/var/log/mysql/error.log
SLURMDBD_PIDFILE=$SLURM_RUN_DIR/slurmdbd.pid
SLURMCTLD_PIDFILE=$SLURM_RUN_DIR/slurmctld.pid
SLURMD_PIDFILE=$SLURM_RUN_DIR/slurmd.pid
SLURMDBD_LOG=$SLURM_LOG_DIR/slurmdbd.log
SLURMCTLD_LOG=$SLURM_LOG_DIR/slurmctld.log
SLURMD_LOG=$SLURM_LOG_DIR/slurmd.log

log() { printf '[slurm-ci %s] %s\n' "$(date +%T)" "$*" >&2; }

# die MESSAGE [LOGFILE...]: report, show the tail of each log that exists, exit 1.
die() {
    local msg=$1 f
    shift
    printf '[slurm-ci %s] ERROR: %s\n' "$(date +%T)" "$msg" >&2
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '----- last 40 lines of %s -----\n' "$f" >&2
            tail -n 40 "$f" >&2
        else
            printf -- '----- %s: missing or empty -----\n' "$f" >&2
        fi
    done
    exit 1
}

# pid_of PIDFILE COMM_REGEX: print the pid recorded in PIDFILE if that process is
# alive and its command name matches. Checking the name guards against stale
# pid files whose number has been reused by an unrelated process.
pid_of() {
    local file=$1 comm_re=$2 pid comm
    [[ -r $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm =~ ^($comm_re)$ ]] || return 1
    pid_alive "$pid" || return 1
    echo "$pid"
}

# pid_alive PID: the process exists and is not a zombie (a zombie still
# answers kill -0 and still has a comm).
pid_alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# stop_daemon NAME PIDFILE COMM_REGEX: SIGTERM, wait up to 20 s, then SIGKILL.
# Does nothing (successfully) when the daemon is not running; says so when
# STOP_VERBOSE=1.
stop_daemon() {
    local name=$1 file=$2 comm_re=$3 pid i
    if ! pid=$(pid_of "$file" "$comm_re"); then
        if [[ ${STOP_VERBOSE:-0} == 1 ]]; then log "$name: not running"; fi
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        if ! pid_alive "$pid"; then
            log "$name: stopped (pid $pid)"
            return 0
        fi
        sleep 0.1
    done
    log "$name: pid $pid still alive 20 s after SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}

# now_s: seconds since the epoch with decimals, for elapsed-time reports.
now_s() { date +%s.%N; }
elapsed_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }
