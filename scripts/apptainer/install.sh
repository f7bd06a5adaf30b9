#!/usr/bin/env bash
# Install Apptainer on a Debian host that has no package for it (bookworm has none; sid's
# binary needs a newer glibc than bookworm's). Run as root.
#
#   scripts/apptainer/install.sh
#
# 1. debootstrap a minimal Debian sid tree holding apptainer (plus debootstrap, for
#    `Bootstrap: debootstrap` definitions) into $APPTAINER_SID_ROOT (/opt/apptainer-sid);
# 2. configure it for this host (subuid/subgid for --fakeroot, root's capabilities);
# 3. install a wrapper at $APPTAINER_WRAPPER (/usr/local/bin/apptainer) that runs that
#    apptainer in a mount namespace with the host's directories at their own paths
#    (see apptainer-wrapper.sh).
#
# Idempotent: a second run only checks the installation (well under 2 s).
# Environment:
#   APPTAINER_SID_ROOT    where the sid tree goes           (default /opt/apptainer-sid)
#   APPTAINER_WRAPPER     where the wrapper goes            (default /usr/local/bin/apptainer)
#   APPTAINER_SID_MIRROR  Debian mirror for debootstrap     (default: the host's apt mirror)
#   APPTAINER_SID_SUITE   Debian suite to take apptainer from (default sid)
#   APPTAINER_REINSTALL=1 rebuild the tree even if it is installed
set -euo pipefail

t0=${EPOCHREALTIME/,/.}
elapsed() { awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "install.sh: $*" >&2; }
die() { log "error: $*"; log "failed after $(elapsed) s"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${APPTAINER_SID_ROOT:-/opt/apptainer-sid}
wrapper=${APPTAINER_WRAPPER:-/usr/local/bin/apptainer}
suite=${APPTAINER_SID_SUITE:-sid}
packages=apptainer,squashfs-tools,ca-certificates,debootstrap,libcap2-bin
# Bump when the configuration below changes, so that installed trees get reconfigured.
config_version=1
stamp=$root/.apptainer-sid-installed
# Inside the sid tree: the ldconfig shim and links to the host's GPU programs (see below).
host_tools=/usr/local/libexec/apptainer-host
stamp_text="config=$config_version suite=$suite packages=$packages"

[[ $EUID -eq 0 ]] || die "run as root"
[[ $root == /* && $root != / && $root != */ ]] || die "APPTAINER_SID_ROOT must be an absolute directory path, not '$root'"

wrapper_text=$(sed -e "s|@APPTAINER_SID_ROOT@|$root|" -e "s|@HOST_TOOLS@|$host_tools|" "$here/apptainer-wrapper.sh")

installed() {
    [[ -f $stamp && $(<"$stamp") == "$stamp_text" && -x $root/usr/bin/apptainer && -f $wrapper ]] &&
        [[ $(<"$wrapper") == "$wrapper_text" ]]
}

if [[ ${APPTAINER_REINSTALL:-0} != 1 ]] && installed; then
    version=$("$wrapper" --version) || die "installed, but '$wrapper --version' fails; rerun with APPTAINER_REINSTALL=1"
    log "$version already installed in $root ($wrapper); checked in $(elapsed) s"
    exit 0
fi

umount_below() { # unmount whatever an interrupted debootstrap left mounted below $1
    local dir=$1 m
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# ---- 1. the sid tree ----
if [[ ${APPTAINER_REINSTALL:-0} == 1 || ! -x $root/usr/bin/apptainer ]]; then
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap on the host"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    mirror=${APPTAINER_SID_MIRROR:-$("$here/../debian-mirror.sh" || true)}
    [[ -n $mirror ]] || die "found no Debian mirror in /etc/apt; set APPTAINER_SID_MIRROR"
    partial=$root.partial
    umount_below "$partial"
    rm -rf --one-file-system "$partial"
    log "debootstrap $suite ($packages) into $partial from $mirror"
    t1=${EPOCHREALTIME/,/.}
    debootstrap --variant=minbase --include="$packages" "$suite" "$partial" "$mirror" \
        >"$partial.log" 2>&1 || {
        tail -n 20 "$partial.log" >&2
        umount_below "$partial"
        die "debootstrap failed (log: $partial.log)"
    }
    umount_below "$partial"
    log "debootstrap took $(awk -v a="$t1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.0f", b - a }') s"
    rm -f "$partial"/var/cache/apt/archives/*.deb "$partial.log"
    if [[ -e $root ]]; then
        umount_below "$root"
        rm -rf --one-file-system "$root"
    fi
    mv "$partial" "$root"
fi

# ---- 2. configuration (idempotent) ----
# Mount points for the wrapper: the old root lands on /host; the host's /etc/hosts and
# /etc/resolv.conf are bound over these files.
mkdir -p "$root/host"
[[ -s $root/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
[[ -e $root/etc/resolv.conf || -L $root/etc/resolv.conf ]] || : >"$root/etc/resolv.conf"
# --fakeroot maps root onto a subordinate id range.
for f in subuid subgid; do
    grep -q '^root:' "$root/etc/$f" 2>/dev/null || echo 'root:100000:65536' >>"$root/etc/$f"
done
# Root's capabilities inside containers: apptainer's default ("full") asks for every
# capability and fails where root's bounding set lacks some (containers and sandboxes often
# drop CAP_SYS_RESOURCE). "file" grants root the capabilities listed by `apptainer capability
# add`, set below to exactly the host's bounding set: native behaviour wherever it can be had.
conf=$root/etc/apptainer/apptainer.conf
[[ -f $conf ]] || die "$conf missing: is apptainer installed in $root?"
sed -i -E 's/^[# ]*root default capabilities *=.*/root default capabilities = file/' "$conf"
grep -q '^root default capabilities = file$' "$conf" || echo 'root default capabilities = file' >>"$conf"
# --nv/--rocm: apptainer finds the GPU driver libraries with `ldconfig -p` and the driver's
# programs (nvidia-smi, ...) on PATH. Both must be the host's, at the paths where they are
# seen inside the wrapper (/host/...): a directory searched first (apptainer.conf "binary
# path", and PATH in the wrapper) holds an ldconfig shim and links to the host's programs.
hostbin=$root$host_tools
mkdir -p "$hostbin"
install -m 0755 /dev/stdin "$hostbin/ldconfig" <<'EOF'
#!/bin/sh
# Installed by scripts/apptainer/install.sh. `ldconfig -p` lists the host's libraries under
# /host (where the host's root is inside the apptainer wrapper); anything else is sid's own.
case " $* " in
*" -p "* | *" --print-cache "*)
    for ldconfig in /host/sbin/ldconfig /host/usr/sbin/ldconfig; do
        if [ -x "$ldconfig" ]; then
            chroot /host "${ldconfig#/host}" "$@" | sed 's| => /| => /host/|'
            exit 0
        fi
    done ;;
esac
exec /sbin/ldconfig "$@"
EOF
for list in "$root"/etc/apptainer/nvliblist.conf "$root"/etc/apptainer/rocmliblist.conf; do
    [[ -f $list ]] || continue
    grep -v -E '^[[:space:]]*(#|$)|\.so|/' "$list" | while read -r prog; do
        ln -sfn "/host/usr/bin/$prog" "$hostbin/$prog"
    done
done
sed -i -E '/^binary path *=/d' "$conf"
echo "binary path = $host_tools:\$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" >>"$conf"

# ---- 3. the wrapper ----
mkdir -p "$(dirname "$wrapper")"
printf '%s\n' "$wrapper_text" >"$wrapper.tmp"
chmod 0755 "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"

# Capabilities for root in containers = this host's bounding set (see above).
bnd=$(awk '$1 == "CapBnd:" { print $2 }' /proc/self/status)
caps=$(chroot "$root" capsh --decode="$bnd" | sed -E 's/^0x[0-9a-f]+=//' | tr 'a-z' 'A-Z')
[[ -n $caps ]] || die "could not decode the capability bounding set $bnd"
"$wrapper" capability drop --user root all >/dev/null 2>&1 || true
out=$("$wrapper" capability add --user root "$caps" 2>&1) || { echo "$out" >&2; die "apptainer capability add failed"; }

version=$("$wrapper" --version) || die "'$wrapper --version' fails"
echo "$stamp_text" >"$stamp"
log "$version installed: tree $root ($(du -sm --one-file-system "$root" | cut -f1) MB), wrapper $wrapper; took $(elapsed) s"
