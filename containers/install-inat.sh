#!/bin/bash
# Install inat-jobs into a container image. The %post section of every definition in
# containers/ runs this one script, after %files has copied the project to /opt/inat-jobs;
# only the base image differs between the definitions.
#
#   INAT_EXTRA  the project's extra that brings TensorFlow: cpu (default) or gpu
#   INAT_VENV   the virtual environment to install into (default /opt/venv; on PATH at run
#               time through containers/environment.sh)
#
# A TensorFlow that the base image already has (the tensorflow/tensorflow GPU images ship
# one built for their CUDA) is kept: the project is then installed without the extra.
# containers/build.sh binds build-time-only files at /mnt (never part of the image): ca.crt,
# a CA bundle for pip, and pip.conf, a pip configuration (e.g. a local index).
set -euo pipefail

src=/opt/inat-jobs
extra=${INAT_EXTRA:-cpu}
venv=${INAT_VENV:-/opt/venv}
buildfiles=/mnt
t0=$(date +%s)
log() { echo "install-inat: $*"; }

[[ -f $src/pyproject.toml ]] || { log "no project at $src (the definition's %files copies it there)"; exit 1; }

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export PIP_PROGRESS_BAR=off
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-120}
if [[ -s $buildfiles/ca.crt ]]; then
    export PIP_CERT=$buildfiles/ca.crt
    log "pip trusts the build host's CA bundle"
fi
if [[ -s $buildfiles/pip.conf ]]; then
    export PIP_CONFIG_FILE=$buildfiles/pip.conf
    log "pip uses the build host's pip.conf"
fi

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
py=$venv/bin/python
"$py" -m pip --version

if [[ -n $base_tf ]]; then
    log "keeping the base image's TensorFlow $base_tf; installing the project without [$extra]"
    echo "tensorflow==$base_tf" >/tmp/inat-constraints.txt
    "$py" -m pip install -c /tmp/inat-constraints.txt "$src"
    rm -f /tmp/inat-constraints.txt
else
    log "installing the project with [$extra]"
    "$py" -m pip install "$src[$extra]"
fi
# pip builds in the source tree; leave only the sources there.
rm -rf "$src/build" "$src"/*.egg-info

# Exactly one TensorFlow distribution, importable (tensorflow and tensorflow-cpu both
# provide the module: having both breaks either one).
"$py" - <<'EOF'
import importlib.metadata as md
import re
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() for d in md.distributions()}
names = sorted(names & {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly"})
assert len(names) == 1, f"expected one TensorFlow distribution, found {names}"
import tensorflow as tf, keras
print(f"install-inat: {names[0]} {tf.__version__}, keras {keras.__version__}")
EOF

# Mount point for scratch storage (see environment.sh); help text for `apptainer run-help`.
mkdir -p /scratch
install -m 0644 "$src/containers/help.txt" /.singularity.d/runscript.help

log "done in $(($(date +%s) - t0)) s"
