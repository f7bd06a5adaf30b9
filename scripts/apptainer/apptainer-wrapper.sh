#!/bin/bash
# apptainer, run from the Debian sid root filesystem that scripts/apptainer/install.sh built
# (Debian bookworm has no apptainer package and sid's needs a newer glibc than the host's).
#
# How: a private mount namespace (unshare --mount) in which the sid tree becomes / (pivot_root)
# and the host's data directories are bind-mounted at their own paths, so image paths, -B
# sources, the working directory, $HOME and /tmp mean the same as with a native install.
# The host's whole tree stays reachable under /host. Every step exec()s the next, so this
# script's pid ends up being apptainer's own: signals (SIGTERM, SIGUSR2 from Slurm), stdin/
# stdout/stderr and the exit status pass straight through; apptainer forwards signals to
# the contained process itself.
#
# Needs root (mount namespaces). APPTAINER_SID_ROOT overrides the rootfs location.
set -u
root=${APPTAINER_SID_ROOT:-@APPTAINER_SID_ROOT@}

if [[ ${_APPTAINER_SID_STAGE:-} != inner ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "apptainer: this installation runs apptainer from $root in a mount namespace and needs root" >&2
        exit 255
    fi
    if [[ ! -x $root/usr/bin/apptainer ]]; then
        echo "apptainer: no apptainer under $root; run scripts/apptainer/install.sh" >&2
        exit 255
    fi
    self=$(readlink -f -- "${BASH_SOURCE[0]}")
    export _APPTAINER_SID_STAGE=inner _APPTAINER_SID_PWD=$PWD _APPTAINER_SID_NS=$(readlink /proc/self/ns/mnt)
    # No --fork: unshare execs bash in place, keeping this pid.
    exec unshare --mount --propagation private -- /bin/bash "$self" "$@"
fi

# ---- inside the new mount namespace; nothing here is visible to the host ----
set -e
die() { echo "apptainer (wrapper): $*" >&2; exit 255; }
# Never rearrange the mounts of the namespace we were started in.
[[ -n ${_APPTAINER_SID_NS:-} && $(readlink /proc/self/ns/mnt) != "$_APPTAINER_SID_NS" ]] ||
    die "not in a new mount namespace (is _APPTAINER_SID_STAGE set in the environment?)"
cwd=$_APPTAINER_SID_PWD
unset _APPTAINER_SID_STAGE _APPTAINER_SID_PWD _APPTAINER_SID_NS

# pivot_root needs the new root to be a mount point.
mount --bind "$root" "$root" || die "cannot bind $root"

# Host directories that the sid tree needs for itself (its programs, libraries, config and
# state) are not replaced; everything else at the top level is the host's. /host is where
# the old root lands.
own=" bin sbin lib lib32 lib64 libx32 usr etc var host proc sys dev run "
for path in /*; do
    name=${path#/}
    [[ -d $path && ! -L $path ]] || continue
    [[ $own == *" $name "* ]] && continue
    mkdir -p "$root/$name"
    mount --rbind "$path" "$root/$name"
done
# /var: the host's, except the package and apptainer state of the sid tree (/var/lib) and
# the /run symlinks.
for path in /var/*; do
    name=${path#/var/}
    [[ -d $path && ! -L $path ]] || continue
    case $name in lib | lock | run) continue ;; esac
    mkdir -p "$root/var/$name"
    mount --rbind "$path" "$root/var/$name"
done
# Kernel file systems and devices (GPUs included), and the host's /run (munge, sockets).
for name in dev proc sys run; do
    mount --rbind "/$name" "$root/$name"
done
# Host identity, name resolution and users, so apptainer sees the host's view. The sid
# tree keeps its own /etc otherwise (apptainer.conf, ld.so.cache, subuid).
for name in hosts resolv.conf passwd group; do
    if [[ -f /etc/$name && -f $root/etc/$name && ! -L $root/etc/$name ]]; then
        mount --bind "/etc/$name" "$root/etc/$name"
    fi
done

cd "$root"
pivot_root . host || die "pivot_root into $root failed"

# Same working directory if the host's one is visible at its own path, else its /host view.
if [[ $cwd == / ]] || { [[ -d $cwd ]] && [[ $cwd -ef /host$cwd ]]; }; then
    cd "$cwd"
else
    cd "/host$cwd" 2>/dev/null || cd /
fi

# The host's GPU programs for --nv/--rocm (links installed by install.sh); apptainer does not
# pass PATH on into containers.
PATH=@HOST_TOOLS@:$PATH
exec /usr/bin/apptainer "$@"
