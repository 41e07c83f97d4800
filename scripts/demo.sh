#!/usr/bin/env bash
# make demo: builds a small lower Nix store with real Nix, mounts a merged root over it in a
# temp dir, builds one derivation into it with Nix, shows where each path resolved, unmounts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLI=(node "$ROOT/dist/src/cli/main.js")
# shellcheck source=nix/env.sh
. "$ROOT/scripts/nix/env.sh"
nix_env_require

demo="$(mktemp -d /tmp/local-overlay-demo.XXXXXX)"
merged="$demo/merged"
cleanup() {
  status=$?
  if grep -q " $merged/nix/store " /proc/self/mounts 2>/dev/null; then
    "${CLI[@]}" unmount "$merged" >/dev/null 2>&1 || fusermount -uz "$merged/nix/store" || true
  fi
  chmod -R u+w "$demo" 2>/dev/null || true
  rm -rf "$demo"
  nix_env_cleanup
  exit "$status"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. a lower store (read-only from now on), built with $(nix-store --version)"
bash "$ROOT/scripts/make-lower-store.sh" "$demo/lower" "$demo/manifest.json"
manifest() { node -p "require('$demo/manifest.json').paths.$1"; }
app=$(manifest appOut); single=$(manifest singleFile)
echo "lower store: $demo/lower/nix/store ($(ls "$demo/lower/nix/store" | grep -c -- '-') objects)"

step "2. mount the merged store"
"${CLI[@]}" mount --lower "$demo/lower" --upper "$demo/upper" --root "$merged"
"${CLI[@]}" status

step "3. build a derivation with plain Nix against the merged root (nix-build --store $merged)"
nix_env_setup
cat > "$demo/hello.nix" <<'NIX'
{ app, single }:
derivation {
  name = "demo-hello";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "read greeting < ${single}; echo \"$greeting\" > $out; echo built against ${app} >> $out" ];
}
NIX
out=$(nix-build --store "$merged" --no-out-link "$demo/hello.nix" \
  --arg app "builtins.storePath \"$app\"" --arg single "builtins.storePath \"$single\"")
echo "built $out:"
sed 's/^/  | /' "$merged$out"
nix-store --store "$merged" --verify-path "$out" && echo "verified: $out"

step "4. where each path resolved"
"${CLI[@]}" explain "$merged$out" "$app" "$single"

step "5. the lower store was not written; the new output is only in the upper dir"
ls -l "$demo/upper"

step "6. unmount"
"${CLI[@]}" unmount "$merged"
echo
echo "demo finished: everything worked."
