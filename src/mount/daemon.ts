import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowerDb } from '../metadata/lower-db';
import { GcLock, holdGcLockShared } from '../metadata/gc-lock';
import { LowerRoots } from '../metadata/gc-roots';
import { seedFromLower } from '../metadata/seed';
import { Metadata } from '../metadata/metadata';
import type { HeldLocks } from '../metadata/held-locks';
import { isBusy } from '../metadata/sqlite';
import { UpperDb } from '../metadata/upper-db';
import { Overlay } from '../overlay/overlay';
import { log } from '../util/log';
import { makeDir, removeTree, tightenDir } from '../util/own-files';
import { isBookkeepingName, isStoreObjectName } from '../store/store-path';
import { LAZY_GC_WARNING, MountConfig, rootLayout } from './config';
import { ControlServer } from './control';
import { PollChoice, PollGovernor, cpuWaitedUs, defaultPoll } from './poll';
import { Tracer } from '../overlay/trace';
import { outputLockProbe } from './output-locks';
import { controlSocketPath, isMountPoint, mountDevice, removeRecord, writeRecord, writeRootConfig } from './records';
import { GUARD_NAME, placeGuard } from './guard';
import { validateMount } from './validate';

/** How many lower objects a mirror mount settles at start (native/fastpath.c keeps 2^19). */
const SETTLE_LIMIT = 200_000;

/** How long refresh waits for Nix to release the merged DB's write lock. */
const REFRESH_BUSY_MS = 10_000;

/** How long status waits for each file check of its health report. */
const HEALTH_WAIT_MS = 2000;

/**
 * How long after the lower DB last lost rows the mount looks for merged rows whose object is
 * gone: Nix deletes a path's row, then its files, one path after another through a whole GC.
 */
const GONE_CHECK_DELAY_MS = 2000;

/** Reads the first bytes of a SQLite DB file (asynchronously), and checks they are SQLite's. */
async function readSqliteHeader(file: string): Promise<void> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(16), 0, 16, 0);
    if (bytesRead < 16 || buffer.toString('latin1') !== 'SQLite format 3\0') throw new Error(`${file} is not a SQLite DB`);
  } finally {
    await fh.close();
  }
}

/** A running mount: the overlay, its metadata module and the FUSE session. */
export class Daemon {
  private stopping: Promise<void> | null = null;
  private fuse: import('../fuse/adapter').FuseMount | null = null;
  private control: ControlServer | null = null;
  private tracer: Tracer | null = null;
  private recordWritten = false;
  readonly startedAt = new Date();
  overlay!: Overlay;
  metadata!: Metadata;
  /** Called when the mount disappeared without us (fusermount -u from outside). */
  onMountGone: (() => void) | undefined;
  private watchdog: NodeJS.Timeout | null = null;
  private lowerWatch: NodeJS.Timeout | null = null;
  /**
   * `device:inode` of the layer dirs the mount opened. The native fast path serves a settled
   * name through a descriptor of each, opened at mount; the rest goes by path. A dir replaced
   * under the mount (renamed away, another put in its place; a new image mounted over the path)
   * splits the two: the layerReplaced check names it.
   */
  private layerIds: { dir: string; what: string; id: string }[] = [];
  /**
   * The merged DB's rows whose object neither layer has, as last looked for (rowsWithoutObject),
   * and the two DBs' versions then (dbVersions): status looks again once either changed.
   */
  private gone: { paths: string[]; referrers: string[]; seen: string } | null = null;
  /** The look for such rows after the lower DB lost rows (GONE_CHECK_DELAY_MS). */
  private goneCheck: NodeJS.Timeout | null = null;
  /** The replaced layers already logged (one warning each). */
  private readonly layersWarned = new Set<string>();
  private poll: PollGovernor | null = null;
  /** Health checks under way, by problem name, since when: none is run twice at once. */
  private readonly probes = new Map<string, { since: number; done: Promise<unknown> }>();
  /** Which store paths a client of the mount holds the lock of (probeOutputLocks); null: unknown. */
  private locks: HeldLocks | null = null;
  /** The deletion of the trash dir's contents under way (emptyTrash). */
  private trashing: Promise<void> = Promise.resolve();
  /** Hears what a slow start is doing (the CLI shows it when mounting takes a while). */
  onProgress: ((text: string) => void) | undefined;

  /** What the operator should know about this mount (`mount` prints them on stderr). */
  readonly warnings: string[] = [];

  constructor(readonly cfg: MountConfig) {}

  /**
   * Deletes what dropUpper moved aside (now, or left by an earlier mount), in the background;
   * one deletion at a time.
   */
  private emptyTrash(): void {
    const dir = this.trashDir;
    if (!fs.existsSync(dir)) return;
    this.trashing = this.trashing.then(async () => {
      for (const name of await fs.promises.readdir(dir)) {
        await removeTree(path.join(dir, name));
      }
    }).catch((err) => log.warn(`could not empty ${dir}: ${String(err)}`));
  }

  /** Validates, creates the merged root, imports metadata and mounts. Resolves once mounted. */
  async start(): Promise<void> {
    const cfg = this.cfg;
    validateMount(cfg);
    const lower = rootLayout(cfg.lowerRoot);
    const merged = rootLayout(cfg.mergedRoot);

    // The process's umask is 0 (the CLI's serve()): everything of our own gets its mode explicitly.
    for (const d of [cfg.upperDir, cfg.workDir, merged.storeDir, merged.dbDir, merged.stateDir]) makeDir(d);
    // What an earlier mount killed before its stop left in its hidden dir (files unlinked while
    // open, upper copies optimise moved out of the store) goes to the trash, emptied once mounted.
    const hidden = path.join(cfg.workDir, 'hidden');
    if (fs.existsSync(hidden)) {
      makeDir(this.trashDir);
      fs.renameSync(hidden, path.join(this.trashDir, `hidden-${process.pid}-${Date.now()}`));
    }
    // Hidden by the mount; stops Nix on this root whenever it is down. A mount point that cannot
    // take it (a read-only filesystem) still mounts, with a warning.
    try {
      placeGuard(merged.storeDir, cfg);
    } catch (err) {
      // Nix stops there all the same, unless it finds the .links dir it made earlier (then it
      // takes the bare dir for an empty store).
      const why = err instanceof Error ? err.message : String(err);
      if (fs.lstatSync(path.join(merged.storeDir, GUARD_NAME), { throwIfNoEntry: false })?.isDirectory()) {
        this.warn(`could not put the guard in ${merged.storeDir} (${why}), which holds a .links dir: while this root is not mounted, Nix would take its store for empty (nix-store --verify would drop the DB's rows); remove ${merged.storeDir}/.links`);
      } else {
        log.info(`could not write the guard in ${merged.storeDir} (${why}); Nix cannot make .links there either, so it refuses the unmounted root all the same`);
      }
    }
    tightenDir(merged.stateDir); // an earlier version made it (and daemon.json) world-writable
    if (cfg.logFile) makeDir(path.dirname(cfg.logFile));
    if (fs.statSync(cfg.upperDir).dev !== fs.statSync(cfg.workDir).dev) {
      throw new Error(`work dir ${cfg.workDir} must be on the same filesystem as the upper dir ${cfg.upperDir}`);
    }
    if (cfg.logFile) log.setFile(cfg.logFile);

    this.overlay = new Overlay({ upperDir: cfg.upperDir, lowerDir: lower.storeDir, workDir: cfg.workDir },
      { negativeTtlMs: cfg.negativeTimeoutS * 1000 });
    const lowerDb = new LowerDb(lower.dbFile);
    const lowerMaxId = lowerDb.maxId();
    writeRootConfig({ config: cfg, mountedAt: this.startedAt.toISOString(), lowerMaxIdAtMount: lowerMaxId });
    this.onProgress?.(`lower store: ${lowerMaxId} paths in its DB`);
    const hadDb = fs.existsSync(merged.dbFile);
    const seededTo = cfg.metadata === 'mirror' && !hadDb ? this.seed(lowerDb, merged.dbDir) : null;
    const upperDb = UpperDb.open(merged.dbDir);
    // Before any import: which upper objects the merged DB does not list (seeding lists lower rows only).
    const rowless = this.upperObjects().filter((n) => !hadDb || upperDb.idOf(`/nix/store/${n}`) === undefined);
    // What the merged view shows of the lower dir (layers.ts LowerRegistry). Mirror mode: what
    // the merged DB lists, i.e. imported (and rooted); before that Nix would take a lower object
    // for invalid and try to delete it. Lazy mode: what the lower DB lists (a lookup copies it).
    this.overlay.index.registry = cfg.metadata === 'mirror'
      ? { has: (name) => upperDb.idOf(`/nix/store/${name}`) !== undefined, sortedNames: () => upperDb.validNames('/nix/store') }
      : { has: (name) => lowerDb.isValid(`/nix/store/${name}`), sortedNames: () => lowerDb.validNames('/nix/store') };
    if (cfg.traceFile) this.trace(true, cfg.traceFile, cfg.tracePrefix);
    this.metadata = new Metadata(upperDb, lowerDb, cfg.metadata, this.overlay.stats);
    const roots = new LowerRoots(path.join(merged.gcRootsDir, 'local-overlay-lower-store'), lowerDb, path.join(merged.stateDir, 'gc-roots.stamp'));
    let gcLock: GcLock | null = null;
    if (cfg.metadata === 'mirror') {
      this.onProgress?.('importing lower DB rows into the merged DB');
      if (seededTo !== null) {
        this.metadata.mirror.seeded(seededTo);
        this.overlay.stats.count('rowsMirrored', upperDb.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number);
      }
      this.metadata.importAll();
      this.metadata.roots = roots;
      this.metadata.duplicates = () => this.overlay.duplicates();
      this.metadata.upperObjects = () => [...this.overlay.index.upperEntries()].filter(([, kind]) => kind === 'object').map(([name]) => name);
      this.metadata.gcLockFile = path.join(merged.dbDir, '..', 'gc.lock');
      // The lower store changed since the last mount: it may have lost paths the merged DB lists.
      if (hadDb && !roots.current(this.overlay.duplicates())) {
        const text = this.lookForRowsWithoutObject();
        if (text !== null) this.warn(text);
      }
      // The roots are written in the background once mounted; no GC can start before.
      gcLock = await holdGcLockShared(path.join(merged.dbDir, '..', 'gc.lock'));
    } else {
      roots.clear();
      log.warn(LAZY_GC_WARNING);
    }
    this.settleRowless(rowless, lowerDb, merged.dbFile, hadDb);
    // From now on a rowless upper object goes when a copy is about to give it the lower row.
    this.metadata.setLeftovers((paths) => this.dropLeftovers(paths));
    this.overlay.hooks = {
      lowerLookup: (name) => this.metadata.lowerLookup(name),
      lowerSettled: (name) => this.metadata.lowerSettled(name),
      upperRemoved: (name) => this.metadata.upperRemoved(name),
      upperAdded: (name) => this.metadata.upperAdded(name),
      lowerWriteRefused: (name) => this.metadata.lowerWriteRefused(name),
    };

    // Loaded here, not at the top: a missing libfuse must be a clear error, not a crash.
    const { FuseMount, DEFAULT_MOUNT_OPTIONS } = await import('../fuse/adapter');
    const pollChoice: PollChoice = cfg.pollUs !== undefined ? { us: Math.max(0, cfg.pollUs) } : defaultPoll();
    this.layerIds = [{ dir: lower.storeDir, what: 'lower store', id: '' }, { dir: cfg.upperDir, what: 'upper dir', id: '' }]
      .map((l) => ({ ...l, id: dirId(fs.statSync(l.dir)) }));
    const fuse = new FuseMount(merged.storeDir, this.overlay,
      { ...DEFAULT_MOUNT_OPTIONS, negativeTimeout: cfg.negativeTimeoutS, attrTimeout: cfg.attrTimeoutS ?? DEFAULT_MOUNT_OPTIONS.attrTimeout },
      this.fastPathWanted(), cfg.passthrough !== false);
    this.onProgress?.(`mounting ${merged.storeDir}`);
    try {
      await fuse.mount();
    } catch (err) {
      gcLock?.release();
      throw err;
    }
    this.fuse = fuse;
    this.probeOutputLocks(merged.storeDir, cfg.metadata === 'mirror');
    this.metadata.syncRootsInBackground(gcLock);
    this.emptyTrash();
    log.info(`mounted ${merged.storeDir} (lower ${lower.storeDir}, upper ${cfg.upperDir}, metadata ${cfg.metadata})`);
    if (pollChoice.us > 0) {
      // Tests of the polling itself switch the governor off: how loaded the machine is must not
      // decide them (the governor has tests of its own, driven by a PSI file).
      const governed = cpuWaitedUs() !== null && process.env.LOCAL_OVERLAY_TEST_POLL_UNGOVERNED !== '1';
      if (governed) {
        this.poll = new PollGovernor(pollChoice.us, (us) => fuse.setPoll(us), {
          onChange: (on, share) => log.debug(`polling ${on ? 'on' : 'off'}: tasks waited for a CPU ${(share * 100).toFixed(0)}% of the last interval`),
        });
        this.poll.start();
      } else {
        fuse.setPoll(pollChoice.us);
      }
      log.info(`polling /dev/fuse up to ${pollChoice.us} µs before sleeping${governed ? ', while no task waits for a CPU' : ''}`);
    } else {
      log.info(`not polling /dev/fuse${pollChoice.why ? `: ${pollChoice.why}` : ''}`);
    }

    this.watchLowerStore(lower.storeDir, cfg.followIntervalMs);
    this.metadata.startFollower(cfg.followIntervalMs, (names, settled) => this.lowerNamesNew(names, settled), () => {
      // The lower store lost paths while mounted (its GC, another version of it): merged paths
      // may now be "valid" without an object. Looked for once its deletions have paused.
      if (this.goneCheck) clearTimeout(this.goneCheck);
      this.goneCheck = setTimeout(() => {
        this.goneCheck = null;
        const text = this.lookForRowsWithoutObject();
        if (text !== null) log.warn(text);
      }, GONE_CHECK_DELAY_MS);
      this.goneCheck.unref();
    });
    this.control = new ControlServer(controlSocketPath(cfg.mergedRoot), this);
    await this.control.listen();
    writeRecord({
      pid: process.pid, startedAt: this.startedAt.toISOString(), config: cfg,
      controlSocket: controlSocketPath(cfg.mergedRoot), logFile: cfg.logFile ?? null,
    });
    this.recordWritten = true;
    // After the mount has answered (start's caller reports it ready before the next turn):
    // until a lower object is settled its lookups just go through JS once.
    if (cfg.metadata === 'mirror') setImmediate(() => this.settleLowerObjects(lowerDb));
    // A mount removed from outside leaves fuse-native serving nothing: notice and stop.
    this.watchdog = setInterval(() => {
      if (!this.stopping && !isMountPoint(merged.storeDir)) {
        log.warn(`${merged.storeDir} was unmounted from outside; stopping`);
        this.onMountGone?.();
      }
    }, 2000);
    this.watchdog.unref();
  }

  /**
   * Mirror mode: the follower holds back a new lower path while a client of the mount holds its
   * lock (metadata/mirror.ts), seen in /proc/locks by the mount's device and our inode numbers.
   * Either mode: dropLeftovers leaves an upper object alone while a client holds its lock.
   */
  private probeOutputLocks(storeDir: string, mirror: boolean): void {
    const dev = mountDevice(storeDir);
    if (dev === null) {
      log.warn(`${storeDir} is not in /proc/self/mountinfo: new lower paths are imported even while a client of the mount holds their lock, and upper objects without a row are not set aside when the lower copy gets its row (a client could be writing them)`);
      return;
    }
    this.locks = outputLockProbe(dev, this.metadata.storeDir, (name) => this.overlay.upperIno(name));
    if (mirror) this.metadata.heldLocks = this.locks;
  }

  /**
   * Mirror mode: every lower object whose row the merged DB has needs no closure copy on
   * lookup, so the fast path may answer its lookups from just after the mount has answered
   * (a cold `ls -l` of the store root then never reaches JS). Newest first, at most
   * SETTLE_LIMIT of them; the rest are settled on their first lookup.
   */
  private settleLowerObjects(lowerDb: LowerDb): void {
    if (this.stopping) return; // the DBs may be closed already
    const t0 = Date.now();
    const prefix = `${this.metadata.storeDir}/`;
    const paths = lowerDb.paths(this.metadata.mirror.lastLowerId, SETTLE_LIMIT);
    // In slices, so that requests for JS are not held up by it.
    const step = (from: number): void => {
      if (this.stopping) return;
      const end = Math.min(paths.length, from + 10_000);
      for (let i = from; i < end; i++) {
        if (paths[i]!.startsWith(prefix)) this.overlay.index.lowerServed(paths[i]!.slice(prefix.length));
      }
      if (end < paths.length) setImmediate(step, end);
      else log.info(`fast path: ${paths.length} lower objects settled in ${Date.now() - t0} ms`);
    };
    step(0);
  }

  /** A new mirror DB copied whole from the lower DB (seed.ts); null when it cannot be. */
  private seed(lowerDb: LowerDb, dbDir: string): number | null {
    const t0 = Date.now();
    const r = seedFromLower(lowerDb, dbDir);
    if ('unseeded' in r) {
      log.info(`mirror: ${r.unseeded}; importing row by row`);
      return null;
    }
    log.info(`mirror: seeded the upper DB from the lower DB (ids up to ${r.maxId}) in ${Date.now() - t0} ms`);
    return r.maxId;
  }

  /** Top-level upper store objects (not bookkeeping names, not whiteouts). */
  private upperObjects(): string[] {
    const out: string[] = [];
    for (const [name, kind] of this.overlay.index.upperEntries()) {
      if (kind === 'object' && isStoreObjectName(name) && !isBookkeepingName(name)) out.push(name);
    }
    return out;
  }

  /**
   * Upper objects the merged DB did not list at mount. Nix deletes a path's row before its files
   * and registers a new path after them, so such an object is a deletion or an add that did not
   * finish (a crash), or the merged DB is new. With a merged DB that existed, one the lower store
   * also has is dropped, so the lower copy shows: a half-deleted upper copy would otherwise
   * shadow it, under the row the import just gave it. (With a new merged DB such copies are
   * duplicates, served as before; nothing says they are damaged.) The rest are invalid to Nix,
   * whose GC deletes them: said on stderr.
   */
  private settleRowless(rowless: string[], lowerDb: LowerDb, dbFile: string, hadDb: boolean): void {
    const invalid: string[] = [];
    for (const name of rowless) {
      if (!lowerDb.isValid(`/nix/store/${name}`) || !fs.existsSync(path.join(rootLayout(this.cfg.lowerRoot).storeDir, name))) {
        invalid.push(name);
        continue;
      }
      if (!hadDb) continue;
      this.dropUpper(name);
      log.warn(`dropped the upper copy of /nix/store/${name}: the merged DB had no row for it (a deletion or an add that did not finish), and the lower store has it`);
    }
    if (invalid.length === 0) return;
    const why = hadDb ? 'an add that did not finish, or a deletion' : `the merged DB ${dbFile} was made anew`;
    this.warn(`${invalid.length} upper store object${invalid.length === 1 ? ' has' : 's have'} no row in the merged DB (${why}): Nix takes ${invalid.length === 1 ? 'it' : 'them'} for invalid, and its GC deletes ${invalid.length === 1 ? 'it' : 'them'}: ${invalid.slice(0, 5).map((n) => `/nix/store/${n}`).join(', ')}${invalid.length > 5 ? ', ...' : ''} (\`local-overlay verify\` lists them all)`);
  }

  /**
   * Metadata's Leftovers, once mounted: of `paths`, which a copy of lower rows is about to make
   * valid, the upper objects (they have no row: copies add only rows the merged DB lacks) are
   * what an add that did not finish left, not a client's work in progress (a client adding or
   * building a path holds its lock, through the mount, from before its files exist until its row
   * is in): moved aside, so that the lower copy shows under its row. Those whose lock is held now
   * are left alone and returned. A rename that fails leaves the object as it is (logged).
   */
  private dropLeftovers(paths: readonly string[]): Set<string> {
    const prefix = `${this.metadata.storeDir}/`;
    const upper = paths.filter((p) => p.startsWith(prefix) && this.overlay.index.upperKind(p.slice(prefix.length)) === 'object');
    if (upper.length === 0) return new Set();
    // Without the lock probe (probeOutputLocks) a client's work in progress cannot be told from
    // a leftover: every one is left alone, as if locked.
    const locked = this.locks?.(() => upper) ?? new Set<string>(upper);
    for (const p of upper) {
      if (locked.has(p)) continue;
      const name = p.slice(prefix.length);
      try {
        this.dropUpper(name);
      } catch (err) {
        log.warn(`could not set aside the upper copy of ${p}, which has no row in the merged DB (an add that did not finish): ${String(err)}`);
        continue;
      }
      log.warn(`dropped the upper copy of ${p}: the merged DB had no row for it (an add that did not finish), and the lower store's row of it was being copied in`);
    }
    this.emptyTrash();
    return locked;
  }

  /**
   * Moves upper object `name` to the trash dir: the lower object of that name shows from now on
   * (the fast path's table forgets the upper one, and once mounted the kernel its entry, whose
   * attributes could otherwise stay the upper object's for up to attr_timeout).
   */
  private dropUpper(name: string): void {
    makeDir(this.trashDir);
    fs.renameSync(path.join(this.cfg.upperDir, name), path.join(this.trashDir, `${name}-${process.pid}-${Date.now()}`));
    this.overlay.index.upperRemoved(name);
    this.fuse?.forgetEntries([name]);
  }

  /**
   * Looks for the merged DB's rows whose object neither layer has (the lower store lost them
   * since they were imported: its GC, or another image version at the same path), and the
   * paths of the merged store that refer to them, which Nix takes for valid although what they
   * need is gone. Kept for status (health). Returns what the operator should know, or null.
   */
  private lookForRowsWithoutObject(): string | null {
    const lowerStore = rootLayout(this.cfg.lowerRoot).storeDir;
    const upper = new Set([...this.overlay.index.upperEntries()].filter(([, kind]) => kind === 'object').map(([name]) => name));
    const t0 = Date.now();
    const seen = this.dbVersions();
    const { paths, referrers } = this.metadata.rowsWithoutObject((name) => upper.has(name)
      || fs.lstatSync(path.join(lowerStore, name), { throwIfNoEntry: false }) !== undefined);
    log.info(`rows without an object: ${paths.length} (looked for in ${Date.now() - t0} ms)`);
    this.gone = paths.length === 0 ? null : { paths, referrers, seen };
    if (paths.length === 0) return null;
    const root = this.cfg.mergedRoot;
    return `the merged DB lists ${paths.length} path${paths.length === 1 ? '' : 's'} that neither layer has (the lower store lost them: its GC, or another version of it): ${some(paths)}. `
      + (referrers.length === 0
        ? `Nothing refers to them: a GC of the merged root, or \`local-overlay verify --repair ${root}\`, drops their rows`
        : `${referrers.length} path${referrers.length === 1 ? '' : 's'} of the merged store refer to them (${some(referrers)}), which Nix takes for valid though what they need is gone: \`local-overlay verify ${root}\` lists them all and what to do`);
  }

  /** Which versions of the merged DB (as other connections commit) and of the lower DB's files the daemon sees. */
  private dbVersions(): string {
    return `${String(this.metadata.upper.db.pragma('data_version', { simple: true }))} ${this.metadata.lower.openedSignature}`;
  }

  /** Status's view of rows without an object: looked for again if either DB changed since. */
  private rowsWithoutObjectProblem(): string | null {
    if (this.gone !== null && this.gone.seen !== this.dbVersions()) this.lookForRowsWithoutObject();
    if (this.gone === null) return null;
    const { paths, referrers } = this.gone;
    return `rows without an object: the merged DB lists ${paths.length} path${paths.length === 1 ? '' : 's'} neither layer has (${some(paths)})`
      + `${referrers.length > 0 ? `, and ${referrers.length} path${referrers.length === 1 ? '' : 's'} of the merged store refer to them` : ''}: \`local-overlay verify ${this.cfg.mergedRoot}\` says what to do`;
  }

  /** A warning for the operator: in the log, and on the stderr of `mount` (serve passes them on). */
  private warn(text: string): void {
    log.warn(text);
    this.warnings.push(text);
  }

  /** Where dropped upper copies wait to be deleted (on the upper filesystem: a rename moves them). */
  private get trashDir(): string {
    return path.join(this.cfg.workDir, 'trash');
  }

  /** Unmounts, then finishes DB work and closes the DBs. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.watchdog) clearInterval(this.watchdog);
      if (this.lowerWatch) clearInterval(this.lowerWatch);
      if (this.goneCheck) clearTimeout(this.goneCheck);
      this.poll?.stop();
      this.metadata?.stop();
      await this.control?.close();
      if (this.fuse) {
        try {
          await this.fuse.unmount();
        } catch (err) {
          log.warn(`unmount: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      // No request arrives any more: let closure copies in flight finish, then close the DBs.
      await this.metadata?.drain(10_000);
      this.metadata?.close();
      this.tracer?.close();
      // Only what this daemon made is removed: a refused start (say, the root is mounted
      // already) must not touch the records or the work dir of the mount that is running.
      if (this.recordWritten) removeRecord(this.cfg.mergedRoot);
      if (this.fuse) {
        try { fs.rmSync(path.join(this.cfg.workDir, 'hidden'), { recursive: true, force: true }); } catch { /* best effort */ }
        log.info(`unmounted ${rootLayout(this.cfg.mergedRoot).storeDir}`);
      }
    })();
    return this.stopping;
  }

  /** The fast path answers without JS, so without trace lines: it is off while tracing. */
  private fastPathWanted(): boolean {
    return this.cfg.fastPath !== false && this.tracer === null;
  }

  /** Switches tracing on (to `file`, filtered by `prefix`) or off. */
  trace(on: boolean, file?: string, prefix?: string): string | null {
    this.tracer?.close();
    this.tracer = null;
    this.overlay.stats.trace = undefined;
    if (!on) {
      this.fuse?.setFastPath(this.fastPathWanted());
      return null;
    }
    const f = file ?? this.cfg.traceFile ?? path.join(rootLayout(this.cfg.mergedRoot).stateDir, 'trace.log');
    this.tracer = new Tracer(f, prefix ?? this.cfg.tracePrefix);
    this.overlay.stats.trace = this.tracer.fn;
    this.fuse?.setFastPath(false);
    log.info(`tracing to ${f}${prefix ? ` (paths under ${prefix})` : ''}`);
    return f;
  }

  /**
   * Lower objects `names` (null: too many to list) are new to the merged view: in the lower DB
   * (the follower), or with rows in the merged DB now (`settled`: imported, copied).
   */
  private lowerNamesNew(names: string[] | null, settled: boolean): void {
    // New rows can make a bookkeeping-like lower name a store object (layers.ts).
    this.fuse?.invalidateListings(false);
    if (names === null) {
      this.overlay.index.refresh();
      return;
    }
    for (const n of names) {
      this.overlay.index.forgetLower(n); // it may have been looked up, and missed, just before
      if (settled) this.overlay.index.lowerServed(n); // its row is in the merged DB now
    }
    // Valid to Nix from now on (or, lazy, there to be looked up): a miss the kernel keeps from
    // a lookup just before (up to --negative-timeout) would show a valid path as missing
    // ("getting status of ...: No such file or directory"), so the kernel forgets those names.
    this.fuse?.forgetEntries(names);
  }

  /** `local-overlay sync` on this mount: the closures of lower paths `paths` copied now (Metadata.sync). */
  async sync(paths: string[]): Promise<number> {
    const { rows, copied } = await this.metadata.sync(paths);
    // Every path of the closures, not only the ones named: any may have been looked up, and
    // missed, before the lower store had it.
    this.lowerNamesNew(copied?.map((p) => path.basename(p)) ?? null, true);
    log.info(`sync: copied ${rows} rows for ${paths.length} lower path${paths.length === 1 ? '' : 's'}`);
    return rows;
  }

  /**
   * Forgets what the daemon knows of both layers: the upper dir is read again, and the lower DB
   * is looked at as the follower does (in mirror mode its new rows are imported before this
   * returns). Reopening the lower DB's snapshot without importing would hide its new rows from
   * the follower, which imports only when the files differ from the snapshot's.
   */
  async refresh(): Promise<void> {
    this.overlay.refresh();
    this.fuse?.invalidateListings(true);
    // Nix may hold the upper DB's write lock for a while (a large import), or a GC its GC lock
    // (new lower paths wait for it: its roots could not cover them): wait, within reason.
    const deadline = Date.now() + REFRESH_BUSY_MS;
    for (;;) {
      try {
        await this.metadata.follow();
        if (!this.metadata.waitingForGc) return;
        if (Date.now() > deadline) {
          throw new Error(`a garbage collection has held Nix's GC lock for over ${REFRESH_BUSY_MS / 1000} s: the new lower paths are imported (and shown) when it ends`);
        }
        await new Promise((r) => setTimeout(r, 100));
      } catch (err) {
        if (!isBusy(err)) throw err;
        if (Date.now() > deadline) {
          throw new Error(`the merged DB stayed locked by another writer for ${REFRESH_BUSY_MS / 1000} s; the follower imports the new lower rows once it is free`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /**
   * The kernel keeps the root's listing (native/fastpath.c, "the channel"); the lower store
   * changes beside the mount, so when its directory or DB changes the kernel is told to list
   * the root again.
   */
  private watchLowerStore(storeDir: string, intervalMs: number): void {
    // Asynchronous (libuv's threadpool): a lower store that stops answering (a hung NFS
    // server) must not stop this thread, which answers every request that needs JS.
    const look = async (): Promise<string> => {
      try {
        const st = await fs.promises.stat(storeDir, { bigint: true });
        return `${st.mtimeNs}:${st.ctimeNs}:${st.ino}`;
      } catch {
        return 'absent';
      }
    };
    let last: string | null = null;
    let looking = false;
    const tick = async (): Promise<void> => {
      if (looking) return; // the previous look still waits on the lower store
      looking = true;
      try {
        const now = await look();
        if (last !== null && now !== last) {
          this.fuse?.invalidateListings(false);
          await this.layerReplaced().then((problem) => {
            if (problem === null || this.layersWarned.has(problem)) return;
            this.layersWarned.add(problem);
            log.warn(problem);
          }, () => undefined);
        }
        last = now;
      } finally {
        looking = false;
      }
    };
    void tick();
    this.lowerWatch = setInterval(() => void tick(), intervalMs);
    this.lowerWatch.unref();
  }

  async status(): Promise<Record<string, unknown>> {
    const s = this.overlay.stats;
    // Requests the fast path answered count like the JS handlers' (fastPath has its own view).
    const fast = this.fuse?.fastCounters() ?? null;
    const counters = { ...s.counters };
    const ops: Record<string, number> = { ...s.ops };
    if (fast) {
      counters.upper += fast.upper;
      counters.lower += fast.lower;
      counters.miss += fast.miss;
      for (const op of ['getattr', 'fgetattr', 'readlink', 'open', 'create', 'fsync', 'ftruncate', 'readdir', 'mkdir', 'unlink', 'rmdir',
        'symlink', 'rename', 'link', 'chmod', 'chown', 'truncate', 'utimens', 'release'] as const) {
        if (fast[op] > 0) ops[op] = (ops[op] ?? 0) + fast[op];
      }
    }
    return {
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      uptimeS: Math.round((Date.now() - this.startedAt.getTime()) / 1000),
      config: this.cfg,
      counters,
      ops,
      fastPath: fast,
      follower: this.metadata.followerState(),
      gcRootsSyncing: this.metadata.rootsSyncing(),
      memory: process.memoryUsage(),
      health: await this.health(),
      tracing: this.tracer ? { file: this.tracer.file, prefix: this.tracer.prefix ?? null } : null,
    };
  }

  /**
   * Whether the lower store, both DBs and the upper dir answer. The files are checked on
   * libuv's threadpool and waited for at most HEALTH_WAIT_MS: a layer on a server that stops
   * answering (a hung NFS mount) is reported as such, and holds up neither this thread nor
   * more than one pool thread per check (a check still waiting is not started again).
   */
  async health(): Promise<{ ok: boolean; problems: string[] }> {
    const lower = rootLayout(this.cfg.lowerRoot);
    const results = await Promise.all([
      this.probe('lower store unreadable', () => fs.promises.access(lower.storeDir, fs.constants.R_OK | fs.constants.X_OK)),
      this.probe('lower DB unreadable', () => readSqliteHeader(lower.dbFile)),
      this.probe('upper dir not writable', () => fs.promises.access(this.cfg.upperDir, fs.constants.W_OK)),
      this.probe('upper filesystem full', () => notFull(this.cfg.upperDir)),
      this.probe('merged DB filesystem full', () => notFull(rootLayout(this.cfg.mergedRoot).dbDir)),
      this.probe('layer dir replaced', () => this.layerReplaced().then((problem) => { if (problem !== null) throw new Error(problem); })),
    ]);
    // The upper DB is local (every write of the mount goes next to it): asked on this thread.
    try { this.metadata.upper.idOf('/nix/store/health-check'); } catch (err) { results.push(`upper DB unreadable: ${String(err)}`); }
    try {
      const gone = this.rowsWithoutObjectProblem();
      if (gone !== null) results.push(gone);
    } catch (err) {
      results.push(`rows without an object: not looked for: ${String(err)}`);
    }
    const problems = results.filter((r): r is string => r !== null);
    return { ok: problems.length === 0, problems };
  }

  /** What is wrong when a layer dir is not the one mounted any more (layerIds); null when none is. */
  private async layerReplaced(): Promise<string | null> {
    for (const l of this.layerIds) {
      const now = await fs.promises.stat(l.dir).then(dirId, () => 'absent');
      if (now !== l.id) {
        return `the ${l.what} ${l.dir} is not the directory mounted (device:inode ${l.id} at mount, ${now} now): `
          + 'the mount serves the one it opened in some requests and the new one in others; unmount and mount again';
      }
    }
    return null;
  }

  /** `problem: the error` if `check` fails, `problem: no answer for N s` if it takes too long. */
  private probe(problem: string, check: () => Promise<unknown>): Promise<string | null> {
    let entry = this.probes.get(problem);
    if (entry === undefined) {
      const done = check().finally(() => this.probes.delete(problem));
      entry = { since: Date.now(), done };
      this.probes.set(problem, entry);
    }
    const { since, done } = entry;
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(`${problem}: no answer for ${((Date.now() - since) / 1000).toFixed(1)} s`), HEALTH_WAIT_MS);
      done.then(() => { clearTimeout(timer); resolve(null); }, (err: unknown) => { clearTimeout(timer); resolve(`${problem}: ${String(err)}`); });
    });
  }
}

/** The first three of `list`, and how many more. */
function some(list: readonly string[]): string {
  return `${list.slice(0, 3).join(', ')}${list.length > 3 ? `, and ${list.length - 3} more` : ''}`;
}

/** A dir's identity: which one it is, whatever its path. */
function dirId(st: fs.Stats): string {
  return `${st.dev}:${st.ino}`;
}

/**
 * Rejects when the filesystem of `dir` has no block left for an unprivileged writer (root's
 * reserve does not count: Nix's build users write there): every write of a client then fails
 * with ENOSPC, and a commit to the merged DB with "database or disk is full".
 */
async function notFull(dir: string): Promise<void> {
  const st = await fs.promises.statfs(dir);
  if (st.bavail === 0) throw new Error(`${dir}: no space left (${st.blocks} blocks of ${st.bsize} bytes, none free)`);
}
