import Database = require('better-sqlite3');

/**
 * The one module that imports better-sqlite3. The lower DB is only ever opened through
 * `lowerDbUri`: `mode=ro&immutable=1`, so SQLite takes no lock and opens no file beside it: no
 * `-wal`/`-shm` is created, and an existing one (a writer is active) is neither read nor
 * written. A plain read-only open of a WAL-mode DB creates both, and with a writer present it
 * writes its read marks into the writer's `-shm` and keeps the writer from removing its WAL at
 * close. The price: rows a writer has committed to its WAL show once it checkpoints them into
 * the DB file (a Nix client does when it exits). Requires a better-sqlite3 built with
 * SQLITE_USE_URI=1 (scripts/build-sqlite.sh).
 */
export type Db = Database.Database;
export type Statement = Database.Statement;

export function openDb(file: string, opts: { readonly?: boolean; timeoutMs?: number } = {}): Db {
  return new Database(file, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false, timeout: opts.timeoutMs ?? 5000 });
}

function fileUri(dbFile: string, params: string): string {
  return `file:${encodeURI(dbFile).replace(/\?/g, '%3f').replace(/#/g, '%23')}?${params}`;
}

/** The lower DB, read as an immutable snapshot (see above). */
export function lowerDbUri(dbFile: string): string {
  return fileUri(dbFile, 'mode=ro&immutable=1');
}

/**
 * One of our own DBs (the upper DB) read without writing: `immutable` when no WAL is present
 * (nothing is created), else a plain read-only open that sees the writers' latest commits.
 */
export function readOnlyUri(dbFile: string, walPresent: boolean): string {
  return fileUri(dbFile, walPresent ? 'mode=ro' : 'mode=ro&immutable=1');
}

const BUSY = new Set(['SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_BUSY_RECOVERY', 'SQLITE_LOCKED']);

export function isBusy(err: unknown): boolean {
  return err !== null && typeof err === 'object' && BUSY.has(String((err as { code?: unknown }).code));
}

/**
 * The lower DB file changed while a copy read it: a writer checkpointing into it can tear an
 * `immutable` read without any error (pages from two versions of its B-trees, rows that a page
 * held in neither missed). Thrown by the copies that check (mirror.ts, closure.ts) after their
 * transaction's reads; nothing was written.
 */
export class LowerFileChanged extends Error {
  constructor(what: string) {
    super(`the lower DB file changed while ${what} read it (a writer checkpointing into it); nothing was copied`);
  }
}

/**
 * An error from reading a DB file that changed under the connection or during the read: the
 * lower DB, opened `immutable`, while a Nix client checkpoints into it.
 */
export function isTornRead(err: unknown): boolean {
  if (err instanceof LowerFileChanged) return true;
  const code = String((err as { code?: unknown } | null)?.code ?? '');
  return code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB' || code === 'SQLITE_IOERR_SHORT_READ';
}

/** How many times withBusyRetry tries again after a torn read (a checkpoint takes milliseconds). */
const TORN_RETRIES = 3;

/**
 * Runs `f` (one short transaction) and retries it on SQLITE_BUSY without blocking the event
 * loop: Nix writes the same DB concurrently, and the FUSE callbacks share this thread. A torn
 * read of the lower DB (isTornRead) is retried a few times too.
 */
export function withBusyRetry<T>(f: () => T, deadlineMs = 10_000): Promise<T> {
  const start = Date.now();
  let torn = 0;
  return new Promise((resolve, reject) => {
    let delay = 5;
    const attempt = (): void => {
      try {
        resolve(f());
      } catch (err) {
        const again = isBusy(err) || (isTornRead(err) && torn++ < TORN_RETRIES);
        if (!again || Date.now() - start > deadlineMs) return reject(err);
        setTimeout(attempt, delay);
        delay = Math.min(delay * 2, 200);
      }
    };
    attempt();
  });
}
