import { BeforeCommitFailed, ClosureTooLarge, copyClosure, copyClosureRowByRow, copyIdList, ReferencesAfterReferrers, startIdList } from './closure';
import { IncompleteClosure, withLowerAttached } from './copy-rows';
import { LowerDb } from './lower-db';
import { isBusy, isTornRead, LowerFileChanged } from './sqlite';
import { UpperDb } from './upper-db';

/**
 * Closures up to this many rows are first copied in one transaction (copyClosure): the common
 * case, and the fastest (a 1,000-row closure in ~12 ms, a 10,000-row one in ~100). A larger one
 * goes in pieces from the start, so that it does not hold the JS thread, and with it every FUSE
 * request that JS answers, for as long as its copy takes (an 88k-row closure 1-2 s). Pieces
 * cost more in all: with a bound of 4,000 rows the bench's 10,000-path first lookups took p50
 * 157-170 ms against 95-103 in one transaction (lazy-lookup --reps 3, 2026-12-01), so the
 * bound sits above them; one copy holds the thread at most ~150 ms.
 */
export const WHOLE_ROWS = 16_000;
/** Rows per piece: the first, the most (a piece holds the thread ~12 ms per 1,000), the fewest. */
const FIRST_PIECE = 2_000;
const MAX_PIECE = 4_000;
const MIN_PIECE = 8;
/** Ids whose references one read of the closure walk asks for. */
const WALK_BATCH = 4_000;
/** A copy that made no progress (no piece committed, no walk read whole) for this long fails. */
const STALL_MS = 10_000;

export interface CopyHooks {
  /** Before each write transaction: a promise to wait for first (the checkpointer's settle), or null. */
  beforeWrite?: () => Promise<void> | null;
  /** After each transaction that added rows. */
  wrote?: () => void;
  /** True once the DBs are closing: the copy stops before its next read or transaction. */
  stopped?: () => boolean;
  /** Each transaction's last step before its COMMIT, as copyClosure's `beforeCommit`. */
  beforeCommit?: (before: number) => void;
}

export interface CopyReport {
  /** ValidPaths rows added. */
  rows: number;
  /** Transactions that added them (1: in one piece). */
  transactions: number;
  /** Reads of the lower DB that were torn (its file changed meanwhile) and made again. */
  torn: number;
  /** Whether the copy stopped because the DBs were closing (CopyHooks.stopped). */
  stopped: boolean;
}

/**
 * copyClosure for a lookup, which must not fail because a writer keeps checkpointing into the
 * lower DB file (a busy lower store: `nix-store --add` 20 times a second tore every try of an
 * 88k-row copy, ~1-2 s long, and 7 of 10 tries of 8k-row ones).
 *
 * First, the closure in one transaction (copyClosure), if it has at most `wholeRows` rows
 * (WHOLE_ROWS).
 * When that read is torn, or the closure is larger, in pieces that a tear cannot defeat:
 *  1. the closure's lower ids are collected by a walk in batches (WALK_BATCH ids whose
 *     references one read asks for), each batch read again if the file changed meanwhile; a
 *     path's references never change, so batches read from different versions of the file
 *     add up to the closure;
 *  2. its rows are copied in lower id order, the paths asked for last, in pieces of at most
 *     MAX_PIECE rows, each its own transaction, committed only when the file did not change
 *     while it was read. A torn piece is rolled back and tried again, a quarter as large
 *     (a checkpoint has just ended: the next one is furthest away); a whole one lets the
 *     next grow.
 * Nix registers references before referrers, so lower id order is references first, and every
 * committed piece keeps the merged DB's invariant: each of its rows has its references' rows
 * (copyLowerRows throws IncompleteClosure otherwise, and the piece is rolled back). So any row
 * the merged DB has, a piece's included, has its whole closure there, and the paths asked for
 * get theirs only once everything they refer to is in. A lower DB not in that order (other
 * tools) is caught the same way and copied by copyClosureRowByRow in one transaction.
 *
 * Between pieces and walk batches the JS thread is given back (setImmediate), so other FUSE
 * requests, and other lookups' copies, go on. Two copies of overlapping closures may run
 * interleaved: each piece skips the rows the merged DB has by then (by path), whoever copied
 * them, and their rows are whole closures by the invariant above.
 *
 * Waits for SQLITE_BUSY (Nix writes the merged DB) and retries; fails when no piece or batch
 * got done for STALL_MS. Throws what is not a torn read or SQLITE_BUSY.
 */
export async function copyClosureInPieces(
  upper: UpperDb, lower: LowerDb, paths: readonly string[], hooks: CopyHooks = {}, wholeRows = WHOLE_ROWS,
): Promise<CopyReport> {
  const report: CopyReport = { rows: 0, transactions: 0, torn: 0, stopped: false };
  const wait = new Backoff();
  const stop = (): CopyReport => ({ ...report, stopped: true });
  for (;;) {
    if (!(await beforeWrite(hooks))) return stop();
    try {
      report.rows = copyClosure(upper, lower, paths, { maxRows: wholeRows, beforeCommit: hooks.beforeCommit });
      report.transactions = 1;
      if (report.rows > 0) hooks.wrote?.();
      return report;
    } catch (err) {
      if (err instanceof ClosureTooLarge) break;
      if (isTornRead(err)) {
        report.torn++;
        break;
      }
      if (!isBusy(err)) throw err;
      await wait.busy(err);
    }
  }

  const todo = paths.filter((p) => upper.idOf(p) === undefined);
  const ids = await walk(lower, todo, report, wait, hooks);
  if (ids === null) return stop();
  let size = FIRST_PIECE;
  for (let i = 0; i < ids.length;) {
    if (!(await beforeWrite(hooks))) return stop();
    const piece = ids.slice(i, i + size);
    try {
      const n = copyPiece(upper, lower, piece, hooks.beforeCommit);
      report.rows += n;
      report.transactions++;
      if (n > 0) hooks.wrote?.();
      i += piece.length;
      size = Math.min(MAX_PIECE, size * 2);
      wait.progress();
    } catch (err) {
      if (err instanceof OutOfOrder) {
        report.rows += copyClosureRowByRow(upper, lower, todo, hooks.beforeCommit);
        report.transactions++;
        if (report.rows > 0) hooks.wrote?.();
        return report;
      }
      if (isTornRead(err)) {
        report.torn++;
        size = Math.max(MIN_PIECE, Math.floor(size / 4));
        await wait.torn(err);
      } else if (isBusy(err)) {
        await wait.busy(err);
      } else {
        throw err;
      }
      continue;
    }
    await yieldThread();
  }
  return report;
}

/**
 * The lower ids of the closures of `paths`, in id order with the ids of `paths` last; null if
 * the copy was stopped. Each batch's read is checked against the file's identity and made again
 * when torn.
 */
async function walk(lower: LowerDb, paths: readonly string[], report: CopyReport, wait: Backoff, hooks: CopyHooks): Promise<number[] | null> {
  const read = <T>(f: () => T): T => {
    const file = lower.fileIdentity();
    const r = f();
    if (lower.fileIdentity() !== file) throw new LowerFileChanged('a closure walk');
    return r;
  };
  let top: number[];
  for (;;) {
    if (hooks.stopped?.()) return null;
    try {
      top = read(() => lower.idsOf(paths));
      break;
    } catch (err) {
      if (!isTornRead(err)) throw err;
      report.torn++;
      await wait.torn(err);
    }
  }
  const seen = new Set(top);
  const queue = [...top];
  let batch = WALK_BATCH;
  for (let i = 0; i < queue.length;) {
    if (hooks.stopped?.()) return null;
    const ids = queue.slice(i, i + batch);
    let refs: number[];
    try {
      refs = read(() => lower.referenceIds(ids));
    } catch (err) {
      if (!isTornRead(err)) throw err;
      report.torn++;
      batch = Math.max(MIN_PIECE, Math.floor(batch / 4));
      await wait.torn(err);
      continue;
    }
    i += ids.length;
    batch = Math.min(WALK_BATCH, batch * 2);
    wait.progress();
    for (const r of refs) {
      if (!seen.has(r)) {
        seen.add(r);
        queue.push(r);
      }
    }
    await yieldThread();
  }
  const asked = new Set(top);
  const rest = queue.filter((id) => !asked.has(id)).sort((a, b) => a - b);
  return rest.concat([...asked].sort((a, b) => a - b));
}

/** A piece could not be copied in lower id order (its references come later): not Nix's order. */
class OutOfOrder extends Error {}

/**
 * The rows with lower ids `ids` the merged DB lacks, in one transaction; their references must be
 * there or among them. `beforeCommit` as copyClosure's (what it throws is thrown as it is).
 */
function copyPiece(upper: UpperDb, lower: LowerDb, ids: readonly number[], beforeCommit?: (before: number) => void): number {
  const db = upper.db;
  const file = lower.fileIdentity();
  try {
    return withLowerAttached(db, lower, () => db.transaction((): number => {
      startIdList(db);
      db.prepare('INSERT INTO temp.lower_ids (id) SELECT value FROM json_each(?)').run(JSON.stringify(ids));
      return copyIdList(db, lower, file, 'a piece of a closure copy', beforeCommit);
    }).immediate());
  } catch (err) {
    if (err instanceof BeforeCommitFailed) throw err.reason;
    if (isBusy(err) || err instanceof LowerFileChanged) throw err;
    // A torn read can miss a reference's row too: whatever failed, it was a torn read.
    if (lower.fileIdentity() !== file) throw new LowerFileChanged('a piece of a closure copy');
    if (err instanceof IncompleteClosure || err instanceof ReferencesAfterReferrers) throw new OutOfOrder();
    throw err;
  }
}

/** Waits for a hook's promise; false when the copy is to stop. */
async function beforeWrite(hooks: CopyHooks): Promise<boolean> {
  if (hooks.stopped?.()) return false;
  const settling = hooks.beforeWrite?.();
  if (settling) await settling;
  return !hooks.stopped?.();
}

/** Lets the FUSE requests and timers queued meanwhile run. */
function yieldThread(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Delays between tries: after a torn read a few ms (a checkpoint takes that long), after
 * SQLITE_BUSY 5 ms doubling to 200; throws the last error once STALL_MS passed without progress.
 */
class Backoff {
  private since = Date.now();
  private busyDelay = 5;

  progress(): void {
    this.since = Date.now();
    this.busyDelay = 5;
  }

  torn(err: unknown): Promise<void> {
    return this.after(err, 5);
  }

  busy(err: unknown): Promise<void> {
    const d = this.busyDelay;
    this.busyDelay = Math.min(this.busyDelay * 2, 200);
    return this.after(err, d);
  }

  private after(err: unknown, ms: number): Promise<void> {
    if (Date.now() - this.since > STALL_MS) return Promise.reject(err);
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}
