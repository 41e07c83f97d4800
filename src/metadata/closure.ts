import { copyLowerRows, withLowerAttached } from './copy-rows';
import { LowerDb } from './lower-db';
import { maxValidId, OutputRow, PathRow } from './rows';
import { isBusy, LowerFileChanged } from './sqlite';
import { UpperDb } from './upper-db';

/**
 * Copies the closure of lower store paths into the upper DB: every row the upper DB lacks,
 * references before referrers, in one transaction, exactly as the lower DB has them (hash,
 * narSize, registrationTime, deriver, ultimate, sigs, ca, references, derivation outputs).
 * Rows the upper DB already has are left alone: for them the upper DB is authoritative.
 * Returns the number of ValidPaths rows added. Throws SQLITE_BUSY, or LowerFileChanged when the
 * lower DB file changed while it was read, for the caller to retry (withBusyRetry retries both).
 *
 * The walk can stop at paths the upper DB has: their closures are there already (Nix's
 * foreign keys keep every upper row's references in the upper DB, and copies are whole
 * closures). Once the common base of a store (glibc, bash, ...) is copied, a lookup then walks
 * only what is new: 10 new paths over a copied 1,000-path base took 0.6–0.9 ms instead of
 * 2.5–4.2 (in-process, median of 49 copies).
 * That test, one per path walked, costs a closure that shares nothing with the upper DB about
 * 11% (a fresh mount's first lookups), so the walk makes it only when a direct reference of
 * the paths asked for is in the upper DB already. Either walk copies the same rows.
 *
 * The copy runs inside SQLite with the lower DB attached (copy-rows.ts), in lower id order:
 * Nix registers references before referrers, so that order is references first. A lower DB
 * where it is not (made by other tools) is caught afterwards and copied row by row in
 * dependency order instead (copyClosureRowByRow).
 *
 * `maxRows`: a closure walk that finds more lower rows than this throws ClosureTooLarge before
 * copying anything (the walk stops there), for the caller to copy it in pieces instead
 * (closure-pieces.ts). Any failure while the lower DB file changed is thrown as
 * LowerFileChanged: a torn read can also miss a reference's row (IncompleteClosure).
 *
 * `beforeCommit`, when given, is the transaction's last step before its COMMIT, with the
 * largest upper id before the copy (the new rows are above it); it may throw to roll back, and
 * what it throws is thrown as it is.
 */
export function copyClosure(upper: UpperDb, lower: LowerDb, paths: readonly string[], opts: { maxRows?: number; beforeCommit?: (before: number) => void } = {}): number {
  // Paths the upper DB has, or the lower DB lacks (a lower dir without a row), need nothing:
  // answered without attaching or a transaction.
  const todo = paths.filter((p) => upper.idOf(p) === undefined && lower.pathRow(p) !== undefined);
  if (todo.length === 0) return 0;
  const db = upper.db;
  const file = lower.fileIdentity();
  try {
    return withLowerAttached(db, lower, () => db.transaction((): number => {
      startIdList(db);
      const shares = db.prepare(`
        SELECT 1 FROM lower.ValidPaths t CROSS JOIN lower.Refs r ON r.referrer = t.id
        JOIN lower.ValidPaths x ON x.id = r.reference
        WHERE t.path = ? AND x.id != t.id AND EXISTS (SELECT 1 FROM main.ValidPaths u WHERE u.path = x.path)`).pluck();
      const stopAtUpper = todo.some((p) => shares.get(p) !== undefined);
      const collect = db.prepare(`
        INSERT OR IGNORE INTO temp.lower_ids (id)
        WITH RECURSIVE closure(id) AS (
          SELECT id FROM lower.ValidPaths WHERE path = ?
          UNION
          SELECT r.reference FROM closure c JOIN lower.Refs r ON r.referrer = c.id
          ${stopAtUpper ? `WHERE NOT EXISTS (SELECT 1 FROM main.ValidPaths u
                            WHERE u.path = (SELECT x.path FROM lower.ValidPaths x WHERE x.id = c.id))` : ''}
          LIMIT ?
        )
        SELECT id FROM closure`);
      // LIMIT inside the recursive CTE ends the walk there: a closure too large costs a bounded walk.
      const limit = opts.maxRows === undefined ? -1 : opts.maxRows + 1;
      for (const p of todo) collect.run(p, limit);
      if (opts.maxRows !== undefined && (db.prepare('SELECT count(*) FROM temp.lower_ids').pluck().get() as number) > opts.maxRows) {
        throw new ClosureTooLarge(opts.maxRows);
      }
      return copyIdList(db, lower, file, 'a closure copy', opts.beforeCommit);
    }).immediate());
  } catch (err) {
    if (err instanceof BeforeCommitFailed) throw err.reason;
    if (err instanceof ReferencesAfterReferrers) return copyClosureRowByRow(upper, lower, todo, opts.beforeCommit);
    if (!isBusy(err) && !(err instanceof LowerFileChanged) && !(err instanceof ClosureTooLarge) && lower.fileIdentity() !== file) throw new LowerFileChanged('a closure copy');
    throw err;
  }
}

/** Inside a copy's transaction: an empty temp.lower_ids, for the lower ids to copy. */
export function startIdList(db: UpperDb['db']): void {
  db.exec('CREATE TEMP TABLE IF NOT EXISTS lower_ids (id INTEGER PRIMARY KEY)');
  db.exec('DELETE FROM temp.lower_ids');
}

/**
 * A copy's last steps inside its transaction, once temp.lower_ids lists the lower ids to copy:
 * copies their rows (returns how many), checks that no reference comes after its referrer
 * (Nix's id order; else ReferencesAfterReferrers) and that the lower DB file is the one `file`
 * identifies (a torn read cut short must not pass for whole: LowerFileChanged, naming `what`),
 * then, if rows were copied, runs `beforeCommit` with the largest id before them; what that
 * throws comes out as BeforeCommitFailed, for the caller to throw as it is.
 */
export function copyIdList(db: UpperDb['db'], lower: LowerDb, file: string, what: string, beforeCommit?: (before: number) => void): number {
  const { count, before } = copyLowerRows(db, { where: 'l.id IN (SELECT id FROM temp.lower_ids)', params: [], order: 'id' });
  db.exec('DELETE FROM temp.lower_ids');
  const late = db.prepare('SELECT count(*) FROM main.Refs WHERE referrer > ? AND reference > referrer').pluck().get(before) as number;
  if (lower.fileIdentity() !== file) throw new LowerFileChanged(what);
  if (late > 0) throw new ReferencesAfterReferrers();
  if (count > 0 && beforeCommit) {
    try { beforeCommit(before); } catch (err) { throw new BeforeCommitFailed(err); }
  }
  return count;
}

/** What a copy's `beforeCommit` threw (copyIdList), kept apart from the copy's own failures. */
export class BeforeCommitFailed extends Error {
  constructor(readonly reason: unknown) {
    super('the last step before a copy\'s COMMIT failed');
  }
}

/** Thrown inside the copy's transaction, after the copy's reads and checks: the lower DB is not in Nix's id order. */
export class ReferencesAfterReferrers extends Error {}

/** copyClosure's walk found more rows than `maxRows`; nothing was copied. */
export class ClosureTooLarge extends Error {
  constructor(readonly maxRows: number) {
    super(`the closure has more than ${maxRows} rows to copy`);
  }
}

/** copyClosure one row at a time, in dependency order; for lower DBs not in Nix's id order. */
export function copyClosureRowByRow(upper: UpperDb, lower: LowerDb, paths: readonly string[], beforeCommit?: (before: number) => void): number {
  const missing = new Map<string, PathRow>();
  const refs = new Map<string, string[]>();
  const outputs = new Map<number, OutputRow[]>();
  for (const p of paths) {
    if (upper.idOf(p) !== undefined || missing.has(p)) continue;
    const rows = lower.closure(p);
    const byId = new Map<number, PathRow>();
    for (const row of rows) {
      if (!missing.has(row.path) && upper.idOf(row.path) === undefined) {
        missing.set(row.path, row);
        byId.set(row.id, row);
      }
    }
    if (byId.size === 0) continue;
    // One query each for the closure's edges and derivation outputs, not one per row.
    for (const e of lower.closureRefs(p)) {
      const from = byId.get(e.referrer);
      if (from === undefined) continue;
      const list = refs.get(from.path);
      if (list) list.push(e.path); else refs.set(from.path, [e.path]);
    }
    for (const o of lower.closureOutputs(p)) {
      if (!byId.has(o.drv)) continue;
      const list = outputs.get(o.drv);
      if (list) list.push(o); else outputs.set(o.drv, [o]);
    }
  }
  if (missing.size === 0) return 0;
  const order = referencesFirst(missing, refs);

  const insertRef = upper.stmt('INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?, ?)');
  const insertOut = upper.stmt('INSERT OR IGNORE INTO DerivationOutputs (drv, id, path) VALUES (?, ?, ?)');
  const newIds = new Map<string, number>();
  // Foreign keys hold by construction (references are inserted first and looked up below), so
  // their per-row checks are skipped; the pragma cannot change inside a transaction.
  const fk = upper.db.pragma('foreign_keys', { simple: true }) as number;
  if (fk && !upper.db.inTransaction) upper.db.pragma('foreign_keys = OFF');
  try {
    upper.db.transaction(() => {
      const before = maxValidId(upper.db);
      for (const row of order) {
        const id = upper.insertPath(row);
        newIds.set(row.path, id);
        for (const ref of refs.get(row.path) ?? []) {
          const refId = newIds.get(ref) ?? upper.idOf(ref);
          if (refId === undefined) throw new Error(`closure of ${row.path} is incomplete: ${ref} has no row`);
          insertRef.run(id, refId);
        }
        for (const out of outputs.get(row.id) ?? []) insertOut.run(id, out.id, out.path);
      }
      beforeCommit?.(before);
    }).immediate();
  } finally {
    if (fk && !upper.db.inTransaction) upper.db.pragma('foreign_keys = ON');
  }
  return order.length;
}

/** Orders rows so that every row comes after the rows it references (self-references aside). */
function referencesFirst(rows: Map<string, PathRow>, refs: Map<string, string[]>): PathRow[] {
  const out: PathRow[] = [];
  const state = new Map<string, 1 | 2>(); // 1: in progress, 2: done
  const visit = (path: string): void => {
    const s = state.get(path);
    if (s !== undefined) return; // done, or a cycle (Nix forbids them apart from self-refs)
    state.set(path, 1);
    for (const ref of refs.get(path) ?? []) if (ref !== path && rows.has(ref)) visit(ref);
    state.set(path, 2);
    out.push(rows.get(path) as PathRow);
  };
  // Iterative deepening is unnecessary: closures are DAGs of bounded depth in practice, but
  // deep chains would overflow the stack, so visit in lower-id order (references are usually
  // registered first, keeping the recursion shallow).
  for (const path of [...rows.keys()].sort((a, b) => (rows.get(a) as PathRow).id - (rows.get(b) as PathRow).id)) visit(path);
  return out;
}
