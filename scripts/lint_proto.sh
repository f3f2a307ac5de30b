#!/usr/bin/env bash
# buf lint (STANDARD rules, see buf.yaml) on proto/. buf comes from the npm package @bufbuild/buf,
# installed into .tools/ on first use. Without npm it is skipped, unless REQUIRE_BUF=1 (CI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUF="$ROOT/.tools/node_modules/.bin/buf"
if [ ! -x "$BUF" ]; then
  if ! command -v npm >/dev/null; then
    echo "buf lint skipped: npm not found (install Node.js to lint the contract)"
    [ "${REQUIRE_BUF:-0}" = 1 ] && exit 1
    exit 0
  fi
  npm install --prefix "$ROOT/.tools" --silent --no-audit --no-fund "@bufbuild/buf@1.61.0" >/dev/null
fi
cd "$ROOT"
"$BUF" lint
echo "buf lint: proto/ is clean"
