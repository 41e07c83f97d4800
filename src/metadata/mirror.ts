import type { Database as Db } from 'better-sqlite3';
import { copyClosure } from './closure';
import { copyLowerRows, IncompleteClosure, withLowerAttached } from './copy-rows';
import { commitUnlocked, HeldLocks, Leftovers, LocksTaken } from './held-locks';
import { LowerDb } from './lower-db';
import { maxValidId, pathsAbove } from './rows';
import { isTornRead, LowerFileChanged } from './sqlite';
import { UpperDb } from './upper-db';

/** Above this many new rows an import rebuilds the Refs indexes instead of updating them. */
const BULK_ROWS = 10_000;
/** Above this many new rows an import does not list them (callers then drop whole caches). */
export const LIST_LIMIT = 10_000;
/** How many torn reads in a row importNew takes before it leaves the rest to the next check. */
const IMPORT_TRIES = 3;
/** The smallest id range importNew commits on its own when reads keep being torn. */
const MIN_SPAN = 1_000;
/** What an import looks at besides its id range: the paths held back by an earlier one. */
const CANDIDATE = '((l.id > ? AND l.id <= ?) OR l.id IN (SELECT id FROM temp.mirror_waiting))';

export interface ImportResult {
  /** ValidPaths rows added. */
  count: number;
  /** The store paths added, or null when there were more than LIST_LIMIT. */
  paths: string[] | null;
}

/**
 * Mirror mode: the upper DB holds a row for every lower store object, because plain Nix asks
 * its DB before it touches the filesystem. `importNew` copies the lower rows with an id above
 * the last one seen (all of them the first time) in one transaction: ValidPaths first, then
 * their Refs and DerivationOutputs, mapped to the upper DB's ids through a lower→upper id
 * table. Paths the upper DB already knows keep their upper rows. The lower DB is a closed set,
 * so every import is closure-complete; foreign-key checks are therefore off during the import
 * (they hold by construction), and a large import rebuilds the two Refs indexes from their
 * own `sqlite_master` text rather than updating them row by row.
 *
 * Given a lock probe (the follower's imports while mounted; HeldLocks), an import holds back
 * every new path whose lock a client of the merged store holds, and every new path that refers
 * to one held back (their closures must stay whole): they wait in `waiting`, are part of every
 * later import (a referrer that comes later waits too), and go in with the first import that
 * finds their locks free. The mount's first import has no probe: no client can hold a lock
 * through a mount that is not there yet, and that import is the hot path (>= 200k rows/s).
 *
 * What is closed and what is not (the client's steps: lock, ask the DB, build, register):
 * - A lock held when the import looks (the last step before its COMMIT, so a lock taken
 *   while the rows were copied is seen too: rolled back, copied again without those paths):
 *   the path stays invalid to that client, which builds and registers its own copy; the lower
 *   copy's row then finds the merged DB's row there and is dropped (a duplicate, as ever).
 * - A lock taken after the COMMIT: the client's check after locking finds the path valid and
 *   uses it, which is Nix's own protocol.
 * - Stale lock files (left by a killed client, or unlinked by one still holding them) hold
 *   nothing back: only a flock held on the file the store dir has now counts.
 * - Not closed: a lock taken between the read of /proc/locks and the COMMIT, whose holder asks
 *   the DB before the COMMIT is visible (SQLite's write lock does not stop a WAL reader, and the
 *   daemon never hears of a flock: the kernel keeps it). The window is the COMMIT itself.
 * - Not covered: locks taken other than through the mount (a Nix pointed at the upper dir), and
 *   row copies other than the mirror's and the row restores (lazy lookups, `sync`, `verify --repair`).
 *
 * Given `leftovers` (set once mounted), every import's last steps set aside the upper objects
 * of the paths it makes valid, which had no row: partial adds that would otherwise shadow the
 * lower copy under its row. One whose lock a client holds is held back instead, as above. The
 * mount's first import has none: the daemon settles the rowless upper objects after it.
 */
export class Mirror {
  private lastId = 0;
  /**
   * The lower path whose id was lastId when it was set (null: no row had that id). Nix's ids are
   * AUTOINCREMENT, never reused: while the lower DB is the one imported from, that id still names
   * that path, or nothing once its path was deleted. Another path there means another DB file (a
   * lower store replaced in place, its DB made afresh with other ids): see renumbered.
   */
  private anchor: string | null = null;
  /** Lower paths held back (HeldLocks), by lower id. */
  private waiting = new Map<number, string>();
  /** Of `waiting`, the paths whose own lock was held when last looked at; the rest refer to one. */
  private locked = new Set<string>();
  /** Sets aside rowless upper objects an import is about to make valid (see the class). */
  leftovers: Leftovers | null = null;

  constructor(private readonly upper: UpperDb, private readonly lower: LowerDb) {}

  get lastLowerId(): number { return this.lastId; }

  /** The lower paths held back until a merged-store client releases a lock. */
  get waitingPaths(): string[] { return [...this.waiting.values()]; }

  /**
   * Whether an import may now let held-back paths go: a lock that held them is free. Cheap
   * enough for every follower tick: one read of /proc/locks, and an lstat per lock while held.
   */
  lockFreed(held: HeldLocks): boolean {
    if (this.waiting.size === 0) return false;
    const still = held(() => this.locked);
    return this.locked.size === 0 || [...this.locked].some((p) => !still.has(p));
  }

  /** After the upper DB was seeded with every lower row up to `id` (seed.ts). */
  seeded(id: number): void { this.setLast(id); }

  private setLast(id: number): void {
    this.lastId = id;
    this.anchor = id === 0 ? null : this.lower.pathOfId(id);
  }

  /**
   * Whether the lower DB's ids no longer mean what they meant when lastLowerId was set, so that
   * rows with ids up to lastLowerId may be paths the merged DB has never seen (a lower store
   * replaced in place by one made afresh: a new image version, a shared store rebuilt), which an
   * import of the ids above it would miss for good. Nix's ids are AUTOINCREMENT, never reused:
   * - that id names another path now (or a path, where it named none): another DB;
   * - it names nothing any more: a deletion (the lower store's GC of its newest path), unless its
   *   path is there under another id, or the DB never gave an id that high (a smaller new DB).
   * Three lookups by key; a deletion alone costs no rescan.
   */
  renumbered(): boolean {
    if (this.lastId === 0) return false;
    const now = this.lower.pathOfId(this.lastId);
    if (now !== null || this.anchor === null) return now !== this.anchor;
    return this.lower.idsOf([this.anchor]).length > 0 || this.lower.idHighWater() < this.lastId;
  }

  /** The next import looks at every lower row again (after renumbered); the paths held back are looked at again with them. */
  rewind(): void {
    this.lastId = 0;
    this.anchor = null;
    this.waiting.clear();
    this.locked.clear();
  }

  /**
   * Imports the lower rows above lastLowerId. All in one transaction while the lower DB file
   * stays as it is; when a read of it is torn (a writer checkpointed into it meanwhile), in
   * smaller id ranges, each committed on its own once its read was whole, so that an import
   * longer than the gaps between a busy store's checkpoints still gets done. Throws after
   * IMPORT_TRIES torn reads in a row: the follower's next check goes on from lastLowerId.
   * With `held`, paths whose lock a merged-store client holds wait (see the class).
   */
  importNew(held?: HeldLocks): ImportResult {
    let count = 0;
    let paths: string[] | null = [];
    let span = Infinity;
    for (let torn = 0; ;) {
      let part: ImportResult & { done: boolean };
      try {
        part = this.importRange(span, held);
      } catch (err) {
        if (!isTornRead(err) || ++torn >= IMPORT_TRIES) throw err;
        span = Math.max(MIN_SPAN, Math.floor(Math.min(span, this.lower.maxId() - this.lastId) / 4));
        continue;
      }
      torn = 0;
      count += part.count;
      paths = paths && part.paths && paths.length + part.paths.length <= LIST_LIMIT ? paths.concat(part.paths) : null;
      if (part.done) return { count, paths };
    }
  }

  /** The rows with ids in (lastLowerId, lastLowerId + span], in one transaction. */
  private importRange(span: number, held: HeldLocks | undefined): ImportResult & { done: boolean } {
    const db = this.upper.db;
    const since = this.lastId;
    const file = this.lower.fileIdentity();
    const maxId = this.lower.maxId();
    if (maxId <= since && this.waiting.size === 0) return { count: 0, paths: [], done: true };
    const end = Math.max(since, Math.min(maxId, since + span));
    let result: ImportResult;
    if (held !== undefined || this.waiting.size > 0) {
      result = this.importUnlocked(since, end, file, held ?? (() => new Set()));
    } else {
      try {
        result = withLowerAttached(db, this.lower, () => db.transaction((): ImportResult => {
          const { count, before } = copyLowerRows(db, {
            where: 'l.id > ? AND l.id <= ?', params: [since, end], order: 'path',
            rebuildRefIndexes: (n) => n >= BULK_ROWS,
          });
          // A row a torn read missed would be missed for good: lastId moves past it.
          if (this.lower.fileIdentity() !== file) throw new LowerFileChanged('the mirror\'s import');
          if (count === 0) return { count: 0, paths: [] };
          const paths = newPaths(db, before, count);
          this.setAsideLeftovers(db, before, paths, undefined);
          return { count, paths };
        }).immediate());
      } catch (err) {
        if (!(err instanceof IncompleteClosure)) throw err;
        // An older lower path they refer to lost its row in the merged DB (Nix deleted a
        // duplicate's, and it is not restored yet): copy the new paths' closures whole instead.
        const before = maxValidId(db);
        const count = copyClosure(this.upper, this.lower, this.lower.pathsBetween(since, end, Number.MAX_SAFE_INTEGER) ?? [],
          { beforeCommit: (b) => this.setAsideLeftovers(db, b, null, undefined) });
        result = { count, paths: newPaths(db, before, count) };
      }
    }
    this.setLast(end);
    return { ...result, done: end >= maxId };
  }

  /**
   * importRange with a lock probe: the rows in (since, end] and the ones waiting, but for those
   * held back, in one transaction whose last step looks at the locks again (commitUnlocked).
   * When that finds a lock taken meanwhile, the transaction is rolled back and made again with
   * that path held back too; `waiting` changes only once one commits.
   */
  private importUnlocked(since: number, end: number, file: string, held: HeldLocks): ImportResult {
    const db = this.upper.db;
    let locked: Set<string> | null = null;
    for (;;) {
      let back = new Map<number, string>();
      try {
        try {
          const result = withLowerAttached(db, this.lower, () => {
            this.fillWaitingTable(db);
            locked ??= held(() => db.prepare(`SELECT l.path FROM lower.ValidPaths l WHERE ${CANDIDATE}
              AND NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path)`).pluck().all(since, end) as string[]);
            const seeds = locked;
            return db.transaction((): ImportResult => {
              back = holdBack(db, since, end, seeds);
              const { count, before } = copyLowerRows(db, {
                where: `${CANDIDATE} AND l.id NOT IN (SELECT id FROM temp.mirror_held)`, params: [since, end], order: 'path',
                rebuildRefIndexes: (n) => n >= BULK_ROWS,
              });
              if (this.lower.fileIdentity() !== file) throw new LowerFileChanged('the mirror\'s import');
              const paths = newPaths(db, before, count);
              this.setAsideLeftovers(db, before, paths, held);
              commitUnlocked(db, before, held); // last: the window it leaves open is the COMMIT
              return { count, paths };
            }).immediate();
          });
          this.setWaiting(back, locked);
          return result;
        } catch (err) {
          if (!(err instanceof IncompleteClosure)) throw err;
        }
        // As in importRange (an older lower path lost its merged row): closures copied whole,
        // but for the paths held back, whose referrers are held back too.
        const backPaths = new Set(back.values());
        const paths = [...(this.lower.pathsBetween(since, end, Number.MAX_SAFE_INTEGER) ?? []), ...this.waiting.values()]
          .filter((p) => !backPaths.has(p));
        const before = maxValidId(db);
        const count = copyClosure(this.upper, this.lower, paths, {
          beforeCommit: (b) => { this.setAsideLeftovers(db, b, null, held); commitUnlocked(db, b, held); },
        });
        this.setWaiting(back, locked);
        return { count, paths: newPaths(db, before, count) };
      } catch (err) {
        if (!(err instanceof LocksTaken)) throw err;
        const seen: Set<string> = locked ?? new Set();
        // Every retry holds back one more path; one that held back nothing new would loop.
        if ([...err.paths].every((p) => seen.has(p))) throw new Error(`the mirror's import: ${err.message}, and holding it back did not keep it out`);
        locked = new Set([...seen, ...err.paths]);
      }
    }
  }

  /**
   * Inside an import's transaction, before its COMMIT: the rows above `before` (`paths`, or null
   * when not listed) go in without the upper objects of their names (leftovers). Throws
   * LocksTaken for one a client holds the lock of, which rolls the import back; with `held` it
   * is then made again with that path held back. Without a probe (`held` undefined) none is held.
   */
  private setAsideLeftovers(db: Db, before: number, paths: string[] | null, held: HeldLocks | undefined): void {
    if (this.leftovers === null) return;
    const locked = this.leftovers(paths ?? pathsAbove(db, before));
    if (locked.size > 0 && held !== undefined) throw new LocksTaken(locked);
  }

  /** temp.mirror_waiting: the lower ids of `waiting`, for CANDIDATE (outside a transaction). */
  private fillWaitingTable(db: Db): void {
    db.exec('CREATE TEMP TABLE IF NOT EXISTS mirror_waiting (id INTEGER PRIMARY KEY)');
    db.exec('DELETE FROM temp.mirror_waiting');
    const ins = db.prepare('INSERT INTO temp.mirror_waiting (id) VALUES (?)');
    for (const id of this.waiting.keys()) ins.run(id);
  }

  private setWaiting(back: Map<number, string>, locked: Set<string> | null): void {
    this.waiting = back;
    this.locked = new Set([...back.values()].filter((p) => locked?.has(p)));
  }
}

/**
 * Inside an import's transaction, lower attached: fills temp.mirror_held with the paths that
 * must wait, the lower paths whose lock is held (`locked`) and, transitively, their referrers
 * among the import's rows (CANDIDATE) or older ones missing from the merged DB (which a closure
 * copy would bring along), and returns those the merged DB lacks, by lower id. Referrers above
 * the range wait once their import comes: they refer to a path waiting, part of it.
 */
function holdBack(db: Db, since: number, end: number, locked: ReadonlySet<string>): Map<number, string> {
  db.exec('CREATE TEMP TABLE IF NOT EXISTS mirror_held (id INTEGER PRIMARY KEY)');
  db.exec('DELETE FROM temp.mirror_held');
  if (locked.size === 0) return new Map();
  const seed = db.prepare('INSERT OR IGNORE INTO temp.mirror_held (id) SELECT id FROM lower.ValidPaths WHERE path = ?');
  for (const p of locked) seed.run(p);
  db.prepare(`
    INSERT OR IGNORE INTO temp.mirror_held (id)
    WITH RECURSIVE up(id) AS (
      SELECT id FROM temp.mirror_held
      UNION
      SELECT r.referrer FROM up CROSS JOIN lower.Refs r ON r.reference = up.id
      CROSS JOIN lower.ValidPaths l ON l.id = r.referrer
      WHERE ${CANDIDATE} OR (l.id <= ? AND NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path))
    )
    SELECT id FROM up`).run(since, end, since);
  const rows = db.prepare(`SELECT h.id AS id, l.path AS path FROM temp.mirror_held h CROSS JOIN lower.ValidPaths l ON l.id = h.id
    WHERE NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path)`).all() as { id: number; path: string }[];
  return new Map(rows.map((r) => [r.id, r.path]));
}

/** The paths of the `count` rows above `before`, or null when there are more than LIST_LIMIT. */
function newPaths(db: Db, before: number, count: number): string[] | null {
  if (count === 0) return [];
  return count <= LIST_LIMIT ? pathsAbove(db, before) : null;
}
