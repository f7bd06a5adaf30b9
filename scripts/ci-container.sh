#!/usr/bin/env bash
# CI's container stage (as root): install Apptainer, build the CPU image or reuse it from the
# cache, and print its path, the only thing on stdout. The tests in tests/test_container.py
# take the image from $INAT_TEST_IMAGE:
#
#   INAT_TEST_IMAGE=$(bash scripts/ci-container.sh)
#   export INAT_TEST_IMAGE
#
# (Two lines: `export X=$(cmd)` would hide a failure of cmd from `set -e`.)
#
# Images are cached in $INAT_IMAGE_CACHE (default /var/cache/inat-jobs), which should persist
# between CI runs: with an unchanged pyproject.toml only the thin project stage is built after
# a code change (containers/build.sh); with no change at all, nothing. Timings go to stderr;
# a stage over its budget ($INAT_CI_CONTAINER_BUDGET_S, default 900 s) is reported, not killed,
# so that a cold cache still gets filled.
#
# The build runs with a made-up WANDB_API_KEY in its environment: tests/test_container.py
# checks that the value ends up nowhere in the image (a host's key must not be built in).
set -euo pipefail
cd "$(dirname "$0")/.."

t0=${EPOCHREALTIME/,/.}
since() { awk -v a="$1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "ci-container: $*" >&2; }
budget=${INAT_CI_CONTAINER_BUDGET_S:-900}
# Keep in step with BUILD_CANARY in tests/test_container.py.
canary=inat-build-canary-3f9d2c71

t=${EPOCHREALTIME/,/.}
bash scripts/apptainer/install.sh >&2
install_s=$(since "$t")
log "apptainer: $(apptainer --version) ($install_s s)"

t=${EPOCHREALTIME/,/.}
image=$(WANDB_API_KEY=$canary containers/build.sh --cpu)
build_s=$(since "$t")

total=$(since "$t0")
log "image $image"
log "timings: apptainer install ${install_s} s, image ${build_s} s (build.sh's lines above say which stages were built), total ${total} s"
if awk -v t="$total" -v b="$budget" 'BEGIN { exit !(t > b) }'; then
    log "warning: the container stage took ${total} s, over its budget of ${budget} s (a cold dependencies build?)"
fi
echo "$image"
