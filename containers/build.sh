#!/usr/bin/env bash
# Build the inat-jobs Apptainer image, or reuse the one built before from the same sources.
#
#   containers/build.sh [--cpu|--gpu] [--base NAME|FILE] [--out PATH] [--force] [--force-deps]
#                       [--deps-only] [--skip-test]
#
#   --cpu         (default) CPU TensorFlow from pip, on --base debootstrap
#   --gpu         the GPU image: TensorFlow's CUDA build, whose CUDA libraries come as wheels
#   --base NAME   the dependencies image's definition, containers/deps-NAME.def (or a file;
#                 default debootstrap, for --cpu and --gpu alike):
#                   debootstrap  Debian bookworm from the host's Debian mirror, TensorFlow from
#                                pip (--cpu: tensorflow-cpu; --gpu: the CUDA wheels). No Docker Hub.
#                   docker       the tensorflow/tensorflow GPU image, from Docker Hub
#   --out PATH    also put the image at PATH (a hard link to the cached image where possible)
#   --force       rebuild the project stage even when the cache has it
#   --force-deps  rebuild both stages
#   --deps-only   build (or find) the dependencies image only, and print its path
#   --skip-test   do not run the image's %test (containers/selftest.sh)
#
# Two stages, each cached as a file in $INAT_IMAGE_CACHE:
#   deps-<base>-<extra>-<hash>.sif  containers/deps-<base>.def: the OS, Python and every pip
#                                   dependency of pyproject.toml with the extra. Its hash covers
#                                   that definition, the extra, pyproject.toml and
#                                   containers/install-inat.sh, nothing else.
#   inat-<base>-<extra>-<hash>.sif  containers/inat.def (Bootstrap: localimage) from it: the
#                                   project, installed with no dependencies and no network. Its
#                                   hash covers the dependencies' hash and the files that go into
#                                   the image (pyproject.toml, README.md, LICENSE, inat/, jobs/,
#                                   containers/ but its *.md; tracked or untracked, not
#                                   git-ignored).
# A stage whose file exists is not built; with a cached final image, nothing is. A code change
# rebuilds only the project stage. The image path is the only thing printed on stdout
# (IMAGE=$(containers/build.sh --cpu)); progress, times and size go to stderr.
#
# Environment:
#   INAT_IMAGE_CACHE    image cache directory (default /var/cache/inat-jobs)
#   INAT_IMAGE_KEEP     images kept per stage, base and extra; older ones are removed (3)
#   INAT_DEBIAN_MIRROR  Debian mirror for deps-debootstrap.def (default: the host's apt mirror)
#   INAT_BUILD_CA       CA bundle pip trusts while building the dependencies (default:
#                       $PIP_CERT, else the host's system bundle); bound for the build only,
#                       not in the image
#   INAT_PIP_CONF       a pip.conf for that build (e.g. a local index on an air-gapped host)
#   INAT_BUILD_FLAGS    apptainer build flags (default --fakeroot)
#   INAT_SQUASHFS_ARGS  mksquashfs arguments for both stages (default "-comp gzip
#                       -Xcompression-level 1": readable by every apptainer and squashfs, and
#                       ~8x faster to write than mksquashfs' default gzip level 9, for 13% more
#                       size; "" for apptainer's default)
#   APPTAINER           the apptainer command (default apptainer)
set -euo pipefail

t0=${EPOCHREALTIME/,/.}
since() { awk -v a="$1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit "${1:-0}"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
extra=cpu base= out= force=0 force_deps=0 deps_only=0 skip_test=0
while (($#)); do
    case $1 in
    --cpu) extra=cpu ;;
    --gpu) extra=gpu ;;
    --base) base=${2:?--base needs a name or a file}; shift ;;
    --out) out=${2:?--out needs a path}; shift ;;
    --force) force=1 ;;
    --force-deps) force=1 force_deps=1 ;;
    --deps-only) deps_only=1 ;;
    --skip-test) skip_test=1 ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage 2 ;;
    esac
    shift
done
if [[ -z $base ]]; then
    base=debootstrap  # no Docker Hub needed: the GPU image's CUDA comes from pip (`.[gpu]`)
fi
if [[ $base == */* || $base == *.def ]]; then deps_def=$base; else deps_def=$here/deps-$base.def; fi
[[ -f $deps_def ]] || die "no definition $deps_def (--base: debootstrap, docker or a .def file)"
deps_def=$(cd "$(dirname "$deps_def")" && pwd)/$(basename "$deps_def")
base=$(basename "$deps_def" .def)
base=${base#deps-}
project_def=$here/inat.def
apptainer=${APPTAINER:-apptainer}
command -v "$apptainer" >/dev/null || die "no '$apptainer' command (on Debian without a package: scripts/apptainer/install.sh)"
cache=${INAT_IMAGE_CACHE:-/var/cache/inat-jobs}
keep=${INAT_IMAGE_KEEP:-3}
read -r -a build_flags <<<"${INAT_BUILD_FLAGS---fakeroot}"
squashfs_args=${INAT_SQUASHFS_ARGS--comp gzip -Xcompression-level 1}
[[ -z $squashfs_args ]] || build_flags+=(--mksquashfs-args "$squashfs_args")

# ---- the build context: the project files that belong in the image ----
work=$(mktemp -d "${TMPDIR:-/tmp}/inat-build.XXXXXX")
build_pid= partial=
trap 'rm -rf --one-file-system "$work"; [[ -z $partial ]] || rm -f "$partial"' EXIT
# apptainer's build directory goes below $work too, so an interrupted build leaves nothing.
[[ -n ${APPTAINER_TMPDIR:-} ]] || { export APPTAINER_TMPDIR=$work/tmp; mkdir -p "$APPTAINER_TMPDIR"; }
# Stopped (CI cancel, timeout): stop the build too, so that no half-built image is left.
trap '[[ -z $build_pid ]] || kill -TERM "$build_pid" 2>/dev/null; wait; exit 143' INT TERM
ctx=$work/inat-jobs
mkdir -p "$ctx"
members=(pyproject.toml README.md LICENSE inat jobs containers)
list_files() { # NUL-separated paths relative to the repository
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$repo" ls-files -z --cached --others --exclude-standard -- "${members[@]}" |
            while IFS= read -r -d '' f; do [[ -f $repo/$f ]] && printf '%s\0' "$f"; done
    else
        (cd "$repo" && find "${members[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
            ! -path '*.egg-info/*' -print0 2>/dev/null || true)
    fi
}
# containers/*.md is documentation: editing it must not cause a rebuild.
list_files | sort -zu | grep -z -v -E '^containers/.*\.md$' | tar -C "$repo" --null -T - -cf - | tar -C "$ctx" -xf -
[[ -f $ctx/pyproject.toml ]] || die "no pyproject.toml in $repo"

# ---- the two stages' cache keys ----
# The dependencies: only what decides which packages get installed.
deps_hash=$(
    cd "$ctx"
    echo "stage=deps definition=$(basename "$deps_def") extra=$extra"
    sha256sum "$deps_def" pyproject.toml containers/install-inat.sh
)
deps_hash=$(sha256sum <<<"$deps_hash" | cut -c1-16)
# The project: the dependencies and every file that goes in.
hash=$(
    cd "$ctx"
    echo "stage=project deps=$deps_hash"
    sha256sum "$project_def"
    find . -type f -printf '%P %m\n' | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
)
hash=$(sha256sum <<<"$hash" | cut -c1-16)
deps_image=$cache/deps-$base-$extra-$deps_hash.sif
image=$cache/inat-$base-$extra-$hash.sif
version=$(sed -n -E 's/^version *= *"([^"]+)".*/\1/p' "$ctx/pyproject.toml" | head -n 1)

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
    log "waiting for another build using $cache"
    flock 9
fi

# build STAGE IMAGE DEFINITION ARGS...: apptainer build into IMAGE, atomically.
build() {
    local stage=$1 target=$2 def=$3 t1
    shift 3
    log "$stage stage: building $target from $(basename "$def") [$extra]"
    t1=${EPOCHREALTIME/,/.}
    partial=$target.partial
    rm -f "$partial"
    "$apptainer" build "${build_flags[@]}" --notest --force "$@" "$partial" "$def" >&2 &
    build_pid=$!
    wait "$build_pid" || die "$stage stage: apptainer build failed after $(since "$t1") s"
    build_pid=
    mv -f "$partial" "$target"
    partial=
    log "$stage stage: built in $(since "$t1") s ($(du -m "$target" | cut -f1) MB)"
}

# prune NAME KEEP: remove all but the KEEP newest $cache/NAME-*.sif, never $image or $deps_image.
prune() {
    local n=0 old
    while read -r old; do
        [[ $old == "$image" || $old == "$deps_image" ]] && continue
        if ((++n >= $2)); then
            rm -f "$old" "$old.tested"
            log "removed old image $old"
        fi
    done < <(ls -1t "$cache/$1"-*.sif 2>/dev/null || true)
}

# ---- stage 1: the dependencies (only when the final image is not cached) ----
if [[ $deps_only == 1 || $force == 1 || ! -f $image ]]; then
    if [[ -f $deps_image && $force_deps == 0 ]]; then
        log "deps stage: cached ($deps_image)"
    else
        args=(--build-arg "CONTEXT=$ctx" --build-arg "EXTRA=$extra" --build-arg "DEPS_HASH=$deps_hash")
        if grep -q '{{ *MIRROR *}}' "$deps_def"; then
            mirror=${INAT_DEBIAN_MIRROR:-$("$repo/scripts/debian-mirror.sh" || true)}
            [[ -n $mirror ]] || die "no Debian mirror found in /etc/apt: set INAT_DEBIAN_MIRROR"
            args+=(--build-arg "MIRROR=$mirror")
        fi
        # Files for this build only, bound at /mnt during %post (containers/install-inat.sh).
        mkdir -p "$work/buildfiles"
        ca=${INAT_BUILD_CA:-${PIP_CERT:-}}
        [[ -n $ca ]] || for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
            [[ -s $f ]] && { ca=$f; break; }
        done
        [[ -z $ca ]] || cp "$ca" "$work/buildfiles/ca.crt"
        [[ -z ${INAT_PIP_CONF:-} ]] || cp "$INAT_PIP_CONF" "$work/buildfiles/pip.conf"
        args+=(--bind "$work/buildfiles:/mnt")
        build deps "$deps_image" "$deps_def" "${args[@]}"
    fi
    prune "deps-$base-$extra" "$keep"
    if [[ $deps_only == 1 ]]; then
        log "build.sh took $(since "$t0") s"
        echo "$deps_image"
        exit 0
    fi
fi

# ---- stage 2: the project ----
if [[ -f $image && $force == 0 ]]; then
    log "project stage: cached image for sources $hash: no build"
else
    build project "$image" "$project_def" --build-arg "DEPS=$deps_image" --build-arg "CONTEXT=$ctx" \
        --build-arg "EXTRA=$extra" --build-arg "VERSION=${version:-unknown}" --build-arg "SOURCE_HASH=$hash"
    rm -f "$image.tested"
fi

# ---- self-test (once per image) ----
if [[ $skip_test == 0 && ! -f $image.tested ]]; then
    t1=${EPOCHREALTIME/,/.}
    "$apptainer" test "$image" >&2 || die "self-test failed for $image (after $(since "$t1") s)"
    touch "$image.tested"
    log "self-test passed in $(since "$t1") s"
fi
prune "inat-$base-$extra" "$keep"

if [[ -n $out ]]; then
    mkdir -p "$(dirname "$out")"
    if ! [[ $out -ef $image ]]; then
        ln -f "$image" "$out" 2>/dev/null || cp "$image" "$out"
    fi
    image=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
fi
log "image $image: $(du -m "$image" | cut -f1) MB; build.sh took $(since "$t0") s"
echo "$image"
