#!/usr/bin/env bash
# Set up gflow in ./.venv and run the example protein design flow on the embedded defaults
# (local threads, SQLite state and artifacts under $GFLOW_HOME, default ~/.gflow).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
.venv/bin/gflow run examples/protein_design.py:design "$@"
.venv/bin/gflow runs ls --limit 3
