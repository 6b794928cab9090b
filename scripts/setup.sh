#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install difflinalg with the
# requested extras.  Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
#
# torch is a normal `torch>=2.1` dependency.  On machines that keep a CPU build of torch
# on local disk (pip's find-links, e.g. /opt/wheels), that file is installed first so a
# fresh venv does not download a multi-GB CUDA build; elsewhere pip resolves torch as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
venv="${VENV:-.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  pyver=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  wheel=""
  for dir in ${TORCH_WHEEL_DIRS:-/opt/wheels}; do
    cand=$(ls "$dir"/torch-*+cpu-"$pyver"-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$cand" ]; then wheel="$cand"; fi
  done
  if [ -n "$wheel" ]; then
    echo "setup: installing local CPU torch wheel $(basename "$wheel")"
    "${pip[@]}" install "$wheel"
  fi
fi
"${pip[@]}" install -e ".[$extras]"
