import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { check, run, RunResult } from './exec';

/**
 * A hermetic environment for Debian's Nix 2.8 driving chroot stores (`--store ROOT`), the
 * same one scripts/nix/env.sh sets up: offline, sandboxed builds with /bin/sh as builder,
 * every config and state dir private.
 */
export function nixEnv(): NodeJS.ProcessEnv {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lo-nix-env-'));
  // Removed when the test process ends (ava runs each test file in its own process).
  process.once('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
  for (const d of ['home', 'conf', 'cache', 'config', 'data', 'state', 'log', 'tmp']) fs.mkdirSync(path.join(tmp, d));
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['NIX_REMOTE', 'NIX_STORE_DIR', 'NIX_STORE', 'NIX_DAEMON_SOCKET_PATH']) delete env[k];
  return Object.assign(env, {
    HOME: `${tmp}/home`, XDG_CACHE_HOME: `${tmp}/cache`, XDG_CONFIG_HOME: `${tmp}/config`,
    XDG_DATA_HOME: `${tmp}/data`, XDG_CONFIG_DIRS: `${tmp}/config`, NIX_CONF_DIR: `${tmp}/conf`,
    NIX_USER_CONF_FILES: `${tmp}/conf/none.conf`, NIX_STATE_DIR: `${tmp}/state`, NIX_LOG_DIR: `${tmp}/log`,
    TMPDIR: `${tmp}/tmp`, NIX_PATH: '',
    NIX_CONFIG: [
      'experimental-features = nix-command', 'build-users-group =', 'sandbox = true', 'sandbox-fallback = false',
      'sandbox-paths = /bin/sh=/bin/sh /lib /lib64 /usr/lib', 'substituters =', 'trusted-substituters =',
      'builders =', 'nix-path =', 'fsync-metadata = false', 'keep-derivations = true',
    ].join('\n'),
  });
}

let cachedEnv: NodeJS.ProcessEnv | null = null;
function env(): NodeJS.ProcessEnv {
  cachedEnv ??= nixEnv();
  return cachedEnv;
}

export function haveNix(): boolean {
  return fs.existsSync('/usr/bin/nix-store') || (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, 'nix-store')));
}

/** Fails with a clear message when the Nix client is absent (a test must be able to fail). */
export function requireNix(): void {
  if (!haveNix()) throw new Error('nix-store is not installed: run `make system-packages` (Debian nix-bin, Nix 2.8)');
}

/** Runs a Nix command in the hermetic environment; `settings` (nix.conf lines) come last and win. */
export function nix(cmd: 'nix-store' | 'nix-build' | 'nix' | 'nix-collect-garbage' | 'nix-instantiate', args: readonly string[], opts: { timeoutMs?: number; settings?: readonly string[] } = {}): Promise<RunResult> {
  requireNix();
  const e = opts.settings === undefined ? env() : { ...env(), NIX_CONFIG: [env().NIX_CONFIG, ...opts.settings].join('\n') };
  return run(cmd, args, { env: e, timeoutMs: opts.timeoutMs ?? 180_000 });
}

/**
 * Fails with a clear message unless Nix's build users exist (group `nixbld` with members), as
 * Debian's nix-setup-systemd or `make system-packages` makes them.
 */
export async function requireBuildUsers(): Promise<void> {
  const r = await run('getent', ['group', 'nixbld']);
  const members = r.stdout.trim().split(':')[3] ?? '';
  if (r.code !== 0 || members === '') throw new Error('the group nixbld with build users (nixbld1...) is missing: run `make system-packages` as root');
}

export async function nixOk(cmd: Parameters<typeof nix>[0], args: readonly string[]): Promise<string> {
  requireNix();
  return check(cmd, args, { env: env(), timeoutMs: 180_000 });
}

/**
 * Writes `DIR/NAME.nix`: a derivation built by /bin/sh running `script`, whose arguments are
 * the given store paths (`${arg}` in the script). Returns the nix-build arguments after
 * `--store ROOT`: the expression and one `--arg NAME (builtins.storePath "...")` per input.
 */
export async function derivation(dir: string, name: string, inputs: Record<string, string>, script: string): Promise<string[]> {
  const expr = path.join(dir, `${name}.nix`);
  const args = Object.keys(inputs);
  await fs.promises.writeFile(expr, `{ ${args.join(', ')} }:
derivation {
  name = "${name}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ${JSON.stringify(script)} ];
}
`);
  return [expr, ...args.flatMap((a) => ['--arg', a, `builtins.storePath "${inputs[a]}"`])];
}
