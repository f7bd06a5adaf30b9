#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by setup-cluster.sh, in reverse
# start order. Daemons that are not running are skipped; exits 0 either way.
#
#   stop-cluster.sh            stop the daemons; queued jobs and accounting stay
#   stop-cluster.sh --purge    full reset: also cancel all jobs first, drop
#                              the accounting database (sacct history) and
#                              delete the slurmctld/slurmd state (queue, job
#                              ID counter); setup-cluster.sh recreates them
#
# Daemons are found through their pid files only, never by process name.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

PURGE=0
case ${1:-} in
    "") ;;
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: stop-cluster.sh [--purge])" ;;
esac

[[ $EUID -eq 0 ]] || die "must run as root"
T0=$(now_s)

if ((PURGE)) && command -v scancel >/dev/null &&
    timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    # Running job steps (slurmstepd) outlive slurmd; cancel them while the
    # controller can still do it.
    for user in $(timeout 10 squeue -h -o %u 2>/dev/null | sort -u); do
        log "cancelling the jobs of $user"
        timeout 20 scancel --quiet --user="$user" || true
    done
    sleep 1
fi

STOP_VERBOSE=1
stop_daemon slurmd "$SLURMD_PIDFILE" slurmd
stop_daemon slurmctld "$SLURMCTLD_PIDFILE" slurmctld
stop_daemon slurmdbd "$SLURMDBD_PIDFILE" slurmdbd
if ((PURGE)) && pid_of "$MYSQL_PIDFILE" 'mariadbd|mysqld' >/dev/null; then
    # Job IDs restart at 1 without the controller state; with the old
    # accounting records kept, `sacct -j 1` would then mix old and new jobs.
    log "dropping the accounting database"
    mysql --batch -e 'DROP DATABASE IF EXISTS slurm_acct_db' ||
        log "WARNING: could not drop slurm_acct_db"
fi
# mysqld_safe restarts a mariadbd that dies, but exits itself after a clean
# SIGTERM shutdown of mariadbd, so stopping mariadbd stops both.
stop_daemon mariadb "$MYSQL_PIDFILE" 'mariadbd|mysqld'
stop_daemon munged "$MUNGE_PIDFILE" munged

if ((PURGE)); then
    log "removing slurmctld and slurmd state"
    rm -rf "${CTLD_SPOOL:?}"/* "${SLURMD_SPOOL:?}"/*
fi

log "cluster stopped in $(elapsed_since "$T0") s"
