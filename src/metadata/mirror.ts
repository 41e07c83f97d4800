import { LowerDb } from './lower-db';
import { UpperDb } from './upper-db';

/**
 * Mirror mode: the upper DB holds a row for every lower store object, because plain Nix asks
 * its DB before it touches the filesystem. `importNew` copies the lower rows with an id above
 * the last one seen (all of them the first time) in one transaction: ValidPaths first, then
 * their Refs and DerivationOutputs, mapped to the upper DB's ids. Paths the upper DB already
 * knows keep their upper rows. The lower DB is a closed set, so every import is closure-complete.
 */
export class Mirror {
  private lastId = 0;

  constructor(private readonly upper: UpperDb, private readonly lower: LowerDb) {}

  get lastLowerId(): number { return this.lastId; }

  /** Imports lower rows newer than the last import; returns the names of added paths. */
  importNew(): string[] {
    const db = this.upper.db;
    const since = this.lastId;
    const maxId = this.lower.maxId();
    if (maxId <= since) return [];
    db.exec(`ATTACH DATABASE '${this.lower.uri().replace(/'/g, "''")}' AS lower`);
    try {
      const added = db.transaction(() => {
        db.exec('CREATE TEMP TABLE IF NOT EXISTS imported (path TEXT PRIMARY KEY)');
        db.exec('DELETE FROM temp.imported');
        db.prepare(`
          INSERT INTO temp.imported (path)
          SELECT l.path FROM lower.ValidPaths l
          WHERE l.id > ? AND l.id <= ? AND NOT EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = l.path)
          ORDER BY l.id`).run(since, maxId);
        db.exec(`
          INSERT INTO main.ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
          SELECT l.path, l.hash, l.registrationTime, l.deriver, l.narSize, l.ultimate, l.sigs, l.ca
          FROM temp.imported i JOIN lower.ValidPaths l ON l.path = i.path ORDER BY l.id`);
        db.exec(`
          INSERT OR IGNORE INTO main.Refs (referrer, reference)
          SELECT ur.id, ud.id
          FROM temp.imported i
          JOIN lower.ValidPaths lr ON lr.path = i.path
          JOIN lower.Refs r ON r.referrer = lr.id
          JOIN lower.ValidPaths ld ON ld.id = r.reference
          JOIN main.ValidPaths ur ON ur.path = i.path
          JOIN main.ValidPaths ud ON ud.path = ld.path`);
        db.exec(`
          INSERT OR IGNORE INTO main.DerivationOutputs (drv, id, path)
          SELECT ud.id, o.id, o.path
          FROM temp.imported i
          JOIN lower.ValidPaths lr ON lr.path = i.path
          JOIN lower.DerivationOutputs o ON o.drv = lr.id
          JOIN main.ValidPaths ud ON ud.path = i.path`);
        return (db.prepare('SELECT path FROM temp.imported').pluck().all() as string[]);
      }).immediate();
      this.lastId = maxId;
      return added;
    } finally {
      db.exec('DETACH DATABASE lower');
    }
  }
}
