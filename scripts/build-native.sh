#!/usr/bin/env bash
# Patches node_modules/fuse-native (2.2.6) with patches/fuse-native+2.2.6.patch and
# builds its addon from source against the system libfuse 2 (Debian libfuse-dev),
# so that node-gyp-build loads build/Release/fuse.node instead of prebuilds/.
#
# Run by `make native` after `npm ci`. Idempotent: the patch is applied only if it is
# not applied yet, and the addon is rebuilt only when one of its inputs changed
# (a stamp in node_modules/fuse-native/build/ records them). Works offline: node-gyp
# is given local Node headers (npm's nodedir, /usr/include/node on this machine).
# Why and how: native-notes/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$ROOT/node_modules/fuse-native"
PATCH_FILE="$ROOT/patches/fuse-native+2.2.6.patch"
FAST_SRC="$ROOT/native/fastpath.c"
WANT_VERSION="2.2.6"
ADDON="$PKG/build/Release/fuse.node"
STAMP="$PKG/build/.local-overlay-native-stamp"

die() { echo "build-native: error: $*" >&2; exit 1; }
say() { echo "build-native: $*"; }

# --- preconditions -------------------------------------------------------------------
command -v node >/dev/null || die "node is not on PATH"
[ -f "$PKG/package.json" ] || die "$PKG is missing: run 'npm ci' (or 'make deps') first"
[ -f "$PATCH_FILE" ] || die "patch not found: $PATCH_FILE"
[ -f "$FAST_SRC" ] || die "fast path source not found: $FAST_SRC"

have_version="$(node -p "require(process.argv[1]).version" "$PKG/package.json")"
[ "$have_version" = "$WANT_VERSION" ] || die "node_modules/fuse-native is $have_version, but $PATCH_FILE is for $WANT_VERSION; update the patch (native-notes/README.md) before changing the version"

command -v pkg-config >/dev/null \
  || die "pkg-config is missing: apt-get install pkg-config libfuse-dev (or 'make system-packages')"
pkg-config --exists fuse \
  || die "pkg-config cannot find 'fuse' (libfuse 2 headers): apt-get install libfuse-dev (or 'make system-packages')"
fuse_version="$(pkg-config --modversion fuse)"
case "$fuse_version" in
  2.9.*) ;;
  *) die "pkg-config fuse is version $fuse_version; the patch is written for libfuse 2.9" ;;
esac
[ -f "$(pkg-config --variable=includedir fuse)/fuse/fuse.h" ] || [ -f /usr/include/fuse/fuse.h ] \
  || die "fuse.h not found: apt-get install libfuse-dev"
for tool in make cc c++ python3 patch ldd; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (needed by node-gyp): apt-get install build-essential python3 patch"
done

libdir="$(pkg-config --variable=libdir fuse)"
SYSTEM_LIBFUSE="$(readlink -f "$libdir/libfuse.so.2" 2>/dev/null || true)"
[ -n "$SYSTEM_LIBFUSE" ] && [ -f "$SYSTEM_LIBFUSE" ] \
  || die "$libdir/libfuse.so.2 is missing: apt-get install libfuse2 libfuse-dev"

# --- patch (only if not applied yet) ------------------------------------------------------
# A copy of the patch as applied is kept in the package, so that a newer version of the
# patch (after a git pull) replaces the old one without a fresh `npm ci`.
APPLIED="$PKG/.local-overlay-applied.patch"
patch_opts=(-p1 -d "$PKG" -f -s --no-backup-if-mismatch -r -)
if patch "${patch_opts[@]}" -R --dry-run < "$PATCH_FILE" >/dev/null 2>&1; then
  say "patch already applied"
else
  if [ -f "$APPLIED" ] && patch "${patch_opts[@]}" -R --dry-run < "$APPLIED" >/dev/null 2>&1; then
    patch "${patch_opts[@]}" -R < "$APPLIED"
    rm -f "$APPLIED"
    say "reverted the previously applied version of the patch"
  fi
  if patch "${patch_opts[@]}" -N --dry-run < "$PATCH_FILE" >/dev/null 2>&1; then
    patch "${patch_opts[@]}" -N < "$PATCH_FILE"
    cp "$PATCH_FILE" "$APPLIED"
    say "applied $(basename "$PATCH_FILE")"
  else
    die "$PATCH_FILE neither applies to nor is applied in $PKG (sources modified by hand?). Fix: rm -rf node_modules && npm ci, then re-run"
  fi
fi

# The patched fuse-native.c includes the fast path (native/fastpath.c) from its own dir.
cp "$FAST_SRC" "$PKG/local-overlay-fastpath.c"

# --- is a rebuild needed? -------------------------------------------------------------
node_version="$(node -p process.version)"
stamp_inputs() {
  echo "node $node_version"
  echo "libfuse $fuse_version $(pkg-config --cflags --libs fuse) $SYSTEM_LIBFUSE"
  sha256sum "$PATCH_FILE" "$FAST_SRC" "$PKG/fuse-native.c" "$PKG/binding.gyp" "$PKG/semaphore.h" "$ROOT/scripts/build-native.sh" | awk '{print $1}'
}
want_stamp="$(stamp_inputs)"

if [ -f "$ADDON" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
  say "addon up to date: $ADDON"
else
  # node-gyp: the project's own, else npm's bundled copy, else npx (never downloads).
  node_gyp=()
  npm_bin="$(command -v npm || true)"
  npm_gyp=""
  if [ -n "$npm_bin" ]; then
    for cand in \
      "$(dirname "$npm_bin")/../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js" \
      "$(dirname "$(readlink -f "$npm_bin")")/../node_modules/node-gyp/bin/node-gyp.js"; do
      if [ -f "$cand" ]; then npm_gyp="$cand"; break; fi
    done
  fi
  if [ -x "$ROOT/node_modules/.bin/node-gyp" ]; then
    node_gyp=("$ROOT/node_modules/.bin/node-gyp")
  elif [ -n "$npm_gyp" ]; then
    node_gyp=(node "$npm_gyp")
  elif npx --no-install node-gyp --version >/dev/null 2>&1; then
    node_gyp=(npx --no-install node-gyp)
  else
    die "node-gyp not found (neither node_modules/.bin/node-gyp nor npm's bundled copy)"
  fi

  # Local Node headers, so that node-gyp never downloads them.
  nodedir="${npm_config_nodedir:-}"
  if [ -z "$nodedir" ] && [ -n "$npm_bin" ]; then
    nodedir="$(npm config get nodedir 2>/dev/null || true)"
  fi
  case "$nodedir" in undefined|null) nodedir="" ;; esac
  if [ -z "$nodedir" ]; then
    for cand in "$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")" /usr /usr/local; do
      if [ -f "$cand/include/node/node_api.h" ]; then nodedir="$cand"; break; fi
    done
  fi
  [ -n "$nodedir" ] && [ -f "$nodedir/include/node/node_api.h" ] && [ -f "$nodedir/include/node/common.gypi" ] \
    || die "no local Node headers (looked for <nodedir>/include/node/node_api.h and common.gypi; npm config nodedir='$nodedir'). Install the headers matching $node_version or set npm_config_nodedir"

  say "building $ADDON (node-gyp: ${node_gyp[*]}, nodedir: $nodedir, libfuse $fuse_version)"
  log="$(mktemp /tmp/build-native.XXXXXX.log)"
  if ! (cd "$PKG" && "${node_gyp[@]}" rebuild --release --nodedir="$nodedir") >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "node-gyp rebuild failed (full log: $log)"
  fi
  rm -f "$log"
  [ -f "$ADDON" ] || die "node-gyp succeeded but $ADDON is missing"
  printf '%s\n' "$want_stamp" > "$STAMP"
  say "built $ADDON"
fi

# --- verify what is actually loaded (cheap; runs every time) ------------------------------
linked="$(ldd "$ADDON" | awk '/libfuse\.so\.2/ {print $3}')"
[ -n "$linked" ] || die "ldd: $ADDON does not link libfuse.so.2"
[ "$(readlink -f "$linked")" = "$SYSTEM_LIBFUSE" ] \
  || die "ldd: $ADDON resolves libfuse.so.2 to $linked, expected the system $SYSTEM_LIBFUSE"

# Load the package the way the project does and read the process's own memory map:
# this shows which fuse.node node-gyp-build picked and which libfuse.so the loader mapped.
loaded="$(cd "$ROOT" && node -e '
  const fs = require("fs")
  const Fuse = require("fuse-native")
  const want = require("node-gyp-build").path(require.resolve("fuse-native/package.json").replace(/package\.json$/, ""))
  const maps = fs.readFileSync("/proc/self/maps", "utf8").split("\n").map(l => l.split(/\s+/)[5]).filter(Boolean)
  const uniq = a => [...new Set(a)]
  if (Fuse.UTIME_OMIT !== "omit") { console.error("patched index.js not loaded"); process.exit(1) }
  console.log([want, uniq(maps.filter(p => p.endsWith(".node") && p.includes("fuse-native"))).join(","), uniq(maps.filter(p => /libfuse\.so/.test(p))).join(",")].join("\t"))
')" || die "loading fuse-native failed"
IFS=$'\t' read -r resolved mapped_addon mapped_lib <<< "$loaded"
[ "$resolved" = "$ADDON" ] || die "node-gyp-build resolves $resolved, expected $ADDON"
[ "$mapped_addon" = "$ADDON" ] || die "process mapped addon '$mapped_addon', expected $ADDON"
[ "$(readlink -f "$mapped_lib")" = "$SYSTEM_LIBFUSE" ] || die "process mapped libfuse '$mapped_lib', expected $SYSTEM_LIBFUSE"
say "ok: fuse-native $have_version (patched) loads $ADDON with $mapped_lib"
