import * as fs from 'node:fs';
import * as path from 'node:path';
import { HeldGcLock, takeGcLockExclusive } from '../metadata/gc-lock';
import { NIX_GC_LOCK_FILE } from '../metadata/schema';
import { GcRootsServer, liveTempRoots, TempRoot } from '../metadata/temp-roots';
import { rootLayout } from '../mount/config';
import { narHash } from '../store/nar';
import { InUse } from './in-use';
import { diskBytes, isGone, RootView, STORE_DIR } from './view';

export interface DuplicateReport {
  path: string;
  bytes: number;
  /**
   * What decided that the upper copy can go: both DB rows' NAR hash, both copies' contents, or
   * (`damaged`) the upper copy's contents not matching the merged row, the lower copy's matching.
   */
  matchedBy: 'db-hash' | 'contents' | 'damaged';
  removed: boolean;
  /** Why the upper copy is kept (in a dry run: would be kept). */
  skipped?: string;
  /**
   * Set when it is kept because running Nix clients use it: the temp roots whose closure
   * holds it (`pid` null for a root sent to the GC socket). A run after they end removes it.
   */
  inUse?: TempRoot[];
}

export interface OptimiseReport {
  dryRun: boolean;
  /**
   * Nix's GC lock while upper copies were removed: `exclusive`; `not-needed` (a dry run, or
   * nothing to remove); `unavailable` (not had within the timeout: nothing was removed).
   */
  gcLock: 'exclusive' | 'not-needed' | 'unavailable';
  duplicates: DuplicateReport[];
  removed: number;
  bytesFreed: number;
  /** Duplicates kept (in a dry run: that would be kept) because running Nix clients use them. */
  inUse: number;
}

export interface OptimiseOptions {
  dryRun: boolean;
  checkContents: boolean;
  /** How long to wait for Nix's GC lock (a GC holds it exclusively); 0 asks once. */
  lockTimeoutS: number;
  /** Called once when the lock is taken and optimise waits for it. */
  onLockWait?: () => void;
  progress?: (done: number, total: number) => void;
}

/**
 * Removes the upper copies of objects the lower store also has (the RFC's "never stored
 * twice"). Both copies must be the same object: the upper DB's NAR hash equals the lower DB's
 * (and, with `checkContents` or when the upper DB has no row, the upper copy's NAR hash is
 * computed and must equal it). The merged store then serves the lower copy; the DB row stays.
 *
 * The merged store's path stays valid, but the upper copy's files go: a build's sandbox that
 * bind-mounted it, or a process whose cwd is in it, finds nothing below it any more (files
 * already open stay readable). So removal works as Nix's GC does: under Nix's GC lock held
 * exclusively, serving the GC roots socket, and sparing what the temp roots of running Nix
 * clients keep (their closure in the merged DB). Those are reported, not removed.
 */
export async function optimise(view: RootView, opts: OptimiseOptions): Promise<OptimiseReport> {
  const report: OptimiseReport = { dryRun: opts.dryRun, gcLock: 'not-needed', duplicates: [], removed: 0, bytesFreed: 0, inUse: 0 };
  const removable = findDuplicates(view, report, opts);
  if (removable.length === 0) return report;
  const stateDir = path.dirname(rootLayout(view.cfg.mergedRoot).dbDir);
  const inUse = new InUse(view.upperDb);

  if (opts.dryRun) {
    // Without the lock: what would be kept if the run were now.
    inUse.update(await liveTempRoots(stateDir));
    for (const d of removable) keepIfUsed(report, d, inUse);
    return report;
  }

  const lock = await gcLock(path.join(stateDir, NIX_GC_LOCK_FILE), opts);
  if (typeof lock === 'string') {
    report.gcLock = 'unavailable';
    for (const d of removable) d.skipped = `not removed: ${lock}`;
    return report;
  }
  report.gcLock = 'exclusive';
  let server: GcRootsServer | null = null;
  try {
    // As Nix's GC: the socket first, then the files; a root added from now on comes to the socket.
    server = await GcRootsServer.listen(stateDir);
    const fromFiles = await liveTempRoots(stateDir);
    for (const d of removable) {
      // Roots sent meanwhile are read (and answered) before the next check.
      await new Promise((r) => setImmediate(r));
      inUse.update([...fromFiles, ...server.roots]);
      if (keepIfUsed(report, d, inUse)) continue;
      const name = d.path.slice(STORE_DIR.length + 1);
      if (fs.lstatSync(path.join(view.cfg.upperDir, name), { throwIfNoEntry: false }) === undefined) {
        d.skipped = 'the upper copy was removed meanwhile (a Nix GC or delete before this run had the lock)';
        continue;
      }
      view.removeUpper(name);
      d.removed = true;
      report.removed++;
      report.bytesFreed += d.bytes;
    }
  } finally {
    lock.release();
    await lock.gone;
    await server?.close();
  }
  return report;
}

/** The duplicates, each checked to be the same object in both layers; returns those that are. */
function findDuplicates(view: RootView, report: OptimiseReport, opts: OptimiseOptions): DuplicateReport[] {
  const removable: DuplicateReport[] = [];
  const names = view.upperObjects().filter((n) => view.lowerHas(n));
  for (const [i, name] of names.entries()) {
    opts.progress?.(i, names.length);
    try {
      const d = checkDuplicate(view, name, opts);
      report.duplicates.push(d);
      if (d.skipped === undefined) removable.push(d);
    } catch (err) {
      if (!isGone(err)) throw err; // the upper copy went meanwhile (Nix deleted it): no duplicate
    }
  }
  opts.progress?.(names.length, names.length);
  return removable;
}

/** Whether the upper copy of `name` is the lower object (skipped says why not). */
function checkDuplicate(view: RootView, name: string, opts: OptimiseOptions): DuplicateReport {
  const storePath = `${STORE_DIR}/${name}`;
  const upperCopy = path.join(view.cfg.upperDir, name);
  const d: DuplicateReport = { path: storePath, bytes: diskBytes(upperCopy), matchedBy: 'db-hash', removed: false };
  const lowerRow = view.lowerDb.pathRow(storePath);
  if (!lowerRow) { d.skipped = 'the lower store has the name but no valid DB row for it'; return d; }
  const upperRow = view.upperDb.pathRow(storePath);
  if (upperRow && upperRow.hash !== lowerRow.hash) { d.skipped = `NAR hashes differ (upper ${upperRow.hash}, lower ${lowerRow.hash})`; return d; }
  if (opts.checkContents || !upperRow) {
    d.matchedBy = 'contents';
    const actual = narHash(upperCopy).hash;
    // With the merged row the lower copy's, an upper copy that does not match it is damaged
    // (an add that did not finish, a file changed by hand) and served under a row it does not
    // match: once the lower copy is seen to match that row, removing the upper one repairs
    // the path. Without a merged row nothing says which copy is right.
    const damaged = actual !== lowerRow.hash && upperRow !== undefined && narHash(path.join(view.lowerStore, name)).hash === lowerRow.hash;
    if (damaged) d.matchedBy = 'damaged';
    else if (actual !== lowerRow.hash) { d.skipped = `the upper copy's contents (${actual}) differ from the lower DB's ${lowerRow.hash}`; return d; }
  }
  return d;
}

/** Marks `d` kept when running Nix clients use it; whether it did. */
function keepIfUsed(report: OptimiseReport, d: DuplicateReport, inUse: InUse): boolean {
  const users = inUse.users(d.path);
  if (users.length === 0) return false;
  const shown = users.slice(0, 3).map((u) => `${u.pid === null ? 'a root sent to the GC socket' : `pid ${u.pid}`}: ${u.path}`).join('; ');
  d.inUse = users;
  d.skipped = `in use by running Nix processes (temp roots, ${shown}${users.length > 3 ? `; ${users.length - 3} more` : ''}); a run after they end removes it`;
  report.inUse++;
  return true;
}

/** Nix's GC lock, exclusively; or why it was not had. */
async function gcLock(lockFile: string, opts: OptimiseOptions): Promise<HeldGcLock | string> {
  let r = await takeGcLockExclusive(lockFile, 0);
  if (r.lock === null && r.busy && opts.lockTimeoutS > 0) {
    opts.onLockWait?.();
    r = await takeGcLockExclusive(lockFile, opts.lockTimeoutS);
  }
  if (r.lock !== null) return r.lock;
  return r.busy
    ? `Nix's GC lock (${lockFile}) stayed taken for ${opts.lockTimeoutS} s (a garbage collection or a \`nix-store --verify\` running?)`
    : `cannot take Nix's GC lock: ${r.why}`;
}
