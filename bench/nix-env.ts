import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * The hermetic, offline environment scripts/nix/env.sh sets up, for the Nix commands the
 * benchmark runs (`nix-store --verify`, `--add`, `--check-validity`): every config, cache and
 * state dir private (under `dir`), no substituters, no build users.
 */
export function nixEnv(dir: string): NodeJS.ProcessEnv {
  for (const d of ['home', 'conf', 'cache', 'config', 'data', 'state', 'log', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['NIX_REMOTE', 'NIX_STORE_DIR', 'NIX_STORE', 'NIX_DAEMON_SOCKET_PATH', 'NIX_SSHOPTS']) delete env[k];
  return Object.assign(env, {
    HOME: `${dir}/home`, XDG_CACHE_HOME: `${dir}/cache`, XDG_CONFIG_HOME: `${dir}/config`,
    XDG_DATA_HOME: `${dir}/data`, XDG_CONFIG_DIRS: `${dir}/config`, NIX_CONF_DIR: `${dir}/conf`,
    NIX_USER_CONF_FILES: `${dir}/conf/none.conf`, NIX_STATE_DIR: `${dir}/state`, NIX_LOG_DIR: `${dir}/log`,
    TMPDIR: `${dir}/tmp`, NIX_PATH: '',
    NIX_CONFIG: [
      'experimental-features = nix-command', 'build-users-group =', 'sandbox = false',
      'substituters =', 'trusted-substituters =', 'builders =', 'nix-path =', 'fsync-metadata = false',
      'auto-optimise-store = false',
    ].join('\n'),
  });
}
