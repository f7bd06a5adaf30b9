#!/usr/bin/env bash
# Create ./.venv with inat-jobs and its dependencies (CPU TensorFlow unless INAT_TF_EXTRA=gpu).
# Idempotent: skips pip when pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${INAT_TF_EXTRA:-cpu}"
venv="${INAT_VENV:-.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.inat-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$extra"

if [[ ! -x "$venv/bin/python" ]]; then
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    # Debian/Ubuntu split venv out of python3; install it when we can, say how when we can't.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "setup-venv: $python has no venv module; install it with: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  "$python" -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e ".[$extra,test]"
  echo "$want" > "$stamp"
fi
echo "venv ready: $venv ($("$venv/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)' 2>/dev/null))"
