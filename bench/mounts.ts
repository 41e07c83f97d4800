import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Every mount this benchmark makes is registered here until it is gone, so that a failure,
 * Ctrl-C or an uncaught error still unmounts it (`cleanupAllSync`, called from the runner's
 * exit paths). Only mounts and processes this process started are ever touched.
 */
export interface Registered {
  mountpoint: string;
  /** A daemon we started (fuse-overlayfs, local-overlay), killed if it outlives its mount. */
  pid: number | null;
}

const active = new Map<string, Registered>();

export function register(mountpoint: string, pid: number | null): void {
  active.set(mountpoint, { mountpoint, pid });
}

export function unregister(mountpoint: string): void {
  active.delete(mountpoint);
}

/** Mount points (octal escapes decoded) → filesystem type, from /proc/self/mountinfo. */
export function mountTable(): Map<string, string> {
  const out = new Map<string, string>();
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 10) continue;
    const mp = f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    out.set(mp, f[f.indexOf('-') + 1]);
  }
  return out;
}

export function isMounted(mountpoint: string): boolean {
  return mountTable().has(path.resolve(mountpoint));
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Last-resort cleanup, synchronous so it can run from an `exit` handler: lazily detaches
 * every registered mount that is still there (deepest first), then kills the daemons we
 * started that are still alive.
 */
export function cleanupAllSync(): void {
  const regs = [...active.values()].sort((a, b) => b.mountpoint.length - a.mountpoint.length);
  for (const r of regs) {
    if (isMounted(r.mountpoint)) {
      const u = spawnSync('umount', [r.mountpoint], { stdio: 'ignore' });
      if (u.status !== 0 && isMounted(r.mountpoint)) spawnSync('umount', ['-l', r.mountpoint], { stdio: 'ignore' });
    }
    if (r.pid !== null && processAlive(r.pid)) {
      try { process.kill(r.pid, 'SIGTERM'); } catch { /* gone */ }
    }
    active.delete(r.mountpoint);
  }
}

export function activeMounts(): string[] {
  return [...active.keys()];
}
