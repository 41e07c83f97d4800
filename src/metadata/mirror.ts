import { copyClosure } from './closure';
import { copyLowerRows, IncompleteClosure, withLowerAttached } from './copy-rows';
import { LowerDb } from './lower-db';
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
 */
export class Mirror {
  private lastId = 0;

  constructor(private readonly upper: UpperDb, private readonly lower: LowerDb) {}

  get lastLowerId(): number { return this.lastId; }

  /** After the upper DB was seeded with every lower row up to `id` (seed.ts). */
  seeded(id: number): void { this.lastId = id; }

  /**
   * Imports the lower rows above lastLowerId. All in one transaction while the lower DB file
   * stays as it is; when a read of it is torn (a writer checkpointed into it meanwhile), in
   * smaller id ranges, each committed on its own once its read was whole, so that an import
   * longer than the gaps between a busy store's checkpoints still gets done. Throws after
   * IMPORT_TRIES torn reads in a row: the follower's next check goes on from lastLowerId.
   */
  importNew(): ImportResult {
    let count = 0;
    let paths: string[] | null = [];
    let span = Infinity;
    for (let torn = 0; ;) {
      let part: ImportResult & { done: boolean };
      try {
        part = this.importRange(span);
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
  private importRange(span: number): ImportResult & { done: boolean } {
    const db = this.upper.db;
    const since = this.lastId;
    const file = this.lower.fileIdentity();
    const maxId = this.lower.maxId();
    if (maxId <= since) return { count: 0, paths: [], done: true };
    const end = Math.min(maxId, since + span);
    const newPaths = (before: number, count: number): string[] | null => (count <= LIST_LIMIT
      ? db.prepare('SELECT path FROM main.ValidPaths WHERE id > ?').pluck().all(before) as string[]
      : null);
    let result: ImportResult;
    try {
      result = withLowerAttached(db, this.lower, () => db.transaction((): ImportResult => {
        const { count, before } = copyLowerRows(db, {
          where: 'l.id > ? AND l.id <= ?', params: [since, end], order: 'path',
          rebuildRefIndexes: (n) => n >= BULK_ROWS,
        });
        // A row a torn read missed would be missed for good: lastId moves past it.
        if (this.lower.fileIdentity() !== file) throw new LowerFileChanged('the mirror\'s import');
        return count === 0 ? { count: 0, paths: [] } : { count, paths: newPaths(before, count) };
      }).immediate());
    } catch (err) {
      if (!(err instanceof IncompleteClosure)) throw err;
      // An older lower path they refer to lost its row in the merged DB (Nix deleted a
      // duplicate's, and it is not restored yet): copy the new paths' closures whole instead.
      const before = db.prepare('SELECT coalesce(max(id), 0) FROM main.ValidPaths').pluck().get() as number;
      const paths = this.lower.pathsBetween(since, end, Number.MAX_SAFE_INTEGER) ?? [];
      const count = copyClosure(this.upper, this.lower, paths);
      result = { count, paths: newPaths(before, count) };
    }
    this.lastId = end;
    return { ...result, done: end === maxId };
  }
}
