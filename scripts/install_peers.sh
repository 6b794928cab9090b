#!/usr/bin/env bash
# Best-effort install of the peer libraries the benchmarks compare against.
# torch-householder compiles a C++ extension at install time; it needs torch in the venv
# already, hence --no-build-isolation.  A failure here only removes that peer's columns
# from the benchmark report; it never fails the benchmark run.
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
# Composer (mosaicml) for its factorize module only: --no-deps, so that it never pulls a
# second torch; the benchmark loads composer/algorithms/factorize/factorize_core.py by path
if ! "$venv/bin/python" -c "import importlib.util as u; import sys; sys.exit(u.find_spec('composer') is None)" >/dev/null 2>&1; then
  echo "peers: installing mosaicml (Composer) without dependencies"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps "mosaicml>=0.20" \
      >/tmp/difflinalg-peers-composer.log 2>&1 \
    || echo "peers: mosaicml could not be installed; the factorize benchmark uses a re-implementation"
fi
# geotorch (pure Python) for the nn_orthogonal benchmark; --no-deps for the same reason
if ! "$venv/bin/python" -c "import geotorch" >/dev/null 2>&1; then
  echo "peers: installing geotorch without dependencies"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps "geotorch>=0.3" \
      >/tmp/difflinalg-peers-geotorch.log 2>&1 \
    || echo "peers: geotorch could not be installed; the nn_orthogonal benchmark runs without it"
fi
if "$venv/bin/python" -c "import torch_householder" >/dev/null 2>&1; then
  exit 0
fi
echo "peers: installing torch-householder (compiles C++; may take a minute)"
if ! "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-build-isolation \
    "torch-householder>=1.0.1" >/tmp/difflinalg-peers.log 2>&1; then
  echo "peers: torch-householder could not be installed (see /tmp/difflinalg-peers.log);" \
       "the benchmark runs without it"
fi
exit 0
