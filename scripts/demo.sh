#!/usr/bin/env bash
# The main job: start a server with the embedded defaults (CPU when there is no GPU), wait until it
# is healthy, run the demo client against it, then stop the server gracefully.
set -euo pipefail
EXTRAS=demo source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
PORT="${RNNSIM_DEMO_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
ADDRESS="127.0.0.1:$PORT"
"$PY" -m server --address "$ADDRESS" --metrics-port 0 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  "$PY" -m client health "$ADDRESS" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "the server did not start"; exit 1; }
  sleep 0.5
done
"$PY" examples/demo.py --address "$ADDRESS" "$@"
