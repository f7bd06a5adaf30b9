#!/usr/bin/env bash
# Database accounts for the tests of `--storage URL` (tests/sweep/test_rdb.py):
#
#   setup-test-db.sh mysql      on the MariaDB server that scripts/slurm/setup-cluster.sh starts
#                               for slurmdbd (127.0.0.1:3306); says so if it is not running
#   setup-test-db.sh postgres   on Debian's PostgreSQL (127.0.0.1:5432), installed and started
#                               here when needed (about 13 s to install, 3 s to start)
#
# User inat_test may create and drop databases named inat_test_*: each test session makes its own
# and drops it, so runs side by side do not meet. The password is generated once and kept in
# $INAT_TEST_DB_DIR/password (mode 600, default /var/lib/inat-jobs/test-db). Prints the server's
# URL, e.g. mysql://inat_test:PASSWORD@127.0.0.1:3306, on stdout.
#
# Run as root (it logs in as the servers' administrators through their unix sockets). Idempotent;
# when the server is already up, well under a second.
set -euo pipefail

die() { printf 'setup-test-db: %s\n' "$*" >&2; exit 1; }
log() { printf 'setup-test-db: %s\n' "$*" >&2; }

[[ $# -eq 1 && ($1 == mysql || $1 == postgres) ]] || die "usage: setup-test-db.sh mysql|postgres"
[[ $EUID -eq 0 ]] || die "must run as root (creates database accounts)"

DIR=${INAT_TEST_DB_DIR:-/var/lib/inat-jobs/test-db}
install -d -m 700 "$DIR"
if [[ ! -s $DIR/password ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$DIR/password")
fi
PASS=$(cat "$DIR/password")

setup_mysql() {
    command -v mysql >/dev/null || die "no mysql client: scripts/slurm/setup-cluster.sh installs MariaDB"
    mysqladmin --connect-timeout=2 ping >/dev/null 2>&1 ||
        die "MariaDB does not answer; scripts/slurm/setup-cluster.sh starts it"
    # Both host names: a TCP client on 127.0.0.1 is 'localhost' only while MariaDB resolves names.
    mysql --batch >/dev/null <<SQL || die "creating the MariaDB account inat_test failed"
CREATE USER IF NOT EXISTS 'inat_test'@'localhost' IDENTIFIED BY '$PASS';
CREATE USER IF NOT EXISTS 'inat_test'@'127.0.0.1' IDENTIFIED BY '$PASS';
ALTER USER 'inat_test'@'localhost' IDENTIFIED BY '$PASS';
ALTER USER 'inat_test'@'127.0.0.1' IDENTIFIED BY '$PASS';
GRANT ALL PRIVILEGES ON \`inat\\_test\\_%\`.* TO 'inat_test'@'localhost';
GRANT ALL PRIVILEGES ON \`inat\\_test\\_%\`.* TO 'inat_test'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
    echo "mysql://inat_test:$PASS@127.0.0.1:3306"
}

pg_cluster() { pg_lsclusters -h 2>/dev/null | awk 'NR == 1 {print $1, $2, $3, $4}'; }

setup_postgres() {
    if ! command -v pg_lsclusters >/dev/null; then
        log "installing postgresql (apt-get)"
        # No start from the package scripts (no systemd here): the cluster is started below.
        local policy=/usr/sbin/policy-rc.d own_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
        fi
        export DEBIAN_FRONTEND=noninteractive
        { apt-get -q -o DPkg::Lock::Timeout=120 update &&
            apt-get -q -y -o DPkg::Lock::Timeout=120 install --no-install-recommends postgresql; } \
            >"$DIR/apt.log" 2>&1 || {
            if ((own_policy)); then rm -f "$policy"; fi
            die "installing postgresql failed: $DIR/apt.log"
        }
        if ((own_policy)); then rm -f "$policy"; fi
    fi
    if [[ -z $(pg_cluster) ]]; then
        local version
        version=$(ls /usr/lib/postgresql | sort -n | tail -1)
        log "creating PostgreSQL cluster $version/main"
        pg_createcluster "$version" main >/dev/null
    fi
    read -r version name port status <<<"$(pg_cluster)"
    if [[ $status != online ]]; then
        log "starting PostgreSQL $version/$name"
        pg_ctlcluster "$version" "$name" start || die "PostgreSQL did not start: /var/log/postgresql/"
    fi
    runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "creating the PostgreSQL role inat_test failed"
SELECT 'CREATE ROLE inat_test' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'inat_test')\gexec
ALTER ROLE inat_test LOGIN CREATEDB PASSWORD '$PASS';
SQL
    echo "postgresql://inat_test:$PASS@127.0.0.1:$port"
}

"setup_$1"
