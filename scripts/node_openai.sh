#!/usr/bin/env bash
# The official `openai` npm package (the JS client, one of issue 15's two judges of `smelt
# serve`'s wire format), installed into .cache/node (git-ignored) with the machine's npm.
# Nothing is installed outside the checkout.
#
#   scripts/node_openai.sh            # install the pinned version if missing; print its folder
#   scripts/node_openai.sh 6.48.0     # ... another version
#
# It prints the package's folder (.cache/node/node_modules/openai), which
# scripts/serve_openai_check.mjs reads as $SMELT_OPENAI_JS (that folder is also its default).
# The pin is the last 6.x: 7.x declares Node >= 22 and this machine's Node is 20 (6.x supports
# 20 and later). Exit 1, saying why, when node or npm is missing or the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-6.49.0}
PREFIX=.cache/node
PKG=$PREFIX/node_modules/openai
command -v node >/dev/null || { echo "error: node_openai.sh: node not found (Node 20 or later)" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: node_openai.sh: npm not found" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "error: node_openai.sh: node $(node --version) is too old (openai $VERSION needs 20 or later)" >&2; exit 1; }
# Tests run in parallel and several may ask at once; two npms writing one node_modules race.
# One node_openai.sh at a time holds the lock.
mkdir -p "$PREFIX"
exec 9>.cache/node.lock
if command -v flock >/dev/null; then flock 9; fi
have=$(node -p "require('./$PKG/package.json').version" 2>/dev/null || true)
if [ "$have" != "$VERSION" ]; then
  if ! npm install --prefix "$PREFIX" --no-audit --no-fund --save-exact --loglevel=error "openai@$VERSION" >&2; then
    echo "error: node_openai.sh: npm install openai@$VERSION failed (offline?)" >&2
    exit 1
  fi
  have=$(node -p "require('./$PKG/package.json').version" 2>/dev/null || true)
  [ "$have" = "$VERSION" ] || { echo "error: node_openai.sh: installed openai is '$have', not $VERSION" >&2; exit 1; }
fi
echo "$PWD/$PKG"
