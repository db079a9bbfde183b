#!/usr/bin/env bash
# Set up gflow in ./.venv and run the example protein design flow on the embedded defaults
# (local threads, SQLite state and artifacts under $GFLOW_HOME, default ~/.gflow).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e .; } >"$log" 2>&1; then
  cat "$log" >&2; echo "quickstart: installing gflow failed (log above)" >&2; exit 1
fi
rm -f "$log"
.venv/bin/gflow run examples/protein_design.py:design --output short "$@"
.venv/bin/gflow runs ls --limit 3
echo "gflow is installed in $(pwd)/.venv: run 'source .venv/bin/activate' to put it on PATH (or call .venv/bin/gflow)."
