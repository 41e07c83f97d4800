#!/usr/bin/env bash
# lower-add.sh ROOT NAME
#
# Adds one new small single-file store object to the existing lower store at chroot root
# ROOT with the real Nix 2.8 client (`nix-store --store ROOT --add`), and prints its
# logical store path (/nix/store/<hash>-lower-extra-<NAME>) on stdout, nothing else.
# Tests use it to grow the lower store while a merged view of it is mounted.
#
# The file's content is NAME followed by a newline, so distinct NAMEs give distinct
# objects; the same NAME twice gives the same path (Nix's add is idempotent). In the
# file name, characters that Nix does not allow in store path names become '-'.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 ROOT NAME" >&2
  exit 2
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=nix/env.sh
. "$script_dir/nix/env.sh"
nix_env_require

root="$(realpath -m -- "$1")"
name="$2"
[ -n "$name" ] || nix_env_fail "NAME must not be empty"
[ -d "$root/nix/store" ] || nix_env_fail "$root is not a Nix chroot store root (no $root/nix/store)"

nix_env_setup
trap nix_env_cleanup EXIT

# Store path names allow [A-Za-z0-9+-._?=] and at most 211 characters.
safe="$(printf '%s' "$name" | tr -c 'A-Za-z0-9+._?=-' '-' | cut -c1-180)"
file="$NIX_ENV_TMP/lower-extra-$safe"
printf '%s\n' "$name" >"$file"

path="$(nix_quiet nix-store --store "$root" --add "$file")"
case "$path" in
  /nix/store/*) ;;
  *) nix_env_fail "unexpected output from nix-store --add: '$path'" ;;
esac
printf '%s\n' "$path"
