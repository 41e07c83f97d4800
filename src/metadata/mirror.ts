import { LowerDb } from './lower-db';
import { UpperDb } from './upper-db';

/** Above this many new rows an import rebuilds the Refs indexes instead of updating them. */
const BULK_ROWS = 10_000;
/** Above this many new rows an import does not list them (callers then drop whole caches). */
const LIST_LIMIT = 10_000;

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

  importNew(): ImportResult {
    const db = this.upper.db;
    const since = this.lastId;
    const maxId = this.lower.maxId();
    if (maxId <= since) return { count: 0, paths: [] };
    db.exec(`ATTACH DATABASE '${this.lower.uri().replace(/'/g, "''")}' AS lower`);
    const fk = db.pragma('foreign_keys', { simple: true }) as number;
    db.pragma('foreign_keys = OFF');
    try {
      const result = db.transaction((): ImportResult => {
        const before = db.prepare('SELECT coalesce(max(id), 0) FROM main.ValidPaths').pluck().get() as number;
        // In path order: the unique path index then grows at its end instead of splitting pages.
        const count = db.prepare(`
          INSERT INTO main.ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
          SELECT l.path, l.hash, l.registrationTime, l.deriver, l.narSize, l.ultimate, l.sigs, l.ca
          FROM lower.ValidPaths l
          WHERE l.id > ? AND l.id <= ? AND NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path)
          ORDER BY l.path`).run(since, maxId).changes;
        if (count === 0) return { count: 0, paths: [] };

        db.exec('CREATE TEMP TABLE IF NOT EXISTS idmap (lid INTEGER PRIMARY KEY, uid INTEGER NOT NULL)');
        db.exec('DELETE FROM temp.idmap');
        db.prepare(`
          INSERT INTO temp.idmap (lid, uid)
          SELECT l.id, u.id FROM main.ValidPaths u JOIN lower.ValidPaths l ON l.path = u.path
          WHERE u.id > ?`).run(before);

        const indexes = count >= BULK_ROWS
          ? db.prepare("SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND tbl_name = 'Refs' AND sql IS NOT NULL").all() as { name: string; sql: string }[]
          : [];
        for (const ix of indexes) db.exec(`DROP INDEX main.${ix.name}`);
        // A reference to a row outside this import (an older lower row) is found by path.
        db.exec(`
          INSERT OR IGNORE INTO main.Refs (referrer, reference)
          SELECT a.uid, coalesce(b.uid, (SELECT u.id FROM main.ValidPaths u
                                         WHERE u.path = (SELECT x.path FROM lower.ValidPaths x WHERE x.id = r.reference)))
          FROM temp.idmap a
          JOIN lower.Refs r ON r.referrer = a.lid
          LEFT JOIN temp.idmap b ON b.lid = r.reference
          ORDER BY 1, 2`);
        for (const ix of indexes) db.exec(ix.sql);
        db.exec(`
          INSERT OR IGNORE INTO main.DerivationOutputs (drv, id, path)
          SELECT a.uid, o.id, o.path FROM temp.idmap a JOIN lower.DerivationOutputs o ON o.drv = a.lid`);
        const paths = count <= LIST_LIMIT
          ? db.prepare('SELECT path FROM main.ValidPaths WHERE id > ?').pluck().all(before) as string[]
          : null;
        db.exec('DELETE FROM temp.idmap');
        return { count, paths };
      }).immediate();
      this.lastId = maxId;
      return result;
    } finally {
      db.pragma(`foreign_keys = ${fk ? 'ON' : 'OFF'}`);
      db.exec('DETACH DATABASE lower');
    }
  }
}
