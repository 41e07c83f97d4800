#!/usr/bin/env bash
# Rebuilds better-sqlite3's bundled SQLite with SQLITE_USE_URI=1, so that the lower Nix DB can
# be opened as `file:...?mode=ro&immutable=1`: read-only, no locks, no -wal/-shm files created
# beside it (a plain read-only open of a WAL-mode DB creates both). better-sqlite3 ships with
# SQLITE_USE_URI=0 (deps/defines.gypi). Idempotent: rebuilds only when the define is not yet set
# or the addon is missing. Why: native-notes/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$ROOT/node_modules/better-sqlite3"
DEFINES="$PKG/deps/defines.gypi"
ADDON="$PKG/build/Release/better_sqlite3.node"

die() { echo "build-sqlite: error: $*" >&2; exit 1; }
[ -f "$DEFINES" ] || die "$PKG is missing: run 'npm ci' first"

probe() {
  node -e '
    const D = require(process.argv[1]);
    const o = new D(":memory:").pragma("compile_options").map((r) => r.compile_options);
    process.exit(o.includes("USE_URI") ? 0 : 1);' "$PKG" 2>/dev/null
}

if [ -f "$ADDON" ] && grep -q "SQLITE_USE_URI=1" "$DEFINES" && probe; then
  echo "build-sqlite: better-sqlite3 already has SQLITE_USE_URI=1"
  exit 0
fi

sed -i 's/SQLITE_USE_URI=0/SQLITE_USE_URI=1/' "$DEFINES"
grep -q "SQLITE_USE_URI=1" "$DEFINES" || die "could not set SQLITE_USE_URI=1 in $DEFINES (layout changed?)"

nodedir="$(npm config get nodedir 2>/dev/null || true)"
if [ -z "$nodedir" ] || [ "$nodedir" = "undefined" ] || [ ! -f "$nodedir/include/node/node.h" ]; then
  nodedir="$(dirname "$(dirname "$(command -v node)")")"
fi
[ -f "$nodedir/include/node/node.h" ] || die "Node headers not found under $nodedir/include/node (needed to compile offline)"

gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
[ -f "$gyp" ] || gyp="$ROOT/node_modules/node-gyp/bin/node-gyp.js"
[ -f "$gyp" ] || die "node-gyp not found (npm's bundled copy or node_modules)"

echo "build-sqlite: compiling better-sqlite3 with SQLITE_USE_URI=1 (about 2 minutes)"
(cd "$PKG" && node "$gyp" rebuild --release --nodedir="$nodedir" >"$PKG/build-sqlite.log" 2>&1) \
  || { tail -20 "$PKG/build-sqlite.log" >&2; die "node-gyp rebuild failed (log: $PKG/build-sqlite.log)"; }
probe || die "the rebuilt better-sqlite3 still lacks USE_URI"
echo "build-sqlite: done"
