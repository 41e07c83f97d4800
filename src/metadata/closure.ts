import { LowerDb } from './lower-db';
import { PathRow } from './rows';
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
  for (const p of paths) {
    if (upper.idOf(p) !== undefined) continue;
    for (const row of lower.closure(p)) {
      if (!missing.has(row.path) && upper.idOf(row.path) === undefined) missing.set(row.path, row);
    }
  }
  if (missing.size === 0) return 0;

  const refs = new Map<string, string[]>();
  for (const row of missing.values()) refs.set(row.path, lower.references(row.id));
  const order = referencesFirst(missing, refs);

  const db = upper.db;
  const insertRef = db.prepare('INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?, ?)');
  const insertOut = db.prepare('INSERT OR IGNORE INTO DerivationOutputs (drv, id, path) VALUES (?, ?, ?)');
  db.transaction(() => {
    for (const row of order) {
      const id = upper.insertPath(row);
      for (const ref of refs.get(row.path) ?? []) {
        const refId = ref === row.path ? id : upper.idOf(ref);
        if (refId === undefined) throw new Error(`closure of ${row.path} is incomplete: ${ref} has no row`);
        insertRef.run(id, refId);
      }
      for (const out of lower.outputs(row.id)) insertOut.run(id, out.id, out.path);
    }
  }).immediate();
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
