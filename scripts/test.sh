#!/usr/bin/env bash
# Every quality gate, in one command: lint, format, types, import boundaries, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
[ -x "$bin/python" ] || { echo "run scripts/setup.sh first" >&2; exit 2; }
echo "== ruff check";        "$bin/ruff" check .
echo "== ruff format";       "$bin/ruff" format --check .
echo "== mypy engine/";      "$bin/mypy"
echo "== import contracts";  "$bin/lint-imports"
echo "== pytest";            "$bin/python" -m pytest -q "$@"
