#!/usr/bin/env bash
# Set up everything the test suite needs (system packages, ./.venv with the test extras) and run it.
# This is the command the README gives and the one .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System services the integration tests start on 127.0.0.1 (installed only where missing).
need_apt=()
for pkg in $(cat scripts/apt-packages.txt 2>/dev/null | grep -v '^#' || true); do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages (install them as root): ${need_apt[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# chem/structure/ml (RDKit, gemmi, CPU torch 2.13.0, transformers): ~30 s to install from wheels, and the
# object and example tests that use them take seconds (tiny random ESM-2 models, no weights downloaded)
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e ".[test,dask,server,redis,mongo,docker,k8s,aws,gcp,chem,structure,ml]"; } \
     >"$log" 2>&1; then
  cat "$log" >&2; echo "test.sh: installing the test dependencies failed (log above)" >&2; exit 1
fi
rm -f "$log"
.venv/bin/mypy                                   # types: all of gflow/ (configuration in pyproject.toml)
.venv/bin/ruff check gflow tests benchmarks examples
exec .venv/bin/python -m pytest "$@"
