#!/usr/bin/env bash
# Install and start a single-node Slurm cluster with accounting on Debian 12,
# for CI and local tests of the Slurm/submitit code paths.
#
#   munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd, cluster "inat-ci",
#   one partition "debug" holding this machine as its only node.
#
# Run as root. Needs no systemd: every daemon is started by hand. Idempotent:
# when the cluster is already up with the current configuration it only checks
# and exits; daemons that are down (or whose configuration changed) are
# (re)started, the others are left alone.
#
# Environment:
#   SLURM_SETUP_TIMEOUT  seconds to wait for each daemon (default 90)
#   SLURM_FAKE_GPUS      stand-in GPUs the node offers (gres/gpu, default 2)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

T0=$(now_s)
WAIT_S=${SLURM_SETUP_TIMEOUT:-90}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
APT_LOG=$SLURM_LOG_DIR/setup-apt.log
export DEBIAN_FRONTEND=noninteractive
# Client commands must never hang the script on a daemon that is wedged.
CLIENT_TIMEOUT=20

[[ $EUID -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

# wait_up NAME PIDFILE COMM_REGEX CHECK LOG...: after starting daemon NAME,
# poll CHECK every 0.5 s until it succeeds. Fail at once (with the logs) when
# the daemon has exited, so that a fatal start-up error does not cost the
# whole timeout; fail after $WAIT_S seconds otherwise. An empty PIDFILE skips
# the exit check.
wait_up() {
    local name=$1 pidfile=$2 comm_re=$3 check=$4 start deadline
    shift 4
    start=$(date +%s)
    deadline=$((start + WAIT_S))
    while true; do
        # Give the daemon 3 s to fork and write its pid file. Checked before
        # CHECK because client commands retry for ~10 s against a dead daemon.
        if [[ -n $pidfile ]] && (($(date +%s) >= start + 3)) &&
            ! pid_of "$pidfile" "$comm_re" >/dev/null; then
            die "$name exited during start-up" "$@"
        fi
        "$check" && return 0
        if (($(date +%s) >= deadline)); then
            die "$name started but does not answer after ${WAIT_S}s" "$@"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- packages
packages_installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || return 1
    done
}

install_packages() {
    if packages_installed; then
        return 0
    fi
    log "installing ${PACKAGES[*]} (apt-get)"
    local t
    t=$(now_s)
    # Recommends would pull in ~60 more packages (HDF5, IPMI, ROCm, Perl CGI
    # plugins) that a one-node CI cluster never loads.
    mkdir -p "$SLURM_LOG_DIR"
    # Keep the maintainer scripts from starting the daemons through
    # invoke-rc.d with Debian's default configuration: this script starts them
    # itself, with its own. Docker-style images already ship such a policy.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get -q -o DPkg::Lock::Timeout=120 update >"$APT_LOG" 2>&1 ||
        die "apt-get update failed" "$APT_LOG"
    apt-get -q -y -o DPkg::Lock::Timeout=120 install --no-install-recommends \
        "${PACKAGES[@]}" >>"$APT_LOG" 2>&1 ||
        die "apt-get install ${PACKAGES[*]} failed" "$APT_LOG"
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    log "packages installed in $(elapsed_since "$t") s"
}

# ---------------------------------------------------------------- configuration
NODE=$(hostname -s)
CONF_CHANGED=()   # names of daemons whose configuration file was (re)written

# install_file PATH MODE OWNER CONTENT: write CONTENT to PATH only when it
# differs; return 0 when the file was written, 1 when it was already current.
install_file() {
    local path=$1 mode=$2 owner=$3 content=$4 tmp
    if [[ -f $path && "$(cat "$path")" == "$content" ]]; then
        # Correct ownership/mode anyway: cheap, and repairs hand edits.
        chmod "$mode" "$path"
        chown "$owner" "$path"
        return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
    return 0
}

render_slurm_conf() {
    local hw cpus mem headroom
    # `slurmd -C` prints what slurmd itself will detect and report at
    # registration; configuring more than that drains the node.
    hw=$(slurmd -C | head -n 1)
    cpus=$(grep -o 'CPUs=[0-9]*' <<<"$hw" | cut -d= -f2)
    mem=$(grep -o 'RealMemory=[0-9]*' <<<"$hw" | cut -d= -f2)
    [[ -n $cpus && -n $mem ]] || die "cannot parse 'slurmd -C' output: $hw"
    # Leave memory for the daemons and MariaDB; jobs get the rest.
    if ((mem >= 4096)); then headroom=1024; else headroom=$((mem / 10)); fi

    cat <<EOF
# Generated by scripts/slurm/setup-cluster.sh - edits are overwritten.
ClusterName=$CLUSTER_NAME
# The explicit address keeps the cluster working where the host name does not
# resolve (minimal CI containers).
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only once its old credential has expired
# (default 120 s); 10 s makes submitit's checkpoint/requeue tests take
# ~30 s instead of ~2 min.
AuthInfo=cred_expire=10
MpiDefault=none
# No mail server here; the default (/usr/bin/mail) is missing and logs an error.
MailProg=/bin/true

StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups here (containers, no systemd): track processes through /proc and
# do not bind tasks to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux

SchedulerType=sched/backfill
# Look at pending jobs every 5 s instead of every 30-60 s: a requeued job
# becomes eligible cred_expire seconds after its requeue, and nothing but the
# periodic passes notices that.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
# Allocate single CPUs and memory. Without a default memory per CPU every job
# gets the node's whole memory and array tasks run one after another.
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024

# Forget finished jobs in slurmctld (squeue/scontrol) after 5 s; sacct keeps
# them for good through slurmdbd. It also sets how often "sbatch --wait" polls:
# every 2 s here, versus 2 s, 8 s, then every 32 s with MinJobAge >= 65.
MinJobAge=5
# Seconds between SIGTERM and SIGKILL (cancel, time limit, requeue). submitit
# ignores SIGTERM, so each cancelled or requeued submitit job keeps the node
# COMPLETING - and this one-node cluster blocked - for the full KillWait.
KillWait=5
JobRequeue=1
# A node that went DOWN because slurmd was stopped comes back by itself as
# soon as its slurmd registers again.
ReturnToService=2

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# sacct's AllocTRES then counts GPUs too (GPU-hours), not only cpu/mem/node.
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none

# $FAKE_GPUS stand-in GPUs (gres.conf): jobs that ask for GPUs are scheduled,
# accounted and given CUDA_VISIBLE_DEVICES as on a GPU node; nothing computes
# on them. Only CPUs and memory otherwise, no socket/core/thread layout: with
# CR_CPU every logical CPU is then a separate slot, even with hyperthreads.
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem - headroom)) Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Each stand-in GPU is a character device with /dev/null's numbers (slurmd
# accepts only devices in gres.conf), recreated on every start: /run is a tmpfs.
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
FAKE_GPU_DIR=$SLURM_RUN_DIR/fake-gpu
make_fake_gpus() {
    local i
    install -d -m 755 "$FAKE_GPU_DIR"
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -c $FAKE_GPU_DIR/gpu$i ]] || mknod -m 666 "$FAKE_GPU_DIR/gpu$i" c 1 3 ||
            die "cannot create the stand-in GPU device $FAKE_GPU_DIR/gpu$i (mknod)"
    done
}

render_gres_conf() {
    cat <<EOF
# Generated by scripts/slurm/setup-cluster.sh - edits are overwritten.
# Stand-in GPUs for tests (see slurm.conf); AutoDetect off: there is no NVML.
AutoDetect=off
NodeName=$NODE Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((FAKE_GPUS - 1))]
EOF
}

DB_PASS=""
render_slurmdbd_conf() {
    cat <<EOF
# Generated by scripts/slurm/setup-cluster.sh - edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$SLURMDBD_PIDFILE
LogFile=$SLURMDBD_LOG
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
}

# MariaDB: log somewhere readable (Debian's default is syslog, which a bare
# container does not run) and use the lock timeout the Slurm docs recommend
# for slurmdbd.
MYSQL_CONF=/etc/mysql/mariadb.conf.d/90-slurm-ci.cnf
render_mysql_conf() {
    cat <<EOF
# Generated by scripts/slurm/setup-cluster.sh - edits are overwritten.
[mysqld_safe]
skip_syslog
log_error=$MYSQL_LOG

[mysqld]
log_error=$MYSQL_LOG
innodb_lock_wait_timeout=900
# slurmdbd logs a warning below 256 MB.
innodb_buffer_pool_size=256M
EOF
}

write_configs() {
    # Keep the database password across runs: it is stored only in
    # slurmdbd.conf (mode 600, readable by the slurm user alone).
    if [[ -r $SLURM_ETC/slurmdbd.conf ]]; then
        DB_PASS=$(sed -n 's/^StoragePass=//p' "$SLURM_ETC/slurmdbd.conf")
    fi
    if [[ -z $DB_PASS ]]; then
        DB_PASS=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    fi
    mkdir -p "$SLURM_ETC"
    local conf
    conf=$(render_slurm_conf)
    if install_file "$SLURM_ETC/slurm.conf" 644 root:root "$conf"; then
        CONF_CHANGED+=(slurmctld slurmd)
    fi
    if install_file "$SLURM_ETC/gres.conf" 644 root:root "$(render_gres_conf)"; then
        CONF_CHANGED+=(slurmctld slurmd)
    fi
    if install_file "$SLURM_ETC/slurmdbd.conf" 600 slurm:slurm "$(render_slurmdbd_conf)"; then
        CONF_CHANGED+=(slurmdbd)
    fi
    if install_file "$MYSQL_CONF" 644 root:root "$(render_mysql_conf)"; then
        CONF_CHANGED+=(mariadb)
    fi
}

conf_changed() {
    local d
    for d in "${CONF_CHANGED[@]}"; do [[ $d == "$1" ]] && return 0; done
    return 1
}

prepare_dirs() {
    getent passwd slurm >/dev/null ||
        die "user 'slurm' missing although the slurm packages are installed"
    # /run is a tmpfs on real machines: recreate its directories every time.
    install -d -o slurm -g slurm -m 755 "$SLURM_RUN_DIR" "$SLURM_LOG_DIR" "$CTLD_SPOOL"
    install -d -o root -g root -m 755 "$SLURMD_SPOOL"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge
    install -d -o mysql -g mysql -m 755 /run/mysqld
    install -d -o mysql -g adm -m 2750 /var/log/mysql
    # slurmctld refuses to start on a state directory written for another
    # cluster name. That directory is someone else's leftover: move it aside.
    if [[ -f $CTLD_SPOOL/clustername && $(cat "$CTLD_SPOOL/clustername") != "$CLUSTER_NAME" ]]; then
        local aside
        aside="$CTLD_SPOOL.stale-$(date +%Y%m%d%H%M%S)"
        log "state in $CTLD_SPOOL belongs to cluster '$(cat "$CTLD_SPOOL/clustername")'; moving it to $aside"
        mv "$CTLD_SPOOL" "$aside"
        install -d -o slurm -g slurm -m 755 "$CTLD_SPOOL"
    fi
}

# ---------------------------------------------------------------- daemons
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        return 0
    fi
    # A munged killed hard leaves its pid file and socket lock behind.
    stop_daemon munged "$MUNGE_PIDFILE" munged
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force ||
        die "munged failed to start" "$MUNGE_LOG"
    wait_up munged "$MUNGE_PIDFILE" munged munge_ok "$MUNGE_LOG"
}

mysql_ok() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }

start_mariadb() {
    if mysql_ok && ! conf_changed mariadb; then
        return 0
    fi
    if mysql_ok; then
        log "MariaDB configuration changed: restarting it"
        mysqladmin shutdown || true
    fi
    stop_daemon mariadb "$MYSQL_PIDFILE" 'mariadbd|mysqld'
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null ||
            die "mariadb-install-db failed"
    fi
    log "starting MariaDB"
    # setsid -f: mysqld_safe is a supervisor loop that must outlive this
    # script and must not hold its stdout (CI would wait for it to close).
    setsid -f /usr/bin/mysqld_safe </dev/null >/dev/null 2>&1
    # No pid-file check: mysqld_safe takes a while before it starts mariadbd.
    wait_up MariaDB "" "" mysql_ok "$MYSQL_LOG"
}

setup_database() {
    # Idempotent: IF NOT EXISTS everywhere, and the password is (re)set so it
    # always matches slurmdbd.conf. Root logs in through the unix socket.
    mysql --batch <<EOF || die "creating the accounting database failed" "$MYSQL_LOG"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_ok() { timeout "$CLIENT_TIMEOUT" sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

# restart_unless_up NAME PIDFILE CHECK LOG...: leave daemon NAME alone if it runs with the current
# config and CHECK passes (returns 1); else (re)start /usr/sbin/NAME and wait until CHECK passes,
# showing the LOGs if it does not (returns 0).
restart_unless_up() {
    local name=$1 pidfile=$2 check=$3
    shift 3
    if pid_of "$pidfile" "$name" >/dev/null && ! conf_changed "$name" && "$check"; then
        return 1
    fi
    stop_daemon "$name" "$pidfile" "$name"
    log "starting $name"
    "/usr/sbin/$name" || die "$name failed to start" "$1"
    wait_up "$name" "$pidfile" "$name" "$check" "$@"
}

# The first start creates the accounting tables, which takes a few seconds.
start_slurmdbd() { restart_unless_up slurmdbd "$SLURMDBD_PIDFILE" dbd_ok "$SLURMDBD_LOG" "$MYSQL_LOG" || true; }

register_cluster() {
    if timeout "$CLIENT_TIMEOUT" sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        return 0
    fi
    log "registering cluster $CLUSTER_NAME in the accounting database"
    timeout "$CLIENT_TIMEOUT" sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null ||
        die "sacctmgr add cluster $CLUSTER_NAME failed" "$SLURMDBD_LOG"
}

ctld_ok() { timeout "$CLIENT_TIMEOUT" scontrol ping 2>/dev/null | grep -q 'is UP'; }

CTLD_RESTARTED=0
start_slurmctld() {
    if restart_unless_up slurmctld "$SLURMCTLD_PIDFILE" ctld_ok "$SLURMCTLD_LOG"; then
        CTLD_RESTARTED=1
    fi
}

start_slurmd() {
    # A fresh slurmctld does not know the running slurmd yet and would mark the
    # node DOWN (non-responding) for about 30 s: restarting slurmd makes it
    # register at once.
    if pid_of "$SLURMD_PIDFILE" slurmd >/dev/null && ! conf_changed slurmd && ((CTLD_RESTARTED == 0)); then
        return 0
    fi
    stop_daemon slurmd "$SLURMD_PIDFILE" slurmd
    log "starting slurmd"
    /usr/sbin/slurmd || die "slurmd failed to start" "$SLURMD_LOG"
}

node_state() { timeout "$CLIENT_TIMEOUT" sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1; }

# Usable states: no suffix (* = not responding, ~ = powered down, ...).
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

wait_node_ready() {
    local deadline state resumed=0
    deadline=$(($(date +%s) + WAIT_S))
    while ! node_ready; do
        state=$(node_state)
        # DOWN/DRAIN without '*' means slurmd answers but the node was set
        # unusable, typically by state left in $CTLD_SPOOL from an earlier
        # run (e.g. "Not responding", "Kill task failed"). Resume it once.
        if ((resumed == 0)) && [[ $state =~ ^(down|drained|draining|drain)$ ]]; then
            log "node $NODE is '$state' ($(sinfo -h -n "$NODE" -o %E)); resuming it"
            scontrol update NodeName="$NODE" State=RESUME || true
            resumed=1
        fi
        if ! pid_of "$SLURMD_PIDFILE" slurmd >/dev/null; then
            sleep 1  # right after the fork the pid file may not be written yet
            pid_of "$SLURMD_PIDFILE" slurmd >/dev/null || die "slurmd exited" "$SLURMD_LOG"
        fi
        if (($(date +%s) >= deadline)); then
            scontrol show node "$NODE" >&2 || true
            die "node $NODE not usable after ${WAIT_S}s (state '${state:-unknown}')" \
                "$SLURMCTLD_LOG" "$SLURMD_LOG"
        fi
        sleep 0.5
    done
}

sacct_ok() { timeout "$CLIENT_TIMEOUT" sacct -n -X -S now >/dev/null 2>&1; }

all_daemons_alive() {
    pid_of "$MUNGE_PIDFILE" munged >/dev/null &&
        pid_of "$MYSQL_PIDFILE" 'mariadbd|mysqld' >/dev/null &&
        pid_of "$SLURMDBD_PIDFILE" slurmdbd >/dev/null &&
        pid_of "$SLURMCTLD_PIDFILE" slurmctld >/dev/null &&
        pid_of "$SLURMD_PIDFILE" slurmd >/dev/null
}

summary() {
    local how=$1
    printf 'slurm-ci: cluster %s %s: node %s (%s) in partition %s, accounting via slurmdbd; %s s\n' \
        "$CLUSTER_NAME" "$how" "$NODE" \
        "$(timeout "$CLIENT_TIMEOUT" sinfo -h -n "$NODE" -o '%T, %c CPUs, %m MB')" \
        "$PARTITION" "$(elapsed_since "$T0")"
}

# ---------------------------------------------------------------- main
if packages_installed; then
    # Fast path: nothing to install, configuration unchanged, node usable and
    # accounting answering -> leave every daemon alone.
    prepare_dirs
    make_fake_gpus
    write_configs
    # Check the pid files first: the client commands retry for ~10 s when a
    # daemon is down.
    if ((${#CONF_CHANGED[@]} == 0)) && all_daemons_alive && node_ready && sacct_ok; then
        summary "already running"
        exit 0
    fi
else
    install_packages
    prepare_dirs
    make_fake_gpus
    write_configs
fi

start_munge
start_mariadb
setup_database
start_slurmdbd
register_cluster
start_slurmctld
start_slurmd
wait_node_ready
sacct_ok || die "sacct does not work although slurmdbd runs" "$SLURMDBD_LOG" "$SLURMCTLD_LOG"
summary "started"
