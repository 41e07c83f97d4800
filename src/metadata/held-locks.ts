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
