import * as fs from 'node:fs';
import { Db, isTornRead, lowerDbUri, openDb, Statement } from './sqlite';
import { OutputRow, PathRow, pagedValidNames, VALID_PAGE_SQL } from './rows';

/**
 * Read-only access to the lower store's DB.
 *
 * The connection is a snapshot: with `immutable=1` SQLite never looks for changes, and keeps
 * the pages it has read. Once a writer has changed the DB file (a Nix client checkpoints its
 * WAL when it exits), that connection mixes its cached pages with the file's new ones: its
 * next read fails with SQLITE_CORRUPT, or worse, answers from a B-tree that no longer exists.
 * So every read first looks whether the files changed (two stats) and reopens if they did,
 * and a read that still meets a torn file (a writer checkpointing at that moment) is retried
 * once on a new connection. Nothing here writes, locks for writing, or creates files next to it.
 */
export class LowerDb {
  private db: Db | null = null;
  private sig = '';
  private snapshotMax = 0;
  /** Prepared statements of the current connection (dropped with it on reopen). */
  private stmts = new Map<string, Statement>();

  constructor(readonly dbFile: string) {}

  get walFile(): string { return `${this.dbFile}-wal`; }

  /** The connection, opened on first use and reopened when the DB files have changed. */
  conn(): Db {
    if (this.db === null || this.changed()) this.reopen();
    return this.db as Db;
  }

  /** Runs a read (`f` uses `stmt`) on a current connection; once more on a new one if the file was torn. */
  private read<T>(f: () => T): T {
    try {
      return f();
    } catch (err) {
      if (!isTornRead(err)) throw err;
      this.reopen();
      return f();
    }
  }

  /** True when the DB files changed since the connection was opened (cheap: two stats). */
  changed(): boolean {
    return this.signature() !== this.sig;
  }

  /** The DB files' identity when the current connection was opened (its snapshot). */
  snapshotSignature(): string {
    this.conn();
    return this.sig;
  }

  /** A statement prepared once per connection (checks the files first: conn). */
  private stmt(sql: string): Statement {
    const db = this.conn();
    let st = this.stmts.get(sql);
    if (st === undefined) {
      st = db.prepare(sql);
      this.stmts.set(sql, st);
    }
    return st;
  }

  /** `signature`: the DB files' identity, when the caller has just read it (signatureAsync). */
  reopen(signature = this.signature()): void {
    this.close();
    this.sig = signature;
    const db = openDb(lowerDbUri(this.dbFile), { readonly: true, timeoutMs: 1000 });
    this.db = db;
    // A DB without Nix's tables fails where it is used, not here.
    try {
      this.snapshotMax = (db.prepare('SELECT max(id) AS m FROM ValidPaths').get() as { m: number | null }).m ?? 0;
    } catch {
      this.snapshotMax = 0;
    }
  }

  /** The largest id in the current snapshot, as read when it was opened (0 before): reads nothing. */
  get snapshotMaxId(): number {
    return this.snapshotMax;
  }

  close(): void {
    this.stmts.clear();
    this.db?.close();
    this.db = null;
  }

  /** The URI to ATTACH this DB elsewhere with the same guarantees. */
  uri(): string {
    return lowerDbUri(this.dbFile);
  }

  /** The DB files' identity now (inode, mtime, ctime and size of the DB and its WAL). */
  signature(): string {
    return identity(fs.statSync(this.dbFile, { throwIfNoEntry: false }), fs.statSync(this.walFile, { throwIfNoEntry: false }));
  }

  /**
   * The DB file's own identity (inode, times, size), not its WAL's: what changes when a writer
   * checkpoints into it, which is what can tear a read of it. A commit to the WAL does not.
   */
  fileIdentity(): string {
    const st = fs.statSync(this.dbFile, { bigint: true, throwIfNoEntry: false });
    return st === undefined ? 'absent' : `${st.ino}:${st.mtimeNs}:${st.ctimeNs}:${st.size}`;
  }

  /**
   * signature(), without blocking the calling thread: on a lower DB whose server stops
   * answering (a hung NFS mount), only this promise waits.
   */
  async signatureAsync(): Promise<string> {
    const stat = (f: string): Promise<fs.Stats | undefined> => fs.promises.stat(f).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    const [a, b] = await Promise.all([stat(this.dbFile), stat(this.walFile)]);
    return identity(a, b);
  }

  /** The signature of the current connection's snapshot ('' before the first open). */
  get openedSignature(): string {
    return this.sig;
  }

  pathRow(path: string): PathRow | undefined {
    return this.read(() => this.stmt('SELECT * FROM ValidPaths WHERE path = ?').get(path) as PathRow | undefined);
  }

  isValid(path: string): boolean {
    return this.read(() => this.stmt('SELECT 1 FROM ValidPaths WHERE path = ?').pluck().get(path)) !== undefined;
  }

  /** The names of every valid path, in bytewise order (pagedValidNames; each page on a current connection). */
  validNames(storeDir: string): Generator<string> {
    return pagedValidNames(storeDir, (after) => this.read(() => this.stmt(VALID_PAGE_SQL).pluck().all(after) as string[]));
  }

  /** Store paths with ids up to `maxId`, newest first, at most `limit` of them. */
  paths(maxId: number, limit: number): string[] {
    return this.read(() => this.stmt('SELECT path FROM ValidPaths WHERE id <= ? ORDER BY id DESC LIMIT ?').pluck().all(maxId, limit) as string[]);
  }

  /** Store paths with ids in (`after`, `upTo`], or null when there are more than `limit`. */
  pathsBetween(after: number, upTo: number, limit: number): string[] | null {
    const paths = this.read(() => this.stmt('SELECT path FROM ValidPaths WHERE id > ? AND id <= ? LIMIT ?').pluck().all(after, upTo, limit + 1) as string[]);
    return paths.length > limit ? null : paths;
  }

  /** The path of the row with id `id`, or null when there is none. */
  pathOfId(id: number): string | null {
    return (this.read(() => this.stmt('SELECT path FROM ValidPaths WHERE id = ?').pluck().get(id)) as string | undefined) ?? null;
  }

  /**
   * The highest id ValidPaths ever gave (AUTOINCREMENT's high-water mark in sqlite_sequence):
   * never less than an id it gave, also after that row was deleted; 0 for a DB that gave none.
   */
  idHighWater(): number {
    const r = this.read(() => this.stmt("SELECT seq FROM sqlite_sequence WHERE name = 'ValidPaths'").get() as { seq: number } | undefined);
    return r?.seq ?? 0;
  }

  maxId(): number {
    const r = this.read(() => this.stmt('SELECT max(id) AS m FROM ValidPaths').get() as { m: number | null });
    return r.m ?? 0;
  }

  /** Every row of the closure of `path` (the path itself included), or [] if not valid. */
  closure(path: string): PathRow[] {
    return this.read(() => this.stmt(`${LowerDb.CLOSURE}
      SELECT v.* FROM ValidPaths v JOIN closure c ON v.id = c.id`).all(path) as PathRow[]);
  }

  private static readonly CLOSURE = `
      WITH RECURSIVE closure(id) AS (
        SELECT id FROM ValidPaths WHERE path = ?
        UNION
        SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id
      )`;

  /**
   * Every reference edge inside the closure of `path`: referrer id → reference path. CROSS
   * JOIN fixes the order (closure first, then the referrer index); left to itself the planner
   * scans all of Refs (20 ms on a 100k-path DB, for any closure).
   */
  closureRefs(path: string): { referrer: number; path: string }[] {
    return this.read(() => this.stmt(`${LowerDb.CLOSURE}
      SELECT r.referrer AS referrer, v.path AS path FROM closure c
      CROSS JOIN Refs r ON r.referrer = c.id CROSS JOIN ValidPaths v ON v.id = r.reference`).all(path) as { referrer: number; path: string }[]);
  }

  /** Every derivation output row of the derivations in the closure of `path`. */
  closureOutputs(path: string): OutputRow[] {
    return this.read(() => this.stmt(`${LowerDb.CLOSURE}
      SELECT o.* FROM closure c JOIN DerivationOutputs o ON o.drv = c.id`).all(path) as OutputRow[]);
  }

  /** The ids of those of `paths` that are valid. */
  idsOf(paths: readonly string[]): number[] {
    return this.read(() => this.stmt('SELECT v.id FROM json_each(?) j CROSS JOIN ValidPaths v ON v.path = j.value')
      .pluck().all(JSON.stringify(paths)) as number[]);
  }

  /** The ids the rows with ids `ids` refer to (each once; self-references included). */
  referenceIds(ids: readonly number[]): number[] {
    return this.read(() => this.stmt('SELECT DISTINCT r.reference FROM json_each(?) j CROSS JOIN Refs r ON r.referrer = j.value')
      .pluck().all(JSON.stringify(ids)) as number[]);
  }

  /** References of the row with id `id`, as paths. */
  references(id: number): string[] {
    return this.read(() => this.stmt('SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?')
      .pluck().all(id) as string[]);
  }

  outputs(drvId: number): OutputRow[] {
    return this.read(() => this.stmt('SELECT * FROM DerivationOutputs WHERE drv = ?').all(drvId) as OutputRow[]);
  }
}

/**
 * The identity of the DB file and its WAL (either may be absent): inode, mtime, ctime and size
 * of each. Not mtime and size alone: a lower store replaced in place (a new image version, an
 * rsync of a rebuilt store) can bring a DB file of the same size whose mtime was kept or
 * normalised (images often set every mtime to 1), and it must still be seen as changed: the
 * follower reopens its snapshot on a change, and a remount syncs the GC roots again (their stamp
 * holds this identity). A new file has a new ctime (and usually a new inode), which no copy keeps.
 */
function identity(db: fs.Stats | undefined, wal: fs.Stats | undefined): string {
  const one = (st: fs.Stats | undefined): string => (st === undefined ? 'absent' : `${st.ino}:${st.mtimeMs}:${st.ctimeMs}:${st.size}`);
  return `${one(db)}:${one(wal)}`;
}
