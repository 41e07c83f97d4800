import * as path from 'node:path';
import { narHash } from '../store/nar';
import { diskBytes, RootView, STORE_DIR } from './view';

export interface DuplicateReport {
  path: string;
  bytes: number;
  /** What decided that both copies are the same object. */
  matchedBy: 'db-hash' | 'contents';
  removed: boolean;
  skipped?: string;
}

export interface OptimiseReport {
  dryRun: boolean;
  duplicates: DuplicateReport[];
  removed: number;
  bytesFreed: number;
}

/**
 * Removes the upper copies of objects the lower store also has (the RFC's "never stored
 * twice"). Both copies must be the same object: the upper DB's NAR hash equals the lower DB's
 * (and, with `checkContents` or when the upper DB has no row, the upper copy's NAR hash is
 * computed and must equal it). The merged store then serves the lower copy; the DB row stays.
 */
export function optimise(view: RootView, opts: { dryRun: boolean; checkContents: boolean; progress?: (done: number, total: number) => void }): OptimiseReport {
  const report: OptimiseReport = { dryRun: opts.dryRun, duplicates: [], removed: 0, bytesFreed: 0 };
  const names = view.upperObjects().filter((n) => view.lowerHas(n));
  for (const [i, name] of names.entries()) {
    opts.progress?.(i, names.length);
    const storePath = `${STORE_DIR}/${name}`;
    const upperCopy = path.join(view.cfg.upperDir, name);
    const d: DuplicateReport = { path: storePath, bytes: diskBytes(upperCopy), matchedBy: 'db-hash', removed: false };
    report.duplicates.push(d);
    const lowerRow = view.lowerDb.pathRow(storePath);
    if (!lowerRow) { d.skipped = 'the lower store has the name but no valid DB row for it'; continue; }
    const upperRow = view.upperDb.pathRow(storePath);
    if (upperRow && upperRow.hash !== lowerRow.hash) { d.skipped = `NAR hashes differ (upper ${upperRow.hash}, lower ${lowerRow.hash})`; continue; }
    if (opts.checkContents || !upperRow) {
      d.matchedBy = 'contents';
      const actual = narHash(upperCopy).hash;
      if (actual !== lowerRow.hash) { d.skipped = `the upper copy's contents (${actual}) differ from the lower DB's ${lowerRow.hash}`; continue; }
    }
    if (!opts.dryRun) {
      view.removeUpper(name);
      d.removed = true;
      report.removed++;
      report.bytesFreed += d.bytes;
    }
  }
  opts.progress?.(names.length, names.length);
  return report;
}
