import { LowerDb } from './lower-db';
import { OutputRow, PathRow } from './rows';
import { UpperDb } from './upper-db';

/**
 * Copies the closure of lower store paths into the upper DB: every row the upper DB lacks,
 * references before referrers, in one transaction, exactly as the lower DB has them (hash,
 * narSize, registrationTime, deriver, ultimate, sigs, ca, references, derivation outputs).
 * Rows the upper DB already has are left alone: for them the upper DB is authoritative.
 * Returns the number of ValidPaths rows added. Throws SQLITE_BUSY for the caller to retry.
 */
export function copyClosure(upper: UpperDb, lower: LowerDb, paths: readonly string[]): number {
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
