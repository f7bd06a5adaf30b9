#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for the dashboard's browser test
# (tests/jobs/test_dashboard_cli.py). Run as root on Debian; prints the browser's path.
#
# Idempotent: when chromium is already on PATH it only prints the path (well under 1 s).
set -euo pipefail

log() { echo "chromium/install.sh: $*" >&2; }

if ! command -v chromium >/dev/null; then
    [[ $EUID -eq 0 ]] || { log "error: chromium is not installed; run as root to install it"; exit 1; }
    command -v apt-get >/dev/null || { log "error: no apt-get: install Chromium by hand"; exit 1; }
    log "installing chromium ..."
    export DEBIAN_FRONTEND=noninteractive
    # Only the browser: its recommended extras (fonts for every script, drivers) are not needed headless.
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
command -v chromium
