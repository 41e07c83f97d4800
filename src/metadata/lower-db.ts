import * as fs from 'node:fs';
import { Db, lowerDbUri, openDb } from './sqlite';
import { OutputRow, PathRow } from './rows';

/**
 * Read-only access to the lower store's DB.
 *
 * The connection is a snapshot: with `immutable=1` SQLite never looks for changes, so the
 * follower reopens it whenever the DB files change (`changed()`), and lookups use whatever
 * snapshot is current. Nothing here writes, locks for writing, or creates files next to it.
 */
export class LowerDb {
  private db: Db | null = null;
  private sig = '';

  constructor(readonly dbFile: string) {}

  get walFile(): string { return `${this.dbFile}-wal`; }

  /** The connection, opened on first use. */
  conn(): Db {
    if (this.db === null) this.reopen();
    return this.db as Db;
  }

  /** True when the DB files changed since the connection was opened (cheap: two lstats). */
  changed(): boolean {
    return this.signature() !== this.sig;
  }

  reopen(): void {
    this.close();
    this.sig = this.signature();
    const wal = fs.existsSync(this.walFile);
    this.db = openDb(lowerDbUri(this.dbFile, wal), { readonly: true, timeoutMs: 1000 });
  }

  close(): void {
    this.db?.close();
    this.db = null;
  }

  /** The URI to ATTACH this DB elsewhere with the same guarantees. */
  uri(): string {
    return lowerDbUri(this.dbFile, fs.existsSync(this.walFile));
  }

  private signature(): string {
    const a = fs.statSync(this.dbFile, { throwIfNoEntry: false });
    const b = fs.statSync(this.walFile, { throwIfNoEntry: false });
    return `${a?.mtimeMs}:${a?.size}:${b?.mtimeMs}:${b?.size}`;
  }

  pathRow(path: string): PathRow | undefined {
    return this.conn().prepare('SELECT * FROM ValidPaths WHERE path = ?').get(path) as PathRow | undefined;
  }

  maxId(): number {
    const r = this.conn().prepare('SELECT max(id) AS m FROM ValidPaths').get() as { m: number | null };
    return r.m ?? 0;
  }

  /** Every row of the closure of `path` (the path itself included), or [] if not valid. */
  closure(path: string): PathRow[] {
    return this.conn().prepare(`
      WITH RECURSIVE closure(id) AS (
        SELECT id FROM ValidPaths WHERE path = ?
        UNION
        SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id
      )
      SELECT v.* FROM ValidPaths v JOIN closure c ON v.id = c.id`).all(path) as PathRow[];
  }

  /** References of the row with id `id`, as paths. */
  references(id: number): string[] {
    return (this.conn().prepare(
      'SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?',
    ).all(id) as { path: string }[]).map((r) => r.path);
  }

  outputs(drvId: number): OutputRow[] {
    return this.conn().prepare('SELECT * FROM DerivationOutputs WHERE drv = ?').all(drvId) as OutputRow[];
  }
}
