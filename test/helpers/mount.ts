import type { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cli, run } from './exec';

export interface Merged {
  root: string;
  store: string;
  upper: string;
  work: string;
  lower: string;
  lowerStore: string;
  dir: string;
  pid: number;
  /** What `mount` printed on stderr (its warnings). */
  mountStderr: string;
  unmount(): Promise<void>;
}

/** A temp dir removed when the test ends (after the mounts in it are gone). */
export function tempDir(t: ExecutionContext, prefix = 'lo-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(async () => {
    await detachMountsUnder(dir);
    await fs.promises.rm(dir, { recursive: true, force: true }).catch(async () => {
      await run('chmod', ['-R', 'u+w', dir]);
      await fs.promises.rm(dir, { recursive: true, force: true });
    });
  });
  return dir;
}

/** Unmounts (lazily) whatever is still mounted below `dir`: a failed test must not leave mounts. */
export async function detachMountsUnder(dir: string): Promise<void> {
  const text = await fs.promises.readFile('/proc/self/mountinfo', 'utf8');
  const mounts = text.split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(dir + '/'));
  for (const m of mounts.sort().reverse()) {
    const r = await run('fusermount', ['-uz', m]);
    if (r.code !== 0) await run('umount', ['-l', m]);
  }
}

/**
 * Mounts a merged store over `lower` with the built CLI (a daemon in its own process, as users
 * run it) and unmounts it when the test ends, even when the test fails.
 */
export async function mountMerged(t: ExecutionContext, lower: string, opts: { metadata?: 'mirror' | 'lazy'; dir?: string; upper?: string; extra?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Merged> {
  const dir = opts.dir ?? tempDir(t);
  const root = path.join(dir, 'merged');
  const upper = opts.upper ?? path.join(dir, 'upper');
  const work = path.join(dir, 'work');
  const args = ['mount', '--lower', lower, '--upper', upper, '--root', root, '--work', work, '--metadata', opts.metadata ?? 'mirror', ...(opts.extra ?? [])];
  const r = await cli(args, opts.env ? { env: { ...process.env, ...opts.env } } : {});
  if (r.code !== 0) throw new Error(`mount failed (${r.code}): ${r.stderr}${r.stdout}`);
  const pid = Number(/pid (\d+)/.exec(r.stdout)?.[1] ?? 0);
  let mounted = true;
  const unmount = async (): Promise<void> => {
    if (!mounted) return;
    mounted = false;
    const u = await cli(['unmount', root]);
    if (u.code !== 0) {
      await detachMountsUnder(dir);
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      throw new Error(`unmount failed (${u.code}): ${u.stderr}`);
    }
  };
  t.teardown(async () => {
    // A failed test shows what the daemon logged: the temp dir, log included, goes with it.
    // (In a hook `passed` is undefined: no verdict to go by.)
    if (t.passed === false) await printLogTail(t.title, path.join(root, 'nix/var/log/local-overlay.log'));
    await unmount().catch(() => undefined);
  });
  return { root, store: path.join(root, 'nix/store'), upper, work, lower, lowerStore: path.join(lower, 'nix/store'), dir, pid, mountStderr: r.stderr, unmount };
}

/** The last `lines` lines of a daemon's log, on stderr (a failed test's evidence). */
async function printLogTail(title: string, logFile: string, lines = 60): Promise<void> {
  const text = await fs.promises.readFile(logFile, 'utf8').catch((err: NodeJS.ErrnoException) => `(no log: ${err.code ?? String(err)})`);
  const tail = text.trimEnd().split('\n').slice(-lines).join('\n');
  process.stderr.write(`\n--- ${title}: the daemon's log (${logFile}), last ${lines} lines ---\n${tail}\n--- end of log ---\n`);
}
