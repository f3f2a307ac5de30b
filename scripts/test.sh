#!/usr/bin/env bash
# The test command: lint, then the whole test suite (docstring examples included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$PY" -m pytest "$@"
