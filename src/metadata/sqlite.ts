import Database = require('better-sqlite3');

/**
 * The one module that imports better-sqlite3. The lower DB is only ever opened through
 * `lowerDbUri`: read-only, and `immutable` when no writer has a WAL open, so that SQLite takes
 * no lock and creates no `-wal`/`-shm` file beside it (a plain read-only open of a WAL-mode DB
 * creates both). Requires a better-sqlite3 built with SQLITE_USE_URI=1 (scripts/build-native.sh).
 */
export type Db = Database.Database;
export type Statement = Database.Statement;

export function openDb(file: string, opts: { readonly?: boolean; timeoutMs?: number } = {}): Db {
  return new Database(file, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false, timeout: opts.timeoutMs ?? 5000 });
}

/** A SQLite URI for the lower DB: `immutable=1` when no WAL is present, else `mode=ro`. */
export function lowerDbUri(dbFile: string, walPresent: boolean): string {
  const enc = encodeURI(dbFile).replace(/\?/g, '%3f').replace(/#/g, '%23');
  return `file:${enc}?${walPresent ? 'mode=ro' : 'mode=ro&immutable=1'}`;
}

const BUSY = new Set(['SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_BUSY_RECOVERY', 'SQLITE_LOCKED']);

export function isBusy(err: unknown): boolean {
  return err !== null && typeof err === 'object' && BUSY.has(String((err as { code?: unknown }).code));
}

/**
 * Runs `f` (one short transaction) and retries it on SQLITE_BUSY without blocking the event
 * loop: Nix writes the same DB concurrently, and the FUSE callbacks share this thread.
 */
export function withBusyRetry<T>(f: () => T, deadlineMs = 10_000): Promise<T> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    let delay = 5;
    const attempt = (): void => {
      try {
        resolve(f());
      } catch (err) {
        if (!isBusy(err) || Date.now() - start > deadlineMs) return reject(err);
        setTimeout(attempt, delay);
        delay = Math.min(delay * 2, 200);
      }
    };
    attempt();
  });
}
