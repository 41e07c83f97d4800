import * as fs from 'node:fs';
import * as path from 'node:path';
import { Db, openDb, readOnlyUri, Statement } from './sqlite';
import { NIX_SCHEMA_SQL, NIX_SCHEMA_VERSION } from './schema';
import { PathRow, PATH_COLUMNS, pagedValidNames, VALID_PAGE_SQL } from './rows';
import { DIR_MODE, FILE_MODE } from '../util/own-files';

/**
 * The merged store's own DB (`<merged>/nix/var/nix/db/db.sqlite`): exactly Nix's local-store
 * schema, created empty when missing and reused otherwise. Nix writes it concurrently with
 * us, so the connection waits only briefly for locks (callers retry with `withBusyRetry`).
 */
export class UpperDb {
  readonly db: Db;
  private readonly hasPathStmt;
  private readonly stmts = new Map<string, Statement>();

  private constructor(readonly dbDir: string, db: Db) {
    this.db = db;
    this.hasPathStmt = db.prepare('SELECT id FROM ValidPaths WHERE path = ?').pluck();
  }

  /** A statement prepared once (the connection lives as long as this object). */
  stmt(sql: string): Statement {
    let st = this.stmts.get(sql);
    if (st === undefined) {
      st = this.db.prepare(sql);
      this.stmts.set(sql, st);
    }
    return st;
  }

  /** Opens the DB in `dbDir`, creating it (schema, `schema` file, WAL mode) when missing. */
  static open(dbDir: string, opts: { timeoutMs?: number } = {}): UpperDb {
    const file = path.join(dbDir, 'db.sqlite');
    const fresh = !fs.existsSync(file);
    if (fresh) fs.mkdirSync(dbDir, { recursive: true, mode: DIR_MODE });
    const db = openDb(file, { timeoutMs: opts.timeoutMs ?? 50 });
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    // As Nix sets it: in WAL mode a commit does not wait for fsync, a checkpoint does.
    db.pragma('synchronous = NORMAL');
    // The closure copy's and the mirror's scratch tables (copy-rows.ts) stay in memory.
    db.pragma('temp_store = MEMORY');
    if (fresh) {
      db.exec(NIX_SCHEMA_SQL);
      fs.writeFileSync(path.join(dbDir, 'schema'), String(NIX_SCHEMA_VERSION), { mode: FILE_MODE });
    }
    return new UpperDb(dbDir, db);
  }

  /**
   * Opens an existing upper DB for reading only (explain, verify): a snapshot through the same
   * URI rules as the lower DB, so reading creates no files. Null when there is no DB.
   */
  static openSnapshot(dbDir: string): UpperDb | null {
    const file = path.join(dbDir, 'db.sqlite');
    if (!fs.existsSync(file)) return null;
    return new UpperDb(dbDir, openDb(readOnlyUri(file, fs.existsSync(`${file}-wal`)), { readonly: true, timeoutMs: 2000 }));
  }

  /** The schema version the `schema` file declares, or null when there is none. */
  static schemaVersion(dbDir: string): number | null {
    try {
      return Number.parseInt(fs.readFileSync(path.join(dbDir, 'schema'), 'utf8').trim(), 10);
    } catch {
      return null;
    }
  }

  idOf(storePath: string): number | undefined {
    return this.hasPathStmt.get(storePath) as number | undefined;
  }

  /** The names of every valid path, in bytewise order (pagedValidNames). */
  validNames(storeDir: string): Generator<string> {
    return pagedValidNames(storeDir, (after) => this.stmt(VALID_PAGE_SQL).pluck().all(after) as string[]);
  }

  pathRow(storePath: string): PathRow | undefined {
    return this.stmt('SELECT * FROM ValidPaths WHERE path = ?').get(storePath) as PathRow | undefined;
  }

  references(id: number): string[] {
    return (this.stmt('SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?')
      .all(id) as { path: string }[]).map((r) => r.path);
  }

  /** The valid paths in the closure of `paths` (those of them that are valid included), as Nix's GC follows references. */
  closure(paths: readonly string[]): string[] {
    return this.stmt(`
      WITH RECURSIVE c(id) AS (
        SELECT id FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?))
        UNION
        SELECT r.reference FROM Refs r JOIN c ON r.referrer = c.id)
      SELECT v.path FROM c JOIN ValidPaths v ON v.id = c.id`).pluck().all(JSON.stringify(paths)) as string[];
  }

  insertPath(row: PathRow): number {
    const info = this.stmt(
      `INSERT INTO ValidPaths (${PATH_COLUMNS}) VALUES (@path, @hash, @registrationTime, @deriver, @narSize, @ultimate, @sigs, @ca)`,
    ).run(row);
    return Number(info.lastInsertRowid);
  }

  close(): void {
    if (!this.db.readonly) try { this.db.pragma('wal_checkpoint(PASSIVE)'); } catch { /* Nix may hold it; fine */ }
    this.db.close();
  }
}
