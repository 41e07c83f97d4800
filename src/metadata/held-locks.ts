import type { Database as Db } from 'better-sqlite3';
import { pathsAbove } from './rows';

/**
 * Which of the store paths `paths()` lists a client of the merged store holds the lock of:
 * Nix 2.8 locks a path P it is about to build or add with flock(2) on `P.lock` in the store
 * dir, then asks its DB whether P is valid, and from then on takes P for its own (a build
 * asserts, before it moves its output into place, that nobody registered P meanwhile). A row
 * of P that appears in the merged DB while such a lock is held breaks that: the mirror holds
 * P back until the lock is free (mirror.ts). `paths` is called only when some lock is held
 * through the mount at all, so the common answer, none, costs one read of /proc/locks
 * (mount/output-locks.ts).
 */
export type HeldLocks = (paths: () => Iterable<string>) => Set<string>;

/** A merged-store client took the lock of paths a copy was about to make valid: rolled back. */
export class LocksTaken extends Error {
  constructor(readonly paths: ReadonlySet<string>) {
    super(`a merged-store client took the lock of ${[...paths].join(', ')}`);
  }
}

/**
 * The last step of a transaction that adds rows, just before its COMMIT: throws LocksTaken
 * (which rolls it back) when a client holds the lock of a path the rows above `before` make valid.
 */
export function commitUnlocked(db: Db, before: number, held: HeldLocks): void {
  const taken = held(() => pathsAbove(db, before));
  if (taken.size > 0) throw new LocksTaken(taken);
}

/**
 * Sets aside the upper layer's objects among `paths`, which a transaction is about to make
 * valid (called just before its COMMIT): a copy adds only rows the merged DB lacks, so such an
 * object had no row, i.e. it is what an add or a substitution that did not finish left (Nix
 * 2.8 restores into the final path), and the lower copy's row would make it valid. Returns the
 * paths it left alone because a merged-store client holds their lock (it is writing them now).
 * The mount's (mount/daemon.ts).
 */
export type Leftovers = (paths: readonly string[]) => Set<string>;
