#!/usr/bin/env bash
# Idempotent setup of the Prefect 3 baseline venv at benchmarks/.venv-prefect.
# Usage: bash benchmarks/prefect/setup.sh   (from anywhere)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(cd "$HERE/.." && pwd)/.venv-prefect"
REQ="$HERE/requirements.txt"
MARKER="$VENV/.bench-prefect-installed"
PYTHON="${PYTHON:-python3}"

# The marker holds the exact requirement pins that were installed; any change
# to requirements.txt (or a missing/broken venv) triggers a reinstall.
WANT="$(grep -v '^[[:space:]]*#' "$REQ" | sed '/^[[:space:]]*$/d' | tr '\n' ' ')"

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]] \
   && "$VENV/bin/python" -c "import prefect, prefect_dask, psutil" >/dev/null 2>&1; then
    echo "prefect venv already set up: $VENV ($WANT)" >&2
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating venv $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

echo "installing: $WANT" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" \
    2> >(grep -v "^WARNING: Location 'file://" >&2)
"$VENV/bin/python" -m pip check >&2
"$VENV/bin/python" -c "import prefect, prefect_dask, psutil; print('prefect', prefect.__version__)" >&2

printf '%s' "$WANT" > "$MARKER"
echo "prefect venv ready: $VENV" >&2
