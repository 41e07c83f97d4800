import type { Database as Db } from 'better-sqlite3';
/** A ValidPaths row as Nix 2.8 stores it (column names as in the schema). */
export interface PathRow {
  id: number;
  path: string;
  hash: string;
  registrationTime: number;
  deriver: string | null;
  narSize: number | null;
  ultimate: number | null;
  sigs: string | null;
  ca: string | null;
}

export const PATH_COLUMNS = 'path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca';

export interface OutputRow { drv: number; id: string; path: string }

const VALID_PAGE = 4096;
/** One page of a DB's valid paths: those after `?`, in path order, at most VALID_PAGE. */
export const VALID_PAGE_SQL = `SELECT path FROM ValidPaths WHERE path > ? ORDER BY path LIMIT ${VALID_PAGE}`;

/**
 * The names (`storeDir/` stripped) of a DB's valid paths, in the path index's bytewise order,
 * read a page at a time (`page` runs VALID_PAGE_SQL): a million paths are never in memory at
 * once, and a DB that grows between pages only adds names.
 */
export function* pagedValidNames(storeDir: string, page: (after: string) => string[]): Generator<string> {
  const prefix = `${storeDir}/`;
  let after = prefix;
  for (;;) {
    const paths = page(after);
    for (const p of paths) {
      if (!p.startsWith(prefix)) return;
      yield p.slice(prefix.length);
    }
    if (paths.length < VALID_PAGE) return;
    after = paths[paths.length - 1];
  }
}

/** The largest ValidPaths id of `db`'s main DB (0 when empty): rows a copy adds come above it. */
export function maxValidId(db: Db): number {
  return db.prepare('SELECT coalesce(max(id), 0) FROM main.ValidPaths').pluck().get() as number;
}

/** The paths of `db`'s main ValidPaths rows with ids above `id` (what a copy that began at `id` added). */
export function pathsAbove(db: Db, id: number): string[] {
  return db.prepare('SELECT path FROM main.ValidPaths WHERE id > ?').pluck().all(id) as string[];
}

/** How many ValidPaths rows a DB has, and its top id: what a later census compares with (lostRows). */
export interface RowCensus { maxId: number; count: number }

/**
 * `db`'s census now, and whether rows went since `before`: fewer rows up to `before`'s top id
 * than it counted (ids only grow, so new rows never hide a deletion). One count over the ids.
 */
export function lostRows(db: Db, before: RowCensus | null): { now: RowCensus; lost: boolean } {
  const r = db.prepare('SELECT count(*) FILTER (WHERE id <= ?) AS upTo, count(*) AS total, coalesce(max(id), 0) AS maxId FROM main.ValidPaths')
    .get(before?.maxId ?? 0) as { upTo: number; total: number; maxId: number };
  return { now: { maxId: r.maxId, count: r.total }, lost: before !== null && r.upTo < before.count };
}

/** A field in which a path's rows in two DBs differ, with each DB's value (null: none). */
export interface RowDifference {
  field: 'narHash' | 'narSize' | 'deriver' | 'ca' | 'signatures' | 'references';
  upper: string | number | string[] | null;
  lower: string | number | string[] | null;
}

/**
 * How the upper DB's row of a path differs from the lower DB's: what `verify` calls
 * row-differs and `explain` shows. Not compared: registrationTime and ultimate, which say when
 * and how this store registered the path (`nix-store --load-db` resets ultimate; a path added
 * to the merged store first has its own time). No signatures (NULL) and none ('') are alike.
 * Signatures differ only when the upper row lacks one of the lower row's: a store gathers
 * signatures (`nix store sign`, `nix copy` add them to the row), so one the merged store added
 * to a lower path is its own, not a disagreement with the lower store.
 */
export function rowDifferences(upper: PathRow, upperRefs: readonly string[], lower: PathRow, lowerRefs: readonly string[]): RowDifference[] {
  const differ = (u: unknown, l: unknown): boolean => JSON.stringify(u) !== JSON.stringify(l);
  const upperSigs = signatures(upper);
  const lowerSigs = signatures(lower);
  const fields: [RowDifference['field'], RowDifference['upper'], RowDifference['lower'], boolean][] = [
    ['narHash', upper.hash, lower.hash, differ(upper.hash, lower.hash)],
    ['narSize', upper.narSize, lower.narSize, differ(upper.narSize, lower.narSize)],
    ['deriver', upper.deriver, lower.deriver, differ(upper.deriver, lower.deriver)],
    ['ca', upper.ca, lower.ca, differ(upper.ca, lower.ca)],
    ['signatures', upperSigs, lowerSigs, lowerSigs.some((s) => !upperSigs.includes(s))],
    ['references', [...upperRefs].sort(), [...lowerRefs].sort(), differ([...upperRefs].sort(), [...lowerRefs].sort())],
  ];
  return fields.filter(([, , , d]) => d).map(([field, u, l]) => ({ field, upper: u, lower: l }));
}

/** A row's signatures (none for NULL and ''), as Nix keeps them: space-separated. */
export function signatures(r: PathRow): string[] {
  return (r.sigs ?? '').split(' ').filter(Boolean);
}

/**
 * The signatures a row repaired from the lower row keeps: the lower row's, then the ones only
 * the merged store had (added there by `nix store sign` or `nix copy`), which repair must not
 * drop. NULL when there are none, as Nix writes a row without signatures.
 */
export function mergedSignatures(upper: PathRow, lower: PathRow): string | null {
  const lowerSigs = signatures(lower);
  const all = [...lowerSigs, ...signatures(upper).filter((s) => !lowerSigs.includes(s))];
  return all.length > 0 ? all.join(' ') : null;
}
