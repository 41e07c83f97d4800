import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { OverlayStats } from '../overlay/stats';
import { growingCache } from '../util/cache';
import { log } from '../util/log';
import { Checkpointer } from './checkpointer';
import { copyClosure } from './closure';
import { copyClosureInPieces, CopyHooks } from './closure-pieces';
import { GcLock, tryGcLockShared } from './gc-lock';
import { commitUnlocked, HeldLocks, Leftovers, LocksTaken } from './held-locks';
import { LowerRoots } from './gc-roots';
import type { RootsJob } from './gc-roots-worker';
import { LowerDb } from './lower-db';
import { ImportResult, LIST_LIMIT, Mirror } from './mirror';
import { withLowerAttached } from './copy-rows';
import { lostRows, maxValidId, pathsAbove, RowCensus } from './rows';
import { isBusy, isTornRead } from './sqlite';
import { UpperDb } from './upper-db';

/** How often a mirror mount looks for objects in both layers that lost their row (restoreRowlessDuplicates). */
const ROWLESS_CHECK_MS = 2000;

export type MetadataMode = 'mirror' | 'lazy';

/** copyAwaited's first wait after a failed copy, and its longest. */
const AWAIT_FIRST_MS = 1_000;
const AWAIT_MAX_MS = 60_000;

/**
 * Keeps the upper DB consistent with the lower store.
 *
 * - lazy: a lookup that resolves a top-level name to the lower layer waits until the object's
 *   closure is in the upper DB (`lowerLookup`).
 * - mirror (default): all lower rows are imported at start and the follower imports new ones
 *   as the lower DB grows. The lookup hook stays on as a safety net for objects that appear
 *   in the lower store between two follower ticks.
 * `known` remembers names whose rows the upper DB is known to have, so a repeated lookup costs
 * one cache probe (the kernel caches entries for a long time anyway).
 */
export class Metadata {
  readonly mirror: Mirror;
  private readonly known = growingCache<string, true>(100_000);
  private readonly inflight = new Map<string, Promise<void>>();
  /**
   * Lazy mode: lower objects served whose closure copy failed or found no row (the lower DB
   * changed between the lookup's check and the copy). The kernel keeps the answer for a day,
   * so no lookup copies the closure later: the follower does, when the lower DB grows, each
   * not before `at` (awaitRow: a copy that keeps failing is tried ever less often).
   */
  private readonly awaitingRow = growingCache<string, { failures: number; at: number }>(10_000);
  private timer: NodeJS.Timeout | null = null;
  /** After close(): work still queued (roots changes, row restores) must not touch the DBs. */
  private closed = false;
  private lastFollow = { at: 0 };
  /** The follower's check under way (follow). */
  private following: Promise<void> | null = null;
  /** Hears the names new in the lower DB (null: too many to list); `settled`: their rows are in the merged DB. */
  private onNewPaths: (names: string[] | null, settled: boolean) => void = () => undefined;
  /** Hears that the lower DB lost rows (its GC, or another version of it), once per change of it. */
  private onLowerLost: () => void = () => undefined;
  /** The largest lower id whose rows the follower has reported (onNewPaths) and imported. */
  private reportedMaxId = 0;
  /** The lower DB files' identity when the mount's import read them (importAll). */
  private importedSignature = '';
  /**
   * The mount's first import was refused (importAll): the roots are left as the last sync
   * made them (the lower store only grows, so they still keep what they kept) until the
   * follower's first import, which then syncs them in full.
   */
  private rootsAfterImport = false;
  /** The lower DB's rows when the follower last looked (lowerLostPaths): their top id and how many. */
  private lowerCensus: RowCensus | null = null;
  /** The lower snapshot's signature when that census was taken. */
  private censusSignature = '';
  /** The lower snapshot's signature when the mirror last looked whether its ids changed (renumbered). */
  private idsCheckedSignature = '';
  /** The lower store lost paths since the roots were synced (resyncRoots). */
  private rootsNeedSync = false;
  /** When the follower next looks for objects in both layers without a row (restoreRowlessDuplicates). */
  private nextRowlessCheck = 0;
  /** The merged DB's data_version at that check, and whether a GC held the last one up. */
  private rowlessCheckedVersion = -1;
  private rowlessHeldUp = false;
  /** The merged DB's rows at that check: their top id and how many. */
  private upperCensus: RowCensus | null = null;
  /** The upper layer's top-level objects (the daemon's index; set once mounted). */
  upperObjects: () => string[] = () => [];
  /** Checks that failed in a row, and the last one's error (logged when it changes). */
  private failing = { count: 0, message: '' };
  /** When the follower's check of the lower DB files began, while it waits for the answer. */
  private checkingSince: number | null = null;
  private behindSince: number | null = null;
  private readonly reconcileTimers = new Map<string, NodeJS.Timeout>();
  /** Mirror mode only: GC roots that keep lower objects alive for plain Nix's GC. */
  roots: LowerRoots | null = null;
  /** Lazy mode: WAL checkpoints on a worker thread (checkpointer.ts). */
  private readonly checkpointer: Checkpointer | null;
  /** While a background sync runs: root changes wait for it, in order (rootsDo). */
  private rootsBusy: Promise<void> | null = null;
  /** Names in both layers; set by the daemon (the overlay's index knows them). */
  duplicates: () => Set<string> = () => new Set();
  /**
   * Whether the lower store has object `name` (its DB lists it), for the GC roots of duplicates.
   * Not the overlay's answer: in mirror mode that is whether the merged DB lists it, which a
   * duplicate's lower copy does not while Nix deletes the upper copy.
   */
  lowerHas: (name: string) => boolean = (name) => this.lower.isValid(`${this.storeDir}/${name}`);
  /**
   * Mirror mode: Nix's GC lock (`nix/var/nix/gc.lock`), held shared while new lower rows are
   * imported and rooted. A GC that ran meanwhile would have read its roots before the new ones
   * existed, found the new paths valid but unrooted, and deleted their rows (then failed on their
   * read-only files). While a GC holds it, new lower paths wait, unseen (the merged view shows a
   * lower object only once the merged DB lists it).
   */
  gcLockFile: string | null = null;
  /** Since when the follower has waited for a GC to end (0: not waiting), for the log. */
  private waitingForGcSince = 0;
  /**
   * Mirror mode, once mounted: which store paths a client of the mount holds the lock of
   * (held-locks.ts). The follower's imports and the row restores hold those paths back
   * (mirror.ts says which races that closes); null: nothing is held back.
   */
  heldLocks: HeldLocks | null = null;
  /**
   * Once mounted: sets aside the rowless upper objects a copy of lower rows is about to make
   * valid (held-locks.ts Leftovers), in the mirror's imports, row restores and lazy lookups.
   */
  private leftovers: Leftovers | null = null;

  /** Sets `leftovers` (the daemon, once the rowless upper objects of the mount are settled). */
  setLeftovers(f: Leftovers): void {
    this.leftovers = f;
    this.mirror.leftovers = f;
  }

  /**
   * A copy's last step before its COMMIT (copyClosure's beforeCommit): the upper objects its
   * rows (those above `before`) make valid go (leftovers). A lazy lookup's copy cannot hold a
   * path back (the lookup needs its closure): one a client is writing is left to that client.
   */
  private setAsideLeftovers(before: number, held: HeldLocks | null): void {
    const locked = this.leftovers?.(pathsAbove(this.upper.db, before));
    if (locked !== undefined && locked.size > 0 && held !== null) throw new LocksTaken(locked);
  }

  /** Whether the last check found new lower rows and left them for a GC to end (gcLockFile). */
  get waitingForGc(): boolean {
    return this.waitingForGcSince > 0;
  }

  constructor(
    readonly upper: UpperDb,
    readonly lower: LowerDb,
    readonly mode: MetadataMode,
    private readonly stats: OverlayStats,
    readonly storeDir = '/nix/store',
  ) {
    this.mirror = new Mirror(upper, lower);
    // Lazy mode answers lookups after closure copies: their checkpoints go to a worker.
    this.checkpointer = mode === 'lazy' && !upper.db.readonly ? new Checkpointer(path.join(upper.dbDir, 'db.sqlite')) : null;
    if (this.checkpointer) upper.db.pragma('wal_autocheckpoint = 0');
  }

  /** The mirror's first import; returns the number of rows added. */
  importAll(): number {
    const t0 = Date.now();
    let count: number;
    try {
      count = this.mirror.importNew().count;
    } catch (err) {
      if (!isTornRead(err)) throw err;
      // The rows wait for the follower; until then their objects are not shown (layers.ts).
      // The GC roots wait too: synced now, they would follow an import that did not happen.
      log.warn(`mirror: the first import met a lower DB that changed under it (${err instanceof Error ? err.message : String(err)}); the follower imports the rows`);
      this.rootsAfterImport = true;
      return 0;
    }
    this.importedSignature = this.lower.openedSignature;
    this.lowerLostPaths(); // the census the follower compares with
    this.stats.count('rowsMirrored', count);
    log.info(`mirror: imported ${count} lower paths in ${Date.now() - t0} ms`);
    this.stats.trace?.('import', this.storeDir, `${count} rows`, Date.now() - t0);
    return count;
  }

  /** Whether the merged DB has lower object `name`'s row (then its lookups need no hook). */
  lowerSettled(name: string): boolean {
    const storePath = `${this.storeDir}/${name}`;
    if (this.known.has(storePath)) return true;
    if (this.upper.idOf(storePath) === undefined) return false;
    this.known.set(storePath, true);
    return true;
  }

  /**
   * The hooks of a lookup's closure copy (and sync's): each write first waits, if the WAL is past
   * its bound or an idle worker is cutting it back (Checkpointer.settle); the rows' upper
   * leftovers are set aside before COMMIT; the copy stops once the DBs are closing.
   */
  private readonly lookupHooks: CopyHooks = {
    beforeWrite: () => this.checkpointer?.settle() ?? null,
    beforeCommit: (before) => this.setAsideLeftovers(before, null),
    wrote: () => this.checkpointer?.wrote(),
    stopped: () => this.closed,
  };

  /**
   * Copies the closures of lower paths `paths` now (`local-overlay sync` on a mounted root): as a
   * lookup's copy, in one transaction when it can, else in pieces, and what it makes valid sets
   * aside the upper leftovers of those paths. Returns the rows copied and the lower paths that
   * have rows now and had none before (null: more than LIST_LIMIT).
   */
  async sync(paths: readonly string[]): Promise<{ rows: number; copied: string[] | null }> {
    const before = maxValidId(this.upper.db);
    const r = await copyClosureInPieces(this.upper, this.lower, paths, this.lookupHooks);
    if (r.stopped) throw new Error('the mount is closing');
    for (const p of paths) if (this.upper.idOf(p) !== undefined) this.known.set(p, true);
    // The rows above `before` are this copy's and the follower's, and those a merged-store
    // client registered meanwhile: its own paths, not the lower store's.
    const copied = r.rows === 0 ? [] : pathsAbove(this.upper.db, before).filter((p) => this.lower.isValid(p));
    // Mirror mode roots what it copies, as the follower's imports (or Nix's GC drops the rows);
    // a path the lower store and a client both have is a duplicate, which added() leaves collectable.
    if (this.roots && copied.length > 0) this.rootsDo(() => this.roots?.added(copied, this.duplicates()));
    this.stats.count('rowsCopied', r.rows);
    return { rows: r.rows, copied: copied.length > LIST_LIMIT ? null : copied };
  }

  /** Lookup hook: null when nothing needs doing, else the pending closure copy. */
  lowerLookup(name: string): Promise<void> | null {
    const storePath = `${this.storeDir}/${name}`;
    if (this.lowerSettled(name)) return null;
    let p = this.inflight.get(storePath);
    if (p) return p;
    const t0 = Date.now();
    // In one transaction when it can, else in pieces that yield the thread (closure-pieces.ts):
    // a writer checkpointing into the lower DB file does not make it fail (lookupHooks).
    p = copyClosureInPieces(this.upper, this.lower, [storePath], this.lookupHooks).then((r) => {
      this.inflight.delete(storePath);
      if (r.stopped) return; // the mount closed while the copy waited: the lookup is answered anyway
      const n = r.rows;
      // The lookup resolved to the lower layer because the lower DB lists the path, so its
      // row is normally found; if it was not (the lower DB changed in between), the object
      // stays unsettled: asked again next time, and tried again by copyAwaited.
      if (this.upper.idOf(storePath) === undefined) this.awaitRow(storePath);
      else this.awaitingRow.delete(storePath);
      if (n > 0) {
        this.known.set(storePath, true);
        this.stats.count('closureSyncs');
        this.stats.count('rowsCopied', n);
      }
      if (r.transactions > 1) this.stats.count('closuresInPieces');
      if (r.torn > 0) this.stats.count('tornReads', r.torn);
      this.stats.trace?.('closure', storePath,
        `${n} rows${r.transactions > 1 ? ` in ${r.transactions} transactions` : ''}${r.torn > 0 ? `, ${r.torn} torn reads read again` : ''}`, Date.now() - t0);
    }, (err) => {
      this.inflight.delete(storePath);
      this.awaitRow(storePath); // tried again by copyAwaited, after a while
      throw err;
    });
    this.inflight.set(storePath, p);
    return p;
  }

  /**
   * The upper layer lost a top-level object. When the lower store has one of that name, its
   * copy shows again, and Nix (which deleted the row before the files) must find it valid
   * again: the row is copied back from the lower DB shortly after. The GC roots follow.
   */
  upperRemoved(name: string): void {
    this.known.delete(`${this.storeDir}/${name}`);
    // At once, before the removal is answered: the merged view shows the lower copy only once
    // the merged DB lists it again (mirror mode), and a lookup meanwhile would be kept as a miss.
    // Nix committed its deletion of the row before it deleted the files.
    if (!this.restoreRow(name)) this.reconcileSoon(name);
    if (this.roots && this.lowerHas(name)) this.rootsDo(() => this.roots!.stoppedDuplicate(name));
  }

  /**
   * Copies the row (and closure) of lower object `name` back when the merged DB lacks it, on
   * this thread. False when that must be tried again later (another writer holds the DB, a
   * read was torn, or a client of the mount holds the path's lock, or one of its closure's, as
   * a build does that deletes a stale upper copy before it writes the path); any other failure
   * is logged and not retried.
   */
  private restoreRow(name: string): boolean {
    const storePath = `${this.storeDir}/${name}`;
    if (this.closed) return true;
    try {
      if (this.upper.idOf(storePath) !== undefined || !this.lower.isValid(storePath)) return true;
      const held = this.heldLocks;
      // A client holding the path's lock (mirror.ts): not before it is free; looked at again,
      // last, before the COMMIT.
      if (held !== null && held(() => [storePath]).size > 0) return false;
      const n = copyClosure(this.upper, this.lower, [storePath], {
        beforeCommit: (before) => {
          this.setAsideLeftovers(before, held);
          if (held) commitUnlocked(this.upper.db, before, held);
        },
      });
      this.stats.count('rowsCopied', n);
      this.stats.trace?.('closure', storePath, `restored ${n} rows`);
      log.info(`restored the DB row of ${storePath} (its lower copy is visible again)`);
      return true;
    } catch (err) {
      if (isBusy(err) || isTornRead(err) || err instanceof LocksTaken) return false;
      log.warn(`could not restore the row of ${storePath}: ${String(err)}`);
      return true;
    }
  }

  /** The upper layer gained a top-level object: it may now shadow a lower one. */
  upperAdded(name: string): void {
    if (this.roots && this.lowerHas(name)) this.rootsDo(() => this.roots!.becameDuplicate(name, this.duplicates()));
  }

  private rootsDo(f: () => void): void {
    const run = (): void => {
      if (this.closed) return; // queued behind a sync that outlived drain(): the DBs are gone
      try {
        f();
      } catch (err) {
        log.warn(`gc roots: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    if (this.rootsBusy) this.rootsBusy = this.rootsBusy.then(run);
    else run();
  }

  /**
   * A change to a lower object was refused. Nix deletes a path's row before its files, so a
   * refused delete can leave a visible lower object without a row: put it back.
   */
  lowerWriteRefused(name: string): void {
    this.known.delete(`${this.storeDir}/${name}`);
    this.reconcileSoon(name);
  }

  /** After a short delay (Nix finishes its own transaction first), restore a missing row. */
  private reconcileSoon(name: string): void {
    if (this.reconcileTimers.has(name)) return;
    const timer = setTimeout(() => {
      this.reconcileTimers.delete(name);
      if (!this.restoreRow(name)) this.reconcileSoon(name); // held up: again in 100 ms, until stop()
    }, 100);
    timer.unref();
    this.reconcileTimers.set(name, timer);
  }

  /** Makes the roots dir exactly what the lower store needs, on this thread. */
  syncRoots(): void {
    const roots = this.roots;
    if (!roots) return;
    this.rootsDo(() => {
      const t0 = Date.now();
      const r = roots.sync(this.duplicates());
      if (r.added + r.removed > 0) log.info(`gc roots: +${r.added} -${r.removed} in ${Date.now() - t0} ms`);
    });
  }

  /**
   * The mount's full roots sync, in a worker thread, so that the mount is ready at once (on a
   * 100k-path lower store the sync takes 0.3–1.5 s, mostly creating symlinks). `gcLock`, Nix's
   * GC lock held shared, makes a `nix-collect-garbage` started meanwhile wait until the roots
   * exist; it is released when the sync and the root changes queued behind it are done.
   * Without the lock (it could not be had), the sync runs here and now instead.
   */
  syncRootsInBackground(gcLock: GcLock | null, signature = this.importedSignature): void {
    const roots = this.roots;
    if (!roots) {
      gcLock?.release();
      return;
    }
    if (this.rootsAfterImport) {
      log.info('gc roots: left as the last sync made them until the follower has imported the lower rows');
      gcLock?.release();
      return;
    }
    if (!gcLock) {
      this.syncRoots();
      return;
    }
    const duplicates = this.duplicates();
    if (roots.current(duplicates)) {
      log.info('gc roots: as the last sync left them (same lower DB, duplicates and roots dir)');
      gcLock.release();
      return;
    }
    const t0 = Date.now();
    const job: RootsJob = {
      dir: roots.dir, stampFile: roots.stampFile, dbFile: this.lower.dbFile, storeDir: this.storeDir, duplicates: [...duplicates],
      maxId: this.mirror.lastLowerId, signature,
    };
    // Tests hold the sync back until this file exists, to see a GC wait for the roots.
    const gate = process.env.LOCAL_OVERLAY_TEST_ROOTS_GATE;
    // After root changes already queued (a resync after lower deletions: resyncRoots).
    const synced = (this.rootsBusy ?? Promise.resolve()).then(() => gate ? untilExists(gate) : undefined).then(() => runRootsWorker(job)).then(
      (r) => { log.info(`gc roots: +${r.added} -${r.removed} in ${Date.now() - t0} ms (in the background)`); },
      (err) => {
        if (this.closed) return;
        log.warn(`gc roots: background sync failed (${err instanceof Error ? err.message : String(err)}); syncing here`);
        try { roots.sync(this.duplicates()); } catch (e) { log.warn(`gc roots: ${e instanceof Error ? e.message : String(e)}`); }
      });
    this.rootsBusy = synced;
    const settle = (): void => {
      const current = this.rootsBusy;
      void current?.then(() => {
        if (this.rootsBusy !== current) return settle();
        this.rootsBusy = null;
        gcLock.release();
      });
    };
    settle();
  }

  /**
   * The merged DB's rows whose object neither layer has (`has`: whether either layer has the
   * object of a name), typically lower paths the lower store lost since they were imported (its
   * GC, or a new image version at the same path), and the paths with an object that refer to
   * them: Nix takes those for valid, but what they need is gone. One pass over the merged DB's
   * rows against the lower DB's path index (~50 ms per 100,000 rows); only rows the lower DB
   * lacks are looked for in the layers.
   */
  rowsWithoutObject(has: (name: string) => boolean): { paths: string[]; referrers: string[] } {
    const db = this.upper.db;
    const lacking = withLowerAttached(db, this.lower, () => db.prepare(`SELECT v.id AS id, v.path AS path FROM main.ValidPaths v
      WHERE NOT EXISTS (SELECT 1 FROM lower.ValidPaths l WHERE l.path = v.path)`).all() as { id: number; path: string }[]);
    const gone = lacking.filter((r) => !has(r.path.slice(this.storeDir.length + 1)));
    if (gone.length === 0) return { paths: [], referrers: [] };
    const ids = JSON.stringify(gone.map((r) => r.id));
    const referrers = db.prepare(`SELECT DISTINCT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer
      WHERE r.reference IN (SELECT value FROM json_each(?)) AND r.referrer NOT IN (SELECT value FROM json_each(?)) ORDER BY v.path`)
      .pluck().all(ids, ids) as string[];
    return { paths: gone.map((r) => r.path).sort(), referrers };
  }

  /** Whether GC roots are still being written (status). */
  rootsSyncing(): boolean {
    return this.rootsBusy !== null;
  }

  /**
   * Follows the lower DB: every `intervalMs`, if its files changed, reopen the snapshot and
   * (mirror mode) import the new rows. `onNewPaths` hears the names of every new lower row
   * (null: too many to list; drop whole caches), in lazy mode too, and whether the merged DB
   * has their rows (mirror mode: imported, or the upper layer's own). `onLowerLost` hears that
   * the lower DB has fewer rows than the follower last counted.
   *
   * The check for changes stats the DB files on libuv's threadpool, one check at a time: a
   * lower DB whose server stops answering (a hung NFS mount) holds up the follower, not this
   * thread, which answers every request the fast path leaves to JS. Reading the rows stays
   * synchronous; it happens only after the files were seen to change, i.e. answered.
   */
  startFollower(intervalMs: number, onNewPaths: (names: string[] | null, settled: boolean) => void, onLowerLost: () => void = () => undefined): void {
    this.lower.conn(); // the snapshot the follower compares with
    this.reportedMaxId = this.mode === 'mirror' ? this.mirror.lastLowerId : this.lower.snapshotMaxId;
    this.onNewPaths = onNewPaths;
    this.onLowerLost = onLowerLost;
    if (this.lowerCensus === null) this.lowerLostPaths(); // lazy mode (mirror mode counted at its import)
    // A tick while a check waits (a lower DB that does not answer) adds nothing to wait.
    this.timer = setInterval(() => { if (this.following === null) this.follow().catch(() => undefined); }, intervalMs);
    this.timer.unref();
  }

  /**
   * One look at the lower DB, as the follower takes every interval; `refresh` takes one too.
   * Checks run one at a time: a call while one is under way gets a new check after it, since
   * that one may have looked before a change its caller knows of.
   */
  follow(): Promise<void> {
    const next = (this.following ?? Promise.resolve()).catch(() => undefined).then(() => this.followOnce());
    this.following = next;
    const done = (): void => { if (this.following === next) this.following = null; };
    next.then(done, done);
    return next;
  }

  /**
   * One check. A failed one (Nix holding the upper DB's write lock past the busy timeout, say)
   * leaves the report behind, so the next check tries again even if the lower DB stays as it is.
   * A failure is logged when it first occurs and when it ends, not at every tick.
   */
  private async followOnce(): Promise<void> {
    this.checkingSince = Date.now();
    try {
      const signature = await this.lower.signatureAsync();
      if (this.timer === null) return; // stopped meanwhile: the DBs may be closed
      if (signature !== this.lower.openedSignature) this.lower.reopen(signature);
      // Counted at every change of the snapshot, whoever reopened it: any read of the lower DB
      // meanwhile (an upper add's lowerHas, a lookup, a sync) reopens it too, and the change it
      // took in would otherwise never be counted here.
      if (this.lower.openedSignature !== this.censusSignature && this.lowerLostPaths()) {
        if (this.roots !== null) this.rootsNeedSync = true;
        this.onLowerLost();
      }
      if (this.rootsNeedSync) await this.resyncRoots();
      // A lower DB replaced by one with other ids: the rows up to the last id imported are looked
      // at again (the import skips the paths the merged DB has), else new ones there never show.
      // One look per change of the lower DB's files.
      if (this.mode === 'mirror' && this.lower.openedSignature !== this.idsCheckedSignature && this.lastFollowIdsCheck()) {
        log.warn(`follower: the lower DB's ids no longer name the paths they did (id ${this.mirror.lastLowerId}): it was replaced by another DB; importing every lower row the merged DB lacks`);
        this.mirror.rewind();
        this.reportedMaxId = 0;
      }
      if (this.mode === 'mirror' && Date.now() >= this.nextRowlessCheck) await this.restoreRowlessDuplicates();
      // A lazy lookup may have reopened the snapshot meanwhile: its new rows are news too. Paths
      // held back for a merged client's lock are looked at again once one of those locks is free.
      if (this.lower.snapshotMaxId > this.reportedMaxId || (this.heldLocks !== null && this.mirror.lockFreed(this.heldLocks))) {
        // Without flock (null, logged) the import goes on unlocked: better than no import at all.
        const lock = this.gcLockFile === null ? null : await tryGcLockShared(this.gcLockFile);
        if (lock === 'busy') {
          if (this.waitingForGcSince === 0) log.info('follower: a garbage collection holds Nix\'s GC lock; new lower paths are imported once it ends');
          this.waitingForGcSince ||= Date.now();
          return;
        }
        if (this.waitingForGcSince > 0) log.info(`follower: the GC lock was free again after ${Date.now() - this.waitingForGcSince} ms`);
        this.waitingForGcSince = 0;
        try {
          if (this.timer !== null) this.lowerGrew();
        } finally {
          if (lock !== null) lock.release();
        }
      }
      // Lazy mode: copies that failed are tried again when due, whether the lower DB grew or not.
      if (this.mode === 'lazy' && this.awaitingRow.size > 0 && this.timer !== null) this.copyAwaited();
      this.lastFollow = { at: Date.now() };
      if (this.failing.count > 0) log.info(`follower: caught up after ${this.failing.count} failed checks`);
      this.failing = { count: 0, message: '' };
    } catch (err) {
      let message = err instanceof Error ? err.message : String(err);
      // SQLite's words do not say which DB: the follower writes only the merged one.
      if (/database or disk is full/.test(message)) message += ` (the merged DB, in ${this.upper.dbDir})`;
      if (message !== this.failing.message) log.warn(`follower: ${message} (tried again at every check)`);
      this.failing = { count: this.failing.count + 1, message };
      throw err;
    } finally {
      this.checkingSince = null;
    }
  }

  /** Whether the mirror's ids no longer name what they did (Mirror.renumbered), noted for this snapshot. */
  private lastFollowIdsCheck(): boolean {
    const signature = this.lower.openedSignature;
    const renumbered = this.mirror.renumbered();
    this.idsCheckedSignature = signature;
    return renumbered;
  }

  /**
   * Whether the lower DB has fewer rows up to the census's id than the census counted: its GC
   * (or a `--verify` there) deleted paths. Then the merged root's GC roots may name paths that are
   * gone, and paths they kept alive may have no root left: a top the GC deleted kept its
   * references alive, which are tops now. Once the merged DB drops the deleted top's row
   * (`verify --repair`, `nix-store --verify`), a merged GC would drop those rows too, of lower
   * objects that still exist. One count over the ids per change of the lower DB's files.
   */
  private lowerLostPaths(): boolean {
    try {
      const { now, lost } = lostRows(this.lower.conn(), this.lowerCensus);
      this.lowerCensus = now;
      this.censusSignature = this.lower.openedSignature;
      return lost;
    } catch (err) {
      if (isTornRead(err)) return false; // counted again at the next check (censusSignature unchanged)
      throw err;
    }
  }

  /**
   * Mirror mode, every ROWLESS_CHECK_MS: an object in both layers whose row the merged DB lacks
   * is a deletion that did not finish (Nix deletes the row, then the files; a client killed
   * half way leaves part of the upper copy shadowing the lower one, and the path invalid, for
   * good: upperRemoved only runs once the top-level entry goes). Once no GC or delete holds
   * Nix's GC lock (they hold it throughout), the row is copied back from the lower DB, which
   * sets the partial copy aside (setAsideLeftovers); a client holding the path's lock (an add
   * that deleted the copy first) is waited for (restoreRow).
   */
  private async restoreRowlessDuplicates(): Promise<void> {
    this.nextRowlessCheck = Date.now() + ROWLESS_CHECK_MS;
    // Only after another connection (a Nix client) deleted rows of the merged DB (fewer rows up
    // to the last count's top id), or while a GC held the last look up: one count per commit of
    // a client, not a look at every upper object.
    const version = this.upper.db.pragma('data_version', { simple: true }) as number;
    if (version === this.rowlessCheckedVersion && !this.rowlessHeldUp) return;
    this.rowlessCheckedVersion = version;
    const { now, lost } = lostRows(this.upper.db, this.upperCensus);
    this.upperCensus = now;
    if (!lost && !this.rowlessHeldUp) return;
    this.rowlessHeldUp = false;
    // Not the index's duplicates: with the row gone the merged view no longer counts the lower copy.
    const rowless = this.upperObjects().filter((n) => this.upper.idOf(`${this.storeDir}/${n}`) === undefined && this.lowerHas(n));
    if (rowless.length === 0) return;
    const lock = this.gcLockFile === null ? null : await tryGcLockShared(this.gcLockFile);
    // A GC or delete runs: looked at again later. Without the lock (flock failing) a delete under
    // way cannot be told from one that died: nothing is done (a remount or verify --repair is).
    if (lock === null) { log.info(`${rowless.length} objects in both layers have no row in the merged DB, and Nix's GC lock could not be asked whether a delete is under way: left to verify --repair`); return; }
    if (lock === 'busy') { this.rowlessHeldUp = true; return; }
    if (this.timer === null) { lock.release(); return; } // stopped meanwhile
    try {
      for (const name of rowless) {
        const storePath = `${this.storeDir}/${name}`;
        if (this.upper.idOf(storePath) !== undefined) continue; // a client registered it meanwhile
        // A client adding the path the lower store gained meanwhile holds its lock: its row comes.
        if (this.heldLocks !== null && this.heldLocks(() => [storePath]).size > 0) continue;
        log.warn(`${storePath} is in both layers without a row in the merged DB: a deletion that did not finish; restoring the row and setting the upper copy aside`);
        if (!this.restoreRow(name)) this.reconcileSoon(name);
        else if (this.roots && !this.duplicates().has(name)) this.rootsDo(() => this.roots!.stoppedDuplicate(name));
      }
    } finally {
      lock.release();
    }
  }

  /**
   * After lower deletions: the full roots sync, in the background under Nix's GC lock held
   * shared (syncRootsInBackground). While a GC holds it, tried again at every check.
   */
  private async resyncRoots(): Promise<void> {
    const lock = this.gcLockFile === null ? null : await tryGcLockShared(this.gcLockFile);
    if (lock === 'busy') return;
    this.rootsNeedSync = false;
    log.info('gc roots: the lower store lost paths; syncing the roots again');
    this.syncRootsInBackground(lock, this.lower.openedSignature);
  }

  /**
   * The lower DB's snapshot has rows beyond the last report, or paths held back for a lock may
   * go. Mirror mode imports them (the ones the upper DB lacks; the rest are the upper layer's
   * objects, now in both layers) and roots the imported ones. Every new name is reported,
   * duplicates included: a lookup of the name may have been answered "not in the lower store"
   * just before, and that answer is now wrong. Names held back are reported unsettled (no row
   * yet), and settled once they go in.
   */
  private lowerGrew(): void {
    const t0 = Date.now();
    const upTo = this.lower.snapshotMaxId;
    const lowerPaths = this.lower.pathsBetween(this.reportedMaxId, upTo, LIST_LIMIT);
    const mirrored = this.mode === 'mirror';
    let imported: ImportResult | null = null;
    let waiting = new Set<string>();
    let released: string[] = [];
    if (mirrored) {
      const wasWaiting = new Set(this.mirror.waitingPaths);
      imported = this.mirror.importNew(this.heldLocks ?? undefined);
      waiting = new Set(this.mirror.waitingPaths);
      // Not waiting any more: imported, or the merged DB has a row of its own (the client that
      // held the lock registered its build), or the lower store dropped it (then not settled).
      released = [...wasWaiting].filter((p) => !waiting.has(p) && this.upper.idOf(p) !== undefined);
      const held = [...waiting].filter((p) => !wasWaiting.has(p));
      if (held.length > 0) log.info(`follower: ${held.length} new lower paths wait for a merged-store client's lock (${held.slice(0, 3).join(', ')}${held.length > 3 ? ', ...' : ''})`);
      if (released.length > 0) log.info(`follower: ${released.length} lower paths held back for a lock went in (${waiting.size} still wait)`);
      this.stats.count('rowsMirrored', imported.count);
      for (const p of [...lowerPaths ?? [], ...released]) if (!waiting.has(p)) this.known.set(p, true);
      this.stats.trace?.('import', this.storeDir, `${imported.count} rows`, Date.now() - t0);
    }
    this.reportedMaxId = upTo;
    const name = (p: string): string => p.slice(this.storeDir.length + 1);
    const settled = lowerPaths ? lowerPaths.filter((p) => !waiting.has(p)) : null;
    this.onNewPaths(settled ? [...settled, ...released].map(name) : null, mirrored);
    if (settled === null && released.length > 0) this.onNewPaths(released.map(name), true);
    const unsettled = lowerPaths?.filter((p) => waiting.has(p)) ?? [];
    if (unsettled.length > 0) this.onNewPaths(unsettled.map(name), false);
    // Rooted once the new names are reported: before, the index could still hold "not in the
    // lower store" for a name a merged client looked up just before it added the same path,
    // and that duplicate was rooted (uncollectable until a remount).
    if (imported !== null) this.rootImported(imported);
  }

  private rootImported(imported: ImportResult): void {
    if (this.rootsAfterImport) {
      this.rootsAfterImport = false;
      this.syncRoots();
    } else if (imported.paths) {
      const paths = imported.paths;
      if (paths.length > 0) this.rootsDo(() => this.roots?.added(paths, this.duplicates()));
    } else {
      this.syncRoots();
    }
  }

  /**
   * Lazy mode: tries again the closure copies of the objects served without their rows
   * (usually none: a torn read no longer fails a copy), those whose wait is over. One whose
   * row is still missing, or whose copy fails again, goes back on the list (awaitRow).
   */
  private copyAwaited(): void {
    const now = Date.now();
    for (const [p, { at }] of [...this.awaitingRow.entries()]) {
      if (at > now) continue;
      const copy = this.lowerLookup(p.slice(this.storeDir.length + 1));
      if (copy === null) this.awaitingRow.delete(p); // copied meanwhile
      else copy.catch((err) => log.warn(`closure sync for ${p} failed: ${String(err)}`));
    }
  }

  /**
   * `storePath` is served without its row: copyAwaited tries again after 1 s, doubling with
   * each failure up to a minute. Every lower DB change used to retry every such copy at once,
   * and a lower store with a busy writer changes 20 times a second.
   */
  private awaitRow(storePath: string): void {
    const failures = (this.awaitingRow.get(storePath)?.failures ?? 0) + 1;
    this.awaitingRow.set(storePath, { failures, at: Date.now() + Math.min(AWAIT_MAX_MS, AWAIT_FIRST_MS * 2 ** (failures - 1)) });
  }

  /**
   * The follower's position: the last lower DB id imported, the newest one in the lower DB as
   * the follower last read it, how long the lower DB has had rows not yet imported (0 when
   * caught up), how long the follower's current check of the lower DB files has waited
   * (0 when none is under way; long when the lower DB's server does not answer), and how many
   * checks in a row failed, with the last error. Reads nothing: status must answer while the
   * lower DB does not.
   */
  followerState(): {
    mode: MetadataMode; lastTickAt: string | null; lastLowerId: number; lowerMaxId: number; pendingRows: number; lagMs: number; checkWaitingMs: number;
    failing: { count: number; message: string }; waitingForGcMs: number; waitingForLocks: number;
  } {
    const lowerMaxId = this.lower.snapshotMaxId;
    const pending = this.mode === 'mirror' ? Math.max(0, lowerMaxId - this.mirror.lastLowerId) : 0;
    if (pending === 0) this.behindSince = null;
    else this.behindSince ??= Date.now();
    return {
      mode: this.mode, lastTickAt: this.lastFollow.at ? new Date(this.lastFollow.at).toISOString() : null,
      lastLowerId: this.mirror.lastLowerId, lowerMaxId, pendingRows: pending,
      lagMs: this.behindSince === null ? 0 : Date.now() - this.behindSince,
      checkWaitingMs: this.checkingSince === null ? 0 : Date.now() - this.checkingSince,
      failing: { ...this.failing },
      waitingForGcMs: this.waitingForGcSince === 0 ? 0 : Date.now() - this.waitingForGcSince,
      waitingForLocks: this.mirror.waitingPaths.length,
    };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const t of this.reconcileTimers.values()) clearTimeout(t);
    this.reconcileTimers.clear();
  }

  /** Waits (at most `ms`) for closure copies still in flight, e.g. before the DBs close. */
  async drain(ms: number): Promise<void> {
    const pending = [...this.inflight.values(), ...(this.rootsBusy ? [this.rootsBusy] : [])].map((p) => p.catch(() => undefined));
    if (pending.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(pending), new Promise((r) => { timer = setTimeout(r, ms); })]);
    clearTimeout(timer);
  }

  close(): void {
    this.closed = true;
    void this.checkpointer?.close();
    this.stop();
    this.lower.close();
    this.upper.close();
  }
}

/** Resolves once `file` exists (polled every 50 ms). */
async function untilExists(file: string): Promise<void> {
  while (!(await fs.promises.access(file).then(() => true, () => false))) await new Promise((r) => setTimeout(r, 50));
}

function runRootsWorker(job: RootsJob): Promise<{ added: number; removed: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(path.join(__dirname, 'gc-roots-worker.js'), { workerData: job });
    w.once('message', (m: { added: number; removed: number } | { error: string }) => {
      if ('error' in m) reject(new Error(m.error)); else resolve(m);
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited (${code}) without an answer`)));
  });
}
