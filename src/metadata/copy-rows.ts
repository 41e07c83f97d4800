import type { Database as Db } from 'better-sqlite3';
import { LowerDb } from './lower-db';
import { maxValidId, PATH_COLUMNS } from './rows';

/**
 * Copies a set of lower DB rows into the upper DB inside SQLite, with the lower DB attached:
 * ValidPaths first, then their Refs and DerivationOutputs, mapped to upper ids through a
 * lower→upper id table. Paths the upper DB already has keep their rows. Shared by the mirror
 * (a range of lower ids) and the closure copy (a closure computed into `temp.lower_ids`).
 */
export interface RowSelection {
  /** SQL yielding the lower ids to copy as column `id` (alias `l` is lower.ValidPaths). */
  where: string;
  params: unknown[];
  /** `path` (the unique index grows at its end: bulk imports) or `id` (references first). */
  order: 'path' | 'id';
  /** Rebuild the Refs indexes instead of updating them row by row (large imports). */
  rebuildRefIndexes?: (newRows: number) => boolean;
}

export interface CopyResult {
  /** ValidPaths rows added. */
  count: number;
  /** The largest upper id before the copy: the new rows are the ones above it. */
  before: number;
}

/**
 * Runs `f` with the lower DB attached as `lower` and foreign-key checks off (the rows come
 * from a closed set, so they hold by construction; the pragma cannot change inside a
 * transaction). `f` runs its own transaction.
 */
export function withLowerAttached<T>(db: Db, lower: LowerDb, f: () => T): T {
  db.exec(`ATTACH DATABASE '${lower.uri().replace(/'/g, "''")}' AS lower`);
  const fk = db.pragma('foreign_keys', { simple: true }) as number;
  db.pragma('foreign_keys = OFF');
  try {
    return f();
  } finally {
    db.pragma(`foreign_keys = ${fk ? 'ON' : 'OFF'}`);
    db.exec('DETACH DATABASE lower');
  }
}

/** Rows copied would refer to paths the upper DB does not have (and the copy did not include). */
export class IncompleteClosure extends Error {
  constructor(readonly missing: number) {
    super(`${missing} references to paths the merged DB lacks`);
  }
}

/** Inside a transaction with the lower DB attached (withLowerAttached). */
export function copyLowerRows(db: Db, sel: RowSelection): CopyResult {
  const before = maxValidId(db);
  // The rows to copy, numbered in copy order. Each gets upper id `base + seq`, given explicitly:
  // the lower→upper id map is then known without looking every path up again (3 of the 18 ms
  // of a 1,000-row closure copy). Above AUTOINCREMENT's high-water mark, like an id it assigns.
  db.exec('CREATE TEMP TABLE IF NOT EXISTS todo (seq INTEGER PRIMARY KEY, lid INTEGER NOT NULL)');
  db.exec('DELETE FROM temp.todo');
  const count = db.prepare(`
    INSERT INTO temp.todo (lid)
    SELECT l.id FROM lower.ValidPaths l
    WHERE ${sel.where} AND NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path)
    ORDER BY l.${sel.order}`).run(...sel.params).changes;
  if (count === 0) return { count, before };
  const seq = db.prepare("SELECT seq FROM main.sqlite_sequence WHERE name = 'ValidPaths'").pluck().get() as number | undefined;
  const base = Math.max(before, seq ?? 0);
  db.prepare(`
    INSERT INTO main.ValidPaths (id, ${PATH_COLUMNS})
    SELECT ? + t.seq, ${PATH_COLUMNS.split(', ').map((c) => `l.${c}`).join(', ')}
    FROM temp.todo t JOIN lower.ValidPaths l ON l.id = t.lid
    ORDER BY t.seq`).run(base);

  db.exec('CREATE TEMP TABLE IF NOT EXISTS idmap (lid INTEGER PRIMARY KEY, uid INTEGER NOT NULL)');
  db.exec('DELETE FROM temp.idmap');
  db.prepare('INSERT INTO temp.idmap (lid, uid) SELECT lid, ? + seq FROM temp.todo').run(base);
  db.exec('DELETE FROM temp.todo');

  const indexes = sel.rebuildRefIndexes?.(count)
    ? db.prepare("SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND tbl_name = 'Refs' AND sql IS NOT NULL").all() as { name: string; sql: string }[]
    : [];
  for (const ix of indexes) db.exec(`DROP INDEX main.${ix.name}`);
  // A reference to a row outside this copy (one the upper DB had already) is found by path.
  // CROSS JOIN keeps idmap first: left to itself the planner scans all of lower.Refs (33 ms
  // for a 1,000-row closure in a 160k-path DB, against 2 ms).
  const refs = db.prepare(`
    INSERT OR IGNORE INTO main.Refs (referrer, reference)
    SELECT a.uid, coalesce(b.uid, (SELECT u.id FROM main.ValidPaths u
                                   WHERE u.path = (SELECT x.path FROM lower.ValidPaths x WHERE x.id = r.reference)))
    FROM temp.idmap a
    CROSS JOIN lower.Refs r ON r.referrer = a.lid
    LEFT JOIN temp.idmap b ON b.lid = r.reference
    ORDER BY 1, 2`).run().changes;
  // OR IGNORE would also drop a reference found in neither DB (its NOT NULL fails): a row Nix
  // deleted (a duplicate's, until it is restored). The caller must copy that closure whole.
  const wanted = db.prepare('SELECT count(*) FROM temp.idmap a CROSS JOIN lower.Refs r ON r.referrer = a.lid').pluck().get() as number;
  if (refs < wanted) throw new IncompleteClosure(wanted - refs);
  for (const ix of indexes) db.exec(ix.sql);
  db.exec(`
    INSERT OR IGNORE INTO main.DerivationOutputs (drv, id, path)
    SELECT a.uid, o.id, o.path FROM temp.idmap a CROSS JOIN lower.DerivationOutputs o ON o.drv = a.lid`);
  db.exec('DELETE FROM temp.idmap');
  return { count, before };
}
