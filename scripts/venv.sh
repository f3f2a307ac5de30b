# Sourced by the Quickstart scripts: make ./.venv with the project installed, once.
# Torch is pinned first where that exact CPU wheel is at hand; a bare range would pull a CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
EXTRAS="${EXTRAS:-dev}"
stamp="$VENV/.installed-$EXTRAS-$(cksum < "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4"
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]"
  # Norse checks NIR import and export; its torchvision requirement would swap torch (pyproject's test extra).
  case "$EXTRAS" in dev|test) "$PY" -m pip install -q --no-deps "norse==1.1.0" ;; esac
  touch "$stamp"
fi
