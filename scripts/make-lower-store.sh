#!/usr/bin/env bash
# make-lower-store.sh ROOT MANIFEST_JSON
#
# Builds a small but realistic *lower* Nix store at chroot root ROOT (store dir
# ROOT/nix/store, DB ROOT/nix/var/nix/db/db.sqlite) with the real Nix 2.8 client, offline
# (no substituters, /bin/sh as the only builder, sandboxed builds), and writes a JSON
# manifest of the store paths by role to MANIFEST_JSON (which must be outside ROOT).
#
# Store objects (roles):
#   tools       directory added with `nix-store --add`: copies of the host's mkdir, chmod,
#               ln, cat (dash has no mkdir), used by the builders; an input of the .drvs
#   singleFile  single regular file added with `nix-store --add FILE`
#   dirObject   directory added with `nix-store --add DIR`: nested dirs, an executable,
#               relative symlinks (to a file and to a dir), an empty file, an empty dir
#               and a ~230 KB file
#   textFile    text object made by `builtins.toFile` (content in manifest.contents)
#   libDrv/libOut  derivation built with `nix-build --store ROOT`; libOut -> textFile
#   appDrv/appOut  derivation whose output refers to libOut and singleFile
# All of them are registered as GC roots (ROOT/nix/var/nix/gcroots/lower/<role>).
#
# Environment:
#   LOWER_EXTRA=N   also add N small single-file objects (roles listed in manifest.extra),
#                   for tests that need a bigger lower store (default 0)
#
# Store paths in the manifest are logical (/nix/store/...); the real location of
# /nix/store/X is ROOT/nix/store/X. Re-running on the same ROOT is harmless: every step
# is idempotent in Nix. Prints nothing unless something fails.
set -euo pipefail

usage() {
  echo "usage: $0 ROOT MANIFEST_JSON" >&2
  exit 2
}
[ "$#" -eq 2 ] || usage

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=nix/env.sh
. "$script_dir/nix/env.sh"
nix_env_require
command -v node >/dev/null 2>&1 || nix_env_fail "node not found in PATH (needed to write the manifest)"

root="$(realpath -m -- "$1")"
manifest="$(realpath -m -- "$2")"
case "$manifest/" in
  "$root"/*) nix_env_fail "MANIFEST_JSON ($manifest) must be outside ROOT ($root)" ;;
esac
extra_count="${LOWER_EXTRA:-0}"
[[ "$extra_count" =~ ^[0-9]+$ ]] || nix_env_fail "LOWER_EXTRA must be a number, got '$extra_count'"

nix_env_setup
trap nix_env_cleanup EXIT
mkdir -p "$root" "$(dirname "$manifest")"
src="$NIX_ENV_TMP/src"
mkdir -p "$src"

store=(--store "$root")

# --- tools: the host's coreutils, so builders can mkdir/chmod/ln/cat -----------------
mkdir -p "$src/lower-bootstrap-tools/bin"
for tool in mkdir chmod ln cat; do
  tool_path="$(command -v "$tool")" || nix_env_fail "$tool not found in PATH"
  cp -L "$tool_path" "$src/lower-bootstrap-tools/bin/$tool"
  chmod 0755 "$src/lower-bootstrap-tools/bin/$tool"
done

# --- singleFile ----------------------------------------------------------------------
single_content='Hello from a single-file store object in the lower store.
'
printf '%s' "$single_content" >"$src/lower-single.txt"

# --- dirObject -----------------------------------------------------------------------
tree="$src/lower-sample-tree"
mkdir -p "$tree/bin" "$tree/lib" "$tree/share/doc/sample/deep/er" "$tree/share/data" "$tree/empty-dir"
printf '# sample tree\n\nA directory store object of the lower store.\n' >"$tree/README.md"
printf '#!/bin/sh\necho "sample tree says hi"\n' >"$tree/bin/run.sh"
chmod 0755 "$tree/bin/run.sh"
printf 'not really a shared library\n' >"$tree/lib/libsample.so.1"
ln -s libsample.so.1 "$tree/lib/libsample.so"
ln -s share/doc/sample "$tree/link-to-doc"
printf 'notes about the sample\n' >"$tree/share/doc/sample/notes.txt"
printf 'deeply nested\n' >"$tree/share/doc/sample/deep/er/nested.txt"
seq 1 40000 >"$tree/share/data/numbers.txt"
: >"$tree/empty-file"

# --- add the sources (one nix-store process; output order = argument order) ----------
mapfile -t added < <(nix_quiet nix-store "${store[@]}" --add \
  "$src/lower-bootstrap-tools" "$src/lower-single.txt" "$tree")
[ "${#added[@]}" -eq 3 ] || nix_env_fail "nix-store --add printed ${#added[@]} paths, expected 3"
tools_path="${added[0]}"
single_path="${added[1]}"
dir_path="${added[2]}"

extra_paths=()
if [ "$extra_count" -gt 0 ]; then
  mkdir -p "$src/extra"
  extra_files=()
  for ((i = 1; i <= extra_count; i++)); do
    printf -v f '%s/extra/lower-extra-%05d.txt' "$src" "$i"
    printf 'extra lower object %d\n' "$i" >"$f"
    extra_files+=("$f")
  done
  # One nix-store process per 2000 files (argument list size), output in argument order.
  for ((off = 0; off < extra_count; off += 2000)); do
    mapfile -t chunk < <(nix_quiet nix-store "${store[@]}" --add "${extra_files[@]:off:2000}")
    extra_paths+=("${chunk[@]}")
  done
  [ "${#extra_paths[@]}" -eq "$extra_count" ] ||
    nix_env_fail "nix-store --add printed ${#extra_paths[@]} extra paths, expected $extra_count"
fi

# --- derivations ---------------------------------------------------------------------
nix_args=(--argstr tools "$tools_path" --argstr singleFile "$single_path")
info_json="$(nix_quiet nix-instantiate "${store[@]}" --eval --strict --json --read-write-mode \
  "$script_dir/nix/lower.nix" -A info "${nix_args[@]}")"
mapfile -t built < <(nix_quiet nix-build "${store[@]}" --no-out-link --quiet \
  "$script_dir/nix/lower.nix" -A lib -A app "${nix_args[@]}")
[ "${#built[@]}" -eq 2 ] || nix_env_fail "nix-build printed ${#built[@]} paths, expected 2"

# nix-build --no-out-link still makes `result` links in a temp dir under $TMPDIR and
# registers them as indirect roots in gcroots/auto; they dangle once that dir is gone, so
# drop the ones pointing into our private temp dir.
for link in "$root/nix/var/nix/gcroots/auto"/*; do
  [ -L "$link" ] || continue
  case "$(readlink "$link")" in "$NIX_ENV_TMP"/*) rm -f "$link" ;; esac
done

# --- GC roots (direct roots: symlinks to logical store paths in the gcroots dir) -------
gcroots="$root/nix/var/nix/gcroots/lower"
mkdir -p "$gcroots"
root_link() { ln -sfn "$2" "$gcroots/$1"; }
root_link tools "$tools_path"
root_link singleFile "$single_path"
root_link dirObject "$dir_path"
root_link libOut "${built[0]}"
root_link appOut "${built[1]}"
while IFS='=' read -r role p; do root_link "$role" "$p"; done < <(
  node -e 'const i = JSON.parse(process.argv[1]);
    for (const r of ["textFile", "libDrv", "appDrv"]) console.log(r + "=" + i[r]);' "$info_json")

# --- queries for the manifest (into files: they can exceed the env/argv size limit) ----
qdir="$NIX_ENV_TMP/query"
mkdir -p "$qdir"
q() { nix_quiet nix-store "${store[@]}" --query "$@"; }
lib_out="${built[0]}"
app_out="${built[1]}"
app_drv="$(node -e 'console.log(JSON.parse(process.argv[1]).appDrv)' "$info_json")"
printf '%s' "$info_json" >"$qdir/info.json"
q --requisites "$app_out" >"$qdir/req-appOut"
q --requisites "$lib_out" >"$qdir/req-libOut"
q --requisites "$app_drv" >"$qdir/req-appDrv"
nix_quiet nix path-info "${store[@]}" --json --all >"$qdir/path-info.json"
printf '%s\n' "${extra_paths[@]}" >"$qdir/extra"
printf '%s' "$single_content" >"$qdir/single-content"
nix-store "${store[@]}" --version >"$qdir/nix-version"

export LOWER_ROOT="$root" LOWER_MANIFEST="$manifest" LOWER_Q="$qdir" LOWER_GCROOTS="$gcroots" \
  LOWER_TOOLS="$tools_path" LOWER_SINGLE="$single_path" LOWER_DIR="$dir_path" \
  LOWER_LIB_OUT="$lib_out" LOWER_APP_OUT="$app_out"
node - <<'NODE'
const fs = require('fs');
const path = require('path');
const e = process.env;
const q = (name) => fs.readFileSync(path.join(e.LOWER_Q, name), 'utf8');
const lines = (s) => s.split('\n').filter(Boolean).sort();
const info = JSON.parse(q('info.json'));
if (info.libOut !== e.LOWER_LIB_OUT || info.appOut !== e.LOWER_APP_OUT) {
  console.error('error: nix-build outputs differ from nix-instantiate --eval outputs');
  process.exit(1);
}
const storeDir = '/nix/store';
const realStoreDir = path.join(e.LOWER_ROOT, 'nix/store');
const paths = {
  tools: e.LOWER_TOOLS,
  singleFile: e.LOWER_SINGLE,
  dirObject: e.LOWER_DIR,
  textFile: info.textFile,
  libDrv: info.libDrv,
  libOut: info.libOut,
  appDrv: info.appDrv,
  appOut: info.appOut,
};
const toReal = (p) => path.join(realStoreDir, p.slice(storeDir.length + 1));
// Every entry below the dirObject (and libOut, appOut), sorted, for filesystem tests.
function walk(top) {
  const out = [];
  const rec = (rel) => {
    const abs = rel ? path.join(top, rel) : top;
    const st = fs.lstatSync(abs);
    const ent = { path: rel || '.', type: st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'regular' };
    if (st.isFile()) { ent.size = st.size; ent.executable = (st.mode & 0o100) !== 0; }
    if (st.isSymbolicLink()) ent.target = fs.readlinkSync(abs);
    out.push(ent);
    if (st.isDirectory()) for (const n of fs.readdirSync(abs).sort()) rec(rel ? path.join(rel, n) : n);
  };
  rec('');
  return out;
}
const pathInfo = JSON.parse(q('path-info.json'));
const references = {};
for (const [role, p] of Object.entries(paths)) {
  const pi = pathInfo.find((x) => x.path === p);
  if (!pi) { console.error(`error: ${role} ${p} is not valid in ${e.LOWER_ROOT}`); process.exit(1); }
  references[role] = [...pi.references].sort();
}
const manifest = {
  root: e.LOWER_ROOT,
  storeDir,
  realStoreDir,
  dbPath: path.join(e.LOWER_ROOT, 'nix/var/nix/db/db.sqlite'),
  nixVersion: q('nix-version').trim(),
  paths,
  contents: { textFile: info.textContent, singleFile: q('single-content') },
  references,
  expectedRequisites: {
    appOut: lines(q('req-appOut')),
    libOut: lines(q('req-libOut')),
    appDrv: lines(q('req-appDrv')),
  },
  entries: {
    dirObject: walk(toReal(paths.dirObject)),
    libOut: walk(toReal(paths.libOut)),
    appOut: walk(toReal(paths.appOut)),
  },
  extra: lines(q('extra')),
  validPaths: pathInfo.map((x) => x.path).sort(),
  pathInfo,
};
// GC roots for the extra objects (one symlink each; cheaper here than in bash).
for (const p of manifest.extra) {
  const link = path.join(e.LOWER_GCROOTS, 'extra-' + path.basename(p));
  try { fs.unlinkSync(link); } catch {}
  fs.symlinkSync(p, link);
}
const tmp = e.LOWER_MANIFEST + '.tmp';
fs.writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n');
fs.renameSync(tmp, e.LOWER_MANIFEST);
NODE
