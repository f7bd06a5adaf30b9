#!/bin/bash
# Install inat-jobs into a container image, in two stages that share this one script:
#
#   install-inat.sh deps SRC     the Python environment: a venv with every dependency of SRC's
#                                pyproject.toml (with the TensorFlow extra, and `sync`) and its build
#                                requirements, but not the project. SRC needs only pyproject.toml.
#                                %post of containers/deps-*.def (the dependencies image).
#   install-inat.sh project SRC  the project itself into that venv, from SRC (the whole
#                                project): no dependencies, no build isolation, no package
#                                index. %post of containers/inat.def (Bootstrap: localimage from
#                                the dependencies image).
#
# A code change thus rebuilds only the project stage; the dependencies image is rebuilt when
# pyproject.toml, this script, its definition or the extra change (containers/build.sh).
#
#   INAT_EXTRA  the project's extra that brings TensorFlow: cpu (default) or gpu
#   INAT_VENV   the virtual environment (default /opt/venv; on PATH at run time through
#               containers/environment.sh)
#
# A TensorFlow that the base image already has (the tensorflow/tensorflow GPU images ship
# one built for their CUDA) is kept: the dependencies are then installed without the extra.
# containers/build.sh binds build-time-only files at /mnt for the deps stage (never part of
# the image): ca.crt, a CA bundle for pip, and pip.conf, a pip configuration (e.g. a local
# index). The project stage needs no network.
set -euo pipefail

mode=${1:-}
src=${2:-}
extra=${INAT_EXTRA:-cpu}
venv=${INAT_VENV:-/opt/venv}
py=$venv/bin/python
buildfiles=/mnt
t0=$(date +%s)
log() { echo "install-inat: $*"; }
die() { log "error: $*"; exit 1; }

[[ $mode == deps || $mode == project ]] || die "usage: install-inat.sh deps|project SRC"
[[ -f $src/pyproject.toml ]] || die "no pyproject.toml in '$src' (the definition's %files copies it there)"

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export PIP_PROGRESS_BAR=off
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-120}

deps() {
    if [[ -s $buildfiles/ca.crt ]]; then
        export PIP_CERT=$buildfiles/ca.crt
        log "pip trusts the build host's CA bundle"
    fi
    if [[ -s $buildfiles/pip.conf ]]; then
        export PIP_CONFIG_FILE=$buildfiles/pip.conf
        log "pip uses the build host's pip.conf"
    fi

    local base_tf
    base_tf=$(python3 - <<'EOF' 2>/dev/null || true
import importlib.metadata as md
for name in ("tensorflow", "tensorflow-cpu"):
    try:
        print(md.version(name)); break
    except md.PackageNotFoundError:
        pass
EOF
    )

    # The venv sees the base image's packages (its TensorFlow, CUDA wheels, numpy) and takes
    # everything else from pip; with no ensurepip in the base, the base's own pip serves it.
    if ! python3 -m venv --system-site-packages "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        python3 -m venv --system-site-packages --without-pip "$venv"
    fi
    "$py" -m pip --version

    # The requirements, read from pyproject.toml: [project] dependencies, the extra's (unless
    # the base has TensorFlow), the database drivers' ([mysql], [postgres]) and [build-system]
    # requires, so that the project stage can build the project offline.
    local with_extra=$extra tmp=/tmp/inat-deps
    mkdir -p "$tmp"
    if [[ -n $base_tf ]]; then
        log "keeping the base image's TensorFlow $base_tf; dependencies without [$extra]"
        echo "tensorflow==$base_tf" >"$tmp/constraints.txt"
        with_extra=
    else
        log "dependencies with [$extra]"
        : >"$tmp/constraints.txt"
    fi
    # Python < 3.11 has no tomllib: tomli, only for reading the file, outside the venv.
    if ! "$py" -c 'import tomllib' 2>/dev/null && ! "$py" -c 'import tomli' 2>/dev/null; then
        "$py" -m pip install --quiet --target "$tmp/tomli" tomli
    fi
    PYTHONPATH=$tmp/tomli "$py" - "$src/pyproject.toml" "$with_extra" >"$tmp/requirements.txt" <<'EOF'
import sys
try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    meta = tomllib.load(f)
extra = sys.argv[2]
reqs = list(meta["project"].get("dependencies", []))
extras = meta["project"].get("optional-dependencies", {})
# The database drivers too, so that agents in the image can use --storage mysql:// or postgresql://;
# and sync, so that jobs in the image signal wandb-osh after each epoch (inat/wandb_sync.py).
for name in filter(None, [extra, "mysql", "postgres", "sync"]):
    if name not in extras:
        sys.exit(f"install-inat: pyproject.toml has no extra [{name}] (extras: {', '.join(extras)})")
    reqs += extras[name]
reqs += meta.get("build-system", {}).get("requires", [])
print("\n".join(reqs))
EOF
    sed 's/^/  /' "$tmp/requirements.txt"
    "$py" -m pip install -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"
    rm -rf "$tmp"

    # Exactly one TensorFlow distribution, importable (tensorflow and tensorflow-cpu both
    # provide the module: having both breaks either one).
    TF_CPP_MIN_LOG_LEVEL=2 "$py" - <<'EOF'
import importlib.metadata as md
import re
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() for d in md.distributions()}
names = sorted(names & {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly"})
assert len(names) == 1, f"expected one TensorFlow distribution, found {names}"
import tensorflow as tf, keras
print(f"install-inat: {names[0]} {tf.__version__}, keras {keras.__version__}")
EOF
}

project() {
    [[ -x $py ]] || die "no venv at $venv: build from the dependencies image (containers/build.sh)"
    # Everything the project needs is in the venv already: a dependency missing here means the
    # dependencies image is not the one for this pyproject.toml, which the check below reports.
    "$py" -m pip install --no-deps --no-build-isolation --no-index "$src"
    # pip builds in the source tree; leave only the sources there.
    rm -rf "$src/build" "$src"/*.egg-info

    "$py" - <<'EOF'
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ModuleNotFoundError:
    from pip._vendor.packaging.requirements import Requirement
missing = []
for line in md.requires("inat-jobs") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra's: TensorFlow comes from the extra or the base (checked in deps)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (found {version})")
if missing:
    raise SystemExit("install-inat: the dependencies image lacks " + "; ".join(missing))
print(f"install-inat: inat-jobs {md.version('inat-jobs')}, dependencies satisfied")
EOF

    # Mount point for scratch storage (see environment.sh); help text for `apptainer run-help`.
    mkdir -p /scratch
    install -m 0644 "$src/containers/help.txt" /.singularity.d/runscript.help
}

"$mode"
log "$mode stage done in $(($(date +%s) - t0)) s"
