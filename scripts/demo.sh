#!/usr/bin/env bash
# The main job: build a recurrent spiking network with rnnbuilder and run the demo on it.
set -euo pipefail
EXTRAS=demo source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
"$PY" examples/demo.py "$@"
