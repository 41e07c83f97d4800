#!/usr/bin/env bash
# make-bench-store.sh PROFILE
#
# Builds (once) the benchmark *lower* Nix store for PROFILE (small | default; 1m uses the
# default store) with the real Nix 2.8 client, offline, and prints its directory on stdout:
#
#   DIR/root/nix/store            the lower store dir (lower root: DIR/root)
#   DIR/root/nix/var/nix/db       its Nix DB
#   DIR/manifest.json             sizes and roles (objects, files, bytes, big file, ...)
#   DIR/files.list0               every regular file but the big one, NUL-separated,
#                                 relative to the store dir, sorted
#   DIR/top.list                  every top-level name of the store dir, one a line, sorted
#
# The store is made of real file trees copied from this machine (/usr/share/doc, man pages,
# locales, /usr/include, Python's library, shared libraries, this repo's node_modules...),
# each top-level entry of those dirs becoming one object (`nix-store --add`), plus one
# deterministic pseudo-random big file (AES-CTR keystream of zeros, fixed key) and a set of
# derivations built with nix-build whose outputs refer to added objects and to each other
# (scripts/nix/bench.nix).
#
# Cache: DIR is ${LOCAL_OVERLAY_BENCH_CACHE:-/var/tmp/local-overlay-bench}/store-PROFILE-KEY,
# KEY a hash of this script, bench.nix and env.sh: a rerun with the same scripts prints the
# existing DIR at once. The contents depend on what this machine has installed; change the
# script (or delete DIR) to rebuild. Store objects are read-only: remove a cache dir with
# `chmod -R u+w DIR && rm -rf DIR`. Progress goes to stderr.
set -euo pipefail

usage() {
  echo "usage: $0 small|default|1m" >&2
  exit 2
}
[ "$#" -eq 1 ] || usage
profile="$1"
case "$profile" in
  small) ;;
  default | 1m) profile=default ;;
  *) usage ;;
esac

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/.." && pwd)"
# shellcheck source=nix/env.sh
. "$script_dir/nix/env.sh"
nix_env_require
command -v node >/dev/null 2>&1 || nix_env_fail "node not found in PATH"
command -v openssl >/dev/null 2>&1 || nix_env_fail "openssl not found in PATH (makes the big file)"

case "$profile" in
  small)
    max_objects=300 budget_mib=100 big_mib=256 drv_count=12 ;;
  default)
    max_objects=4000 budget_mib=1024 big_mib=512 drv_count=80 ;;
esac

cache_root="${LOCAL_OVERLAY_BENCH_CACHE:-/var/tmp/local-overlay-bench}"
key="$(cat "${BASH_SOURCE[0]}" "$script_dir/nix/bench.nix" "$script_dir/nix/env.sh" | sha256sum | cut -c1-12)"
dest="$cache_root/store-$profile-$key"
mkdir -p "$cache_root"

# One builder per cache dir at a time; a second caller waits, then finds it complete.
exec 9>"$cache_root/.store-$profile.lock"
flock 9
if [ -f "$dest/complete" ]; then
  echo "$dest"
  exit 0
fi

say() { echo "make-bench-store: $*" >&2; }
tmp_dest="$dest.tmp"
if [ -e "$tmp_dest" ]; then
  chmod -R u+w "$tmp_dest" 2>/dev/null || true
  rm -rf "$tmp_dest"
fi
mkdir -p "$tmp_dest"
root="$tmp_dest/root"
store=(--store "$root")

nix_env_setup
cleanup() {
  nix_env_cleanup
}
trap cleanup EXIT
stage="$NIX_ENV_TMP/stage"
mkdir -p "$stage"
t_start=$SECONDS

# --- choose the source trees ----------------------------------------------------------
# Candidates: every top-level entry (dir or regular file) of a few big dirs of this machine,
# round-robin across the groups in sorted order, until the object count or byte budget is
# reached. Entries holding sockets, fifos or devices, or bigger than a tenth of the budget,
# are skipped. Output: one "SOURCE<TAB>NAME" line per object, NAME a valid store path name.
say "choosing source trees (profile $profile: <= $max_objects objects, ~$budget_mib MiB)"
export BENCH_MAX_OBJECTS="$max_objects" BENCH_BUDGET_MIB="$budget_mib" BENCH_REPO="$repo_dir"
node - >"$NIX_ENV_TMP/plan.tsv" <<'NODE'
const fs = require('fs');
const path = require('path');
const e = process.env;
const maxObjects = Number(e.BENCH_MAX_OBJECTS);
const budget = Number(e.BENCH_BUDGET_MIB) * 1024 * 1024;
const pyDirs = fs.readdirSync('/usr/lib').filter((n) => /^python3(\.\d+)?$/.test(n)).sort().map((n) => `/usr/lib/${n}`);
const groups = [
  '/usr/share/doc', '/usr/share/man', '/usr/share/locale', '/usr/include',
  ...pyDirs, '/usr/lib/python3/dist-packages', path.join(e.BENCH_REPO, 'node_modules'),
  '/usr/lib/x86_64-linux-gnu', '/usr/share',
];
const skipInShare = new Set(['doc', 'man', 'locale']);
function children(dir) {
  let names;
  try { names = fs.readdirSync(dir).sort(); } catch { return []; }
  const out = [];
  for (const n of names) {
    if (n.startsWith('.') || (dir === '/usr/share' && skipInShare.has(n))) continue;
    if (dir === '/usr/lib/python3' && n === 'dist-packages') continue;
    const p = path.join(dir, n);
    const st = fs.lstatSync(p);
    if (st.isDirectory() || st.isFile()) out.push(p);
  }
  return out;
}
// Size of a tree; null when it has something a NAR cannot hold or cannot be read.
function measure(p) {
  let files = 0, bytes = 0;
  const rec = (q) => {
    const st = fs.lstatSync(q);
    if (st.isFile()) { files++; bytes += st.size; fs.accessSync(q, fs.constants.R_OK); return; }
    if (st.isSymbolicLink()) return;
    if (!st.isDirectory()) throw new Error('special file');
    for (const n of fs.readdirSync(q)) rec(path.join(q, n));
  };
  try { rec(p); } catch { return null; }
  return { files, bytes };
}
const lists = groups.filter((g) => fs.existsSync(g)).map(children);
const order = [];
for (let i = 0; lists.some((l) => i < l.length); i++) for (const l of lists) if (i < l.length) order.push(l[i]);
let bytes = 0, objects = 0;
const seen = new Set();
for (const src of order) {
  if (objects >= maxObjects || bytes >= budget) break;
  const m = measure(src);
  if (m === null || m.bytes > budget / 10) continue;
  let name = path.basename(src).replace(/[^A-Za-z0-9+\-._?=]/g, '_').replace(/^\.+/, '').slice(0, 180) || 'object';
  // Same name and content twice would be one store path: keep names unique.
  while (seen.has(name)) name = `${name}_`;
  seen.add(name);
  process.stdout.write(`${src}\t${name}\n`);
  bytes += m.bytes;
  objects++;
}
NODE
n_plan="$(wc -l <"$NIX_ENV_TMP/plan.tsv")"
say "chose $n_plan source trees"

# --- stage them under their store names (hard links where possible) and add -----------
i=0
while IFS=$'\t' read -r src name; do
  d="$stage/$(printf '%05d' "$i")"
  mkdir -p "$d"
  cp -al "$src" "$d/$name" 2>/dev/null || { rm -rf "${d:?}/$name"; cp -a "$src" "$d/$name"; }
  i=$((i + 1))
done <"$NIX_ENV_TMP/plan.tsv"

# The bootstrap tools the builders need (dash has no mkdir, chmod, ln or cat).
mkdir -p "$stage/tools/bench-bootstrap-tools/bin"
for tool in mkdir chmod ln cat; do
  cp -L "$(command -v "$tool")" "$stage/tools/bench-bootstrap-tools/bin/$tool"
  chmod 0755 "$stage/tools/bench-bootstrap-tools/bin/$tool"
done

say "adding $n_plan objects with nix-store --add"
mapfile -t sources < <(find "$stage" -mindepth 2 -maxdepth 2 ! -path "$stage/tools/*" | sort)
added=()
for ((off = 0; off < ${#sources[@]}; off += 500)); do
  mapfile -t chunk < <(nix_quiet nix-store "${store[@]}" --add "${sources[@]:off:500}")
  added+=("${chunk[@]}")
done
[ "${#added[@]}" -eq "${#sources[@]}" ] || nix_env_fail "nix-store --add printed ${#added[@]} paths for ${#sources[@]} sources"
tools_path="$(nix_quiet nix-store "${store[@]}" --add "$stage/tools/bench-bootstrap-tools")"
rm -rf "$stage"

# --- the big file: AES-128-CTR keystream over zeros, fixed key, so every build is equal ---
say "making the ${big_mib} MiB file"
big_src="$NIX_ENV_TMP/bench-big-${big_mib}MiB.bin"
head -c "$((big_mib * 1024 * 1024))" /dev/zero |
  openssl enc -aes-128-ctr -nosalt -K 6c6f63616c2d6f7665726c6179626e63 -iv 00000000000000000000000000000000 >"$big_src"
big_path="$(nix_quiet nix-store "${store[@]}" --add "$big_src")"
rm -f "$big_src"

# --- derivations whose outputs refer to added objects and to each other -----------------
say "building $drv_count derivations"
printf '%s\n' "${added[@]}" | node -e 'const l = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean);
  process.stdout.write(JSON.stringify(l));' >"$NIX_ENV_TMP/inputs.json"
mapfile -t built < <(nix_quiet nix-build "${store[@]}" --no-out-link --quiet --max-jobs 2 \
  "$script_dir/nix/bench.nix" -A all \
  --argstr tools "$tools_path" --argstr inputsFile "$NIX_ENV_TMP/inputs.json" --argstr count "$drv_count")
[ "${#built[@]}" -eq "$drv_count" ] || nix_env_fail "nix-build printed ${#built[@]} paths, expected $drv_count"
# nix-build --no-out-link still registers indirect roots pointing into our temp dir.
for link in "$root/nix/var/nix/gcroots/auto"/*; do
  [ -L "$link" ] || continue
  case "$(readlink "$link")" in "$NIX_ENV_TMP"/*) rm -f "$link" ;; esac
done

# --- GC roots, path info, manifest ---------------------------------------------------------
say "writing the manifest"
nix_quiet nix path-info "${store[@]}" --json --all >"$NIX_ENV_TMP/path-info.json"
printf '%s\n' "${built[@]}" >"$NIX_ENV_TMP/built"
export BENCH_ROOT="$root" BENCH_DEST="$tmp_dest" BENCH_FINAL="$dest" BENCH_Q="$NIX_ENV_TMP" \
  BENCH_PROFILE="$profile" BENCH_KEY="$key" BENCH_BIG="$big_path" BENCH_TOOLS="$tools_path" \
  BENCH_NIX_VERSION="$(nix-store --version)"
node - <<'NODE'
const fs = require('fs');
const path = require('path');
const e = process.env;
const storeDir = path.join(e.BENCH_ROOT, 'nix/store');
const pathInfo = JSON.parse(fs.readFileSync(path.join(e.BENCH_Q, 'path-info.json'), 'utf8'));
const built = fs.readFileSync(path.join(e.BENCH_Q, 'built'), 'utf8').split('\n').filter(Boolean);
const bigName = path.basename(e.BENCH_BIG);
const gcroots = path.join(e.BENCH_ROOT, 'nix/var/nix/gcroots/bench');
fs.mkdirSync(gcroots, { recursive: true });
for (const pi of pathInfo) fs.symlinkSync(pi.path, path.join(gcroots, path.basename(pi.path)));

const top = fs.readdirSync(storeDir).filter((n) => n !== '.links').sort();
const files = [];
let dirs = 0, symlinks = 0, regular = 0, bytes = 0, bigSize = 0;
const rec = (rel) => {
  const st = fs.lstatSync(path.join(storeDir, rel));
  if (st.isDirectory()) {
    dirs++;
    for (const n of fs.readdirSync(path.join(storeDir, rel)).sort()) rec(`${rel}/${n}`);
  } else if (st.isSymbolicLink()) symlinks++;
  else {
    regular++;
    bytes += st.size;
    if (rel === bigName) bigSize = st.size;
    else files.push(rel);
  }
};
for (const n of top) rec(n);
fs.writeFileSync(path.join(e.BENCH_DEST, 'files.list0'), files.map((f) => f + '\0').join(''));
fs.writeFileSync(path.join(e.BENCH_DEST, 'top.list'), top.join('\n') + '\n');
const manifest = {
  profile: e.BENCH_PROFILE,
  key: e.BENCH_KEY,
  createdAt: new Date().toISOString(),
  nixVersion: e.BENCH_NIX_VERSION.trim(),
  root: path.join(e.BENCH_FINAL, 'root'),
  objects: top.length,
  validPaths: pathInfo.length,
  derivationOutputs: built.length,
  drvFiles: pathInfo.filter((p) => p.path.endsWith('.drv')).length,
  refs: pathInfo.reduce((s, p) => s + p.references.length, 0),
  regularFiles: regular,
  directories: dirs,
  symlinks,
  bytes,
  narBytes: pathInfo.reduce((s, p) => s + p.narSize, 0),
  bigFile: { name: bigName, size: bigSize },
  readFiles: files.length,
  readBytes: bytes - bigSize,
  tools: e.BENCH_TOOLS,
};
fs.writeFileSync(path.join(e.BENCH_DEST, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
process.stderr.write(`make-bench-store: ${manifest.objects} objects, ${regular} files, ${(bytes / 1048576).toFixed(0)} MiB\n`);
NODE

date -u +%FT%TZ >"$tmp_dest/complete"
mv "$tmp_dest" "$dest"
say "done in $((SECONDS - t_start)) s: $dest"
echo "$dest"
