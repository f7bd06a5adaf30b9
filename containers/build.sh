#!/usr/bin/env bash
# Build the inat-jobs Apptainer image, or reuse the one built before from the same sources.
#
#   containers/build.sh [--cpu|--gpu] [--def FILE] [--out PATH] [--force] [--skip-test]
#
#   --cpu        (default) containers/inat-debootstrap.def: Debian bookworm from the host's
#                Debian mirror, CPU TensorFlow from pip. Needs no Docker Hub.
#   --gpu        containers/inat.def: the tensorflow/tensorflow GPU image from Docker Hub.
#   --def FILE   another definition, e.g. `--gpu --def containers/inat-debootstrap.def`
#                (CUDA TensorFlow wheels from pip on a Debian base: GPU image without Docker Hub)
#   --out PATH   also put the image at PATH (a hard link to the cached image where possible)
#   --force      rebuild even when the cache holds an image for these sources
#   --skip-test  do not run the image's %test (containers/selftest.sh)
#
# Images are cached as $INAT_IMAGE_CACHE/<definition>-<extra>-<hash>.sif, the hash taken over
# the files that go into the image (pyproject.toml, README.md, inat/, jobs/, containers/
# but its *.md: tracked or untracked, not git-ignored) and the definition and extra. With a cached image
# for the hash, nothing is built. The image path is the only thing printed on stdout
# (IMAGE=$(containers/build.sh --cpu)); progress, times and size go to stderr.
#
# Environment:
#   INAT_IMAGE_CACHE    image cache directory (default /var/cache/inat-jobs)
#   INAT_IMAGE_KEEP     images kept per definition and extra; older ones are removed (3)
#   INAT_DEBIAN_MIRROR  Debian mirror for inat-debootstrap.def (default: the host's apt mirror)
#   INAT_BUILD_CA       CA bundle pip trusts during the build (default: $PIP_CERT, else the
#                       host's system bundle); bound for the build only, not in the image
#   INAT_PIP_CONF       a pip.conf for the build (e.g. a local index on an air-gapped host)
#   INAT_BUILD_FLAGS    apptainer build flags (default --fakeroot)
#   APPTAINER           the apptainer command (default apptainer)
set -euo pipefail

t0=${EPOCHREALTIME/,/.}
since() { awk -v a="$1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit "${1:-0}"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
extra=cpu def= out= force=0 skip_test=0
while (($#)); do
    case $1 in
    --cpu) extra=cpu ;;
    --gpu) extra=gpu ;;
    --def) def=${2:?--def needs a file}; shift ;;
    --out) out=${2:?--out needs a path}; shift ;;
    --force) force=1 ;;
    --skip-test) skip_test=1 ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage 2 ;;
    esac
    shift
done
if [[ -z $def ]]; then
    [[ $extra == gpu ]] && def=$here/inat.def || def=$here/inat-debootstrap.def
fi
[[ -f $def ]] || die "no definition file $def"
def=$(cd "$(dirname "$def")" && pwd)/$(basename "$def")
apptainer=${APPTAINER:-apptainer}
command -v "$apptainer" >/dev/null || die "no '$apptainer' command (on Debian without a package: scripts/apptainer/install.sh)"
cache=${INAT_IMAGE_CACHE:-/var/cache/inat-jobs}
keep=${INAT_IMAGE_KEEP:-3}
read -r -a build_flags <<<"${INAT_BUILD_FLAGS---fakeroot}"

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

hash=$(
    cd "$ctx"
    echo "definition=$(basename "$def") extra=$extra"
    sha256sum "$def"
    find . -type f -printf '%P %m\n' | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
)
hash=$(sha256sum <<<"$hash" | cut -c1-16)
name=$(basename "$def" .def)-$extra
image=$cache/$name-$hash.sif
version=$(sed -n -E 's/^version *= *"([^"]+)".*/\1/p' "$ctx/pyproject.toml" | head -n 1)

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
    log "waiting for another build using $cache"
    flock 9
fi

# ---- build, unless the cache has this image ----
if [[ -f $image && $force == 0 ]]; then
    log "cached image for sources $hash: no build"
else
    args=(--build-arg "CONTEXT=$ctx" --build-arg "EXTRA=$extra" --build-arg "VERSION=${version:-unknown}"
        --build-arg "SOURCE_HASH=$hash")
    if grep -q '{{ *MIRROR *}}' "$def"; then
        mirror=${INAT_DEBIAN_MIRROR:-$("$repo/scripts/debian-mirror.sh" || true)}
        [[ -n $mirror ]] || die "no Debian mirror found in /etc/apt: set INAT_DEBIAN_MIRROR"
        args+=(--build-arg "MIRROR=$mirror")
    fi
    # Files for the build only, bound at /mnt during %post (containers/install-inat.sh).
    mkdir -p "$work/buildfiles"
    ca=${INAT_BUILD_CA:-${PIP_CERT:-}}
    [[ -n $ca ]] || for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [[ -s $f ]] && { ca=$f; break; }
    done
    [[ -z $ca ]] || cp "$ca" "$work/buildfiles/ca.crt"
    [[ -z ${INAT_PIP_CONF:-} ]] || cp "$INAT_PIP_CONF" "$work/buildfiles/pip.conf"
    args+=(--bind "$work/buildfiles:/mnt")

    log "building $image from $(basename "$def") [$extra] (sources $hash)"
    t1=${EPOCHREALTIME/,/.}
    partial=$image.partial
    rm -f "$partial"
    "$apptainer" build "${build_flags[@]}" --notest --force "${args[@]}" "$partial" "$def" >&2 &
    build_pid=$!
    wait "$build_pid" || die "apptainer build failed after $(since "$t1") s"
    build_pid=
    mv -f "$partial" "$image"
    partial=
    rm -f "$image.tested"
    log "built in $(since "$t1") s"
fi

# ---- self-test (once per image) ----
if [[ $skip_test == 0 && ! -f $image.tested ]]; then
    t1=${EPOCHREALTIME/,/.}
    "$apptainer" test "$image" >&2 || die "self-test failed for $image (after $(since "$t1") s)"
    touch "$image.tested"
    log "self-test passed in $(since "$t1") s"
fi

# ---- older images of this definition and extra ----
n=1
while read -r old; do
    [[ $old == "$image" ]] && continue
    if ((++n > keep)); then
        rm -f "$old" "$old.tested"
        log "removed old image $old"
    fi
done < <(ls -1t "$cache/$name"-*.sif 2>/dev/null || true)

if [[ -n $out ]]; then
    mkdir -p "$(dirname "$out")"
    if ! [[ $out -ef $image ]]; then
        ln -f "$image" "$out" 2>/dev/null || cp "$image" "$out"
    fi
    image=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
fi
log "image $image: $(du -m "$image" | cut -f1) MB; build.sh took $(since "$t0") s"
echo "$image"
