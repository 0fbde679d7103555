#!/usr/bin/env bash
# make dist: a wheel and an sdist of every distribution into dist/ (or $1), then
# `twine check --strict` on them. Admins install nodes and clients from that wheelhouse:
#   pip install --find-links dist collective-agent-nrpe
# Usage: scripts/dist.sh [OUTDIR [PROJECT_DIR ...]]   (default: dist, core and plugins/*)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-dist}
shift || true
if [ $# -eq 0 ]; then set -- core plugins/*; fi
mkdir -p "$OUT"
for project in "$@"; do
    [ -f "$project/pyproject.toml" ] || { echo "dist: $project has no pyproject.toml" >&2; exit 1; }
    "$PY" -m build --sdist --wheel --outdir "$OUT" "$project" >/dev/null
    echo "dist: built $project"
done
"$PY" -m twine check --strict "$OUT"/*.whl "$OUT"/*.tar.gz
