import { spawn } from 'node:child_process';
import { log } from '../util/log';
import { LOCK_MODE, touchFile } from '../util/own-files';

/** Nix's GC lock, held: release() lets the next one who waits for it go on. */
export interface GcLock {
  release(): void;
}

/** A lock this process took: `gone` settles once the `flock` child holding it has exited (the lock is free). */
export interface HeldGcLock extends GcLock {
  readonly gone: Promise<void>;
}

/**
 * Takes Nix's GC lock (`ROOT/nix/var/nix/gc.lock`) shared. Nix 2.8's garbage collector takes
 * it exclusively and waits ("waiting for the big garbage collector lock..."); everything else
 * that takes it (adding temp roots) takes it shared, so builds and adds go on.
 *
 * Node has no flock(2), so a `flock` child (util-linux) holds it and waits on a pipe from this
 * process: the lock goes when release() closes the pipe, or when this process dies in any way.
 * Resolves to null (after logging why) if the lock cannot be had within `timeoutS`, e.g. a GC
 * is running, or `flock` is missing.
 */
export async function holdGcLockShared(lockFile: string, timeoutS = 10): Promise<GcLock | null> {
  const r = await takeGcLock(lockFile, 'shared', timeoutS);
  if (r.lock === null) log.warn(`gc lock: ${r.why}`);
  return r.lock;
}

/**
 * The lock at once if it is free (`flock --nonblock`): the lock; `busy` when it is taken (a GC
 * runs); null when it could not even be asked for (logged: flock missing or failing).
 */
export async function tryGcLockShared(lockFile: string): Promise<GcLock | 'busy' | null> {
  const r = await takeGcLock(lockFile, 'shared', 0);
  if (r.lock !== null) return r.lock;
  if (r.busy) return 'busy';
  log.warn(`gc lock: ${r.why}`);
  return null;
}

export type GcLockResult = { lock: HeldGcLock; busy?: undefined; why?: undefined } | { lock: null; busy: boolean; why: string };

/**
 * Takes Nix's GC lock exclusively, as Nix 2.8's `collectGarbage` does, for a change that a
 * running Nix client must be protected from (optimise removing upper copies). While it is held,
 * no GC runs and a Nix client that adds a temporary root cannot take the lock shared: it sends
 * the root to the GC's socket instead (temp-roots.ts serves it), or, finding no socket, goes
 * on with the root unsent. So whoever holds this must serve that socket for as long as it does.
 * `timeoutS` 0 asks once (`busy` when someone holds it, shared or exclusive).
 */
export function takeGcLockExclusive(lockFile: string, timeoutS: number): Promise<GcLockResult> {
  return takeGcLock(lockFile, 'exclusive', timeoutS);
}

function takeGcLock(lockFile: string, mode: 'shared' | 'exclusive', timeoutS: number): Promise<GcLockResult> {
  // As Nix makes it (0600); flock, which inherits the daemon's umask 0, would make it 0666.
  try { touchFile(lockFile, LOCK_MODE); } catch { /* flock says what is wrong */ }
  return new Promise((resolve) => {
    const wait = timeoutS > 0 ? ['--timeout', String(timeoutS)] : ['--nonblock'];
    const child = spawn('flock', [`--${mode}`, ...wait, lockFile, 'sh', '-c', 'echo locked; read _'],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    let settled = false;
    let stderr = '';
    const gone = new Promise<void>((res) => child.once('close', () => res()));
    const give = (r: GcLockResult): void => {
      if (settled) return;
      settled = true;
      resolve(r);
    };
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.stdout.on('data', (d: Buffer) => {
      if (!d.toString().includes('locked')) return;
      give({
        lock: {
          release: () => {
            child.stdin.end();
            setTimeout(() => child.kill(), 1000).unref();
          },
          gone,
        },
      });
    });
    child.on('error', (err) => give({ lock: null, busy: false, why: `cannot run flock: ${err.message}` }));
    // flock exits 1, saying nothing, when the lock stays taken (timeout or --nonblock).
    child.on('exit', (code) => give({
      lock: null, busy: code === 1 && stderr.trim() === '',
      why: `flock exited (${String(code)}) before taking ${lockFile}: ${stderr.trim() || 'timed out'}`,
    }));
    child.stdin.on('error', () => { /* the child is gone: nothing to release */ });
  });
}
