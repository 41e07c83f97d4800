# shellcheck shell=bash
# Sourced by scripts/make-lower-store.sh and scripts/lower-add.sh: a hermetic, offline,
# quiet environment for Debian's Nix 2.8 (nix-bin) driving a chroot store (--store ROOT).
#
# With --store ROOT, Nix 2.8 keeps the store at ROOT/nix/store, its DB and locks at
# ROOT/nix/var/nix and build logs at ROOT/nix/var/log/nix (LocalFSStoreConfig). Outside
# ROOT it still reads $NIX_CONF_DIR/nix.conf (/etc/nix/nix.conf on Debian says
# `sandbox = false`), user config under $XDG_CONFIG_HOME or ~/.config, caches under
# ~/.cache, the default nix-path under $NIX_STATE_DIR, and makes build dirs in $TMPDIR.
# All of those are pointed at one private temp dir here; NIX_CONFIG (applied last, so it
# wins over any file) disables substituters so nothing is ever downloaded.

nix_env_fail() {
  echo "error: $*" >&2
  exit 1
}

nix_env_require() {
  if ! command -v nix-store >/dev/null 2>&1; then
    echo "error: nix-store not found in PATH; install Debian's nix-bin (Nix 2.8), e.g. 'make system-packages'" >&2
    exit 127
  fi
}

# nix_env_setup: creates $NIX_ENV_TMP and exports the hermetic environment.
# The caller removes it with nix_env_cleanup (e.g. from an EXIT trap).
nix_env_setup() {
  NIX_ENV_TMP="$(mktemp -d "${TMPDIR:-/tmp}/lower-nix-env.XXXXXX")"
  mkdir -p "$NIX_ENV_TMP"/{home,conf,cache,config,data,state,log,tmp}
  export HOME="$NIX_ENV_TMP/home"
  export XDG_CACHE_HOME="$NIX_ENV_TMP/cache"
  export XDG_CONFIG_HOME="$NIX_ENV_TMP/config"
  export XDG_DATA_HOME="$NIX_ENV_TMP/data"
  export XDG_CONFIG_DIRS="$NIX_ENV_TMP/config"
  export NIX_CONF_DIR="$NIX_ENV_TMP/conf"
  export NIX_USER_CONF_FILES="$NIX_ENV_TMP/conf/none.conf"
  export NIX_STATE_DIR="$NIX_ENV_TMP/state"
  export NIX_LOG_DIR="$NIX_ENV_TMP/log"
  export TMPDIR="$NIX_ENV_TMP/tmp"
  export NIX_PATH=""
  unset NIX_REMOTE NIX_STORE_DIR NIX_STORE NIX_DAEMON_SOCKET_PATH NIX_SSHOPTS
  # /bin/sh (dash) is the only builder; the sandbox gets it plus the host's shared
  # libraries (for the coreutils copied into the store as "bootstrap tools").
  export NIX_CONFIG='experimental-features = nix-command
build-users-group =
sandbox = true
sandbox-fallback = false
sandbox-paths = /bin/sh=/bin/sh /lib /lib64 /usr/lib
substituters =
trusted-substituters =
builders =
nix-path =
fsync-metadata = false
auto-optimise-store = false
keep-derivations = true'
}

nix_env_cleanup() {
  if [ -n "${NIX_ENV_TMP:-}" ] && [ -d "$NIX_ENV_TMP" ]; then
    chmod -R u+w "$NIX_ENV_TMP" 2>/dev/null || true
    rm -rf "$NIX_ENV_TMP"
  fi
}

# nix_quiet CMD...: runs CMD with stderr captured; prints it only if CMD fails.
nix_quiet() {
  local log="$NIX_ENV_TMP/last-stderr.log"
  if ! "$@" 2>"$log"; then
    echo "error: command failed: $*" >&2
    sed 's/^/  | /' "$log" >&2
    return 1
  fi
}
