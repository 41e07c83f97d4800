import * as fs from 'node:fs';
import type { HeldLocks } from '../metadata/held-locks';

/**
 * The flock(2) locks held on the mount, read from /proc/locks, for the mirror's lock probe
 * (metadata/held-locks.ts).
 *
 * Nix 2.8 locks store path P with flock on `P.lock` (pathlocks.cc). fuse-native registers no
 * lock operations, so the kernel keeps flock locks on a FUSE file itself, on the FUSE inode
 * (fs/fuse/file.c, fuse_file_flock): the daemon is never asked, and a flock it took on the
 * upper file would be on another inode, deciding nothing. /proc/locks lists every lock the
 * kernel keeps as `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO ...` (device numbers in hex, the
 * FUSE superblock's here, as /proc/self/mountinfo gives them in decimal; the inode the number
 * the daemon gave the file, use_ino; layers/inodes.ts). Waiters (`N: -> FLOCK ...`) hold
 * nothing. Neither file is on the mount: the daemon serving it may read them synchronously.
 */
export function flockedInodes(dev: readonly [number, number], locksFile = '/proc/locks'): Set<number> {
  const out = new Set<number>();
  let text: string;
  try { text = fs.readFileSync(locksFile, 'latin1'); } catch { return out; }
  const want = `${hex2(dev[0])}:${hex2(dev[1])}:`;
  if (!text.includes(want)) return out;
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || f[5] === undefined || !f[5].startsWith(want)) continue;
    out.add(Number(f[5].slice(want.length)));
  }
  return out;
}

/** As /proc/locks prints a device number (%02x). */
function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/**
 * The lock probe of a mount: which of some store paths a client holds `<path>.lock` of through
 * it. While no flock is held on the mount at all, that is one read of /proc/locks; otherwise
 * one lookup in the upper index per path, and an lstat of each lock file that exists.
 * `upperIno` is the overlay's (Overlay.upperIno): null when the upper layer has no such name.
 */
export function outputLockProbe(dev: readonly [number, number], storeDir: string, upperIno: (name: string) => number | null,
  locksFile = '/proc/locks'): HeldLocks {
  const prefix = `${storeDir}/`;
  return (paths) => {
    const held = new Set<string>();
    const inodes = flockedInodes(dev, locksFile);
    if (inodes.size === 0) return held;
    for (const p of paths()) {
      if (!p.startsWith(prefix)) continue;
      const ino = upperIno(`${p.slice(prefix.length)}.lock`);
      if (ino !== null && inodes.has(ino)) held.add(p);
    }
    return held;
  };
}
