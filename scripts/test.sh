#!/usr/bin/env bash
# The test command: lint the code and the contract, then the whole test suite (docstring examples too).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/hadolint" Dockerfile tests/container/python.Containerfile
bash scripts/lint_proto.sh
"$PY" -m pytest "$@"
