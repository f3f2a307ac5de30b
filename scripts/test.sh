#!/usr/bin/env bash
# The test command: lint the code and the contract, build the docs (any warning fails), then the whole test suite
# (docstring examples and the docs' examples too).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/hadolint" Dockerfile tests/container/python.Containerfile
bash scripts/lint_proto.sh
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$SITE"
"$PY" -m pytest "$@"
