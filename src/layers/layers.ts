import * as fs from 'node:fs';
import type { LRUCache } from 'lru-cache';
import { isBookkeepingName, isStoreObjectName } from '../store/store-path';
import { growingCache } from '../util/cache';

/** Which layer a merged top-level name resolves to. */
export const enum Layer {
  Upper = 0,
  Lower = 1,
}

/** Why a top-level name resolves the way it does (for `explain` and tracing). */
export type TopReason =
  | 'upper-object'      // upper has it (the lower may have it too: see `duplicate`)
  | 'lower-object'      // only the lower has it
  | 'whiteout'          // upper whiteout hides a lower object of that name
  | 'lower-bookkeeping' // lower entry that belongs to the lower store's own bookkeeping
  | 'lower-unregistered' // lower store-object name the lower DB does not list as valid
  | 'absent';

export interface LayerDirs {
  /** The upper store dir: kernel OverlayFS's upperdir. Written only through the mount. */
  readonly upperDir: string;
  /** The lower store dir (`<lower root>/nix/store`). Never written. */
  readonly lowerDir: string;
  /** Scratch on the upper filesystem: unlinked-but-open files live here until released. */
  readonly workDir: string;
}

/** The file form of a whiteout: `.wh.NAME` hides lower object NAME. */
export const WHITEOUT_PREFIX = '.wh.';

type UpperKind = 'object' | 'whiteout';

/**
 * What the lower store has registered (its DB's valid paths), by top-level name. A lower entry
 * is part of the merged view only when registered: one without a row is the lower store's work
 * in progress (an add or a build whose output is not registered yet) or its garbage, not a
 * store object. Shown, Nix on the merged root would try to delete it (its GC deletes every
 * invalid entry it lists; a build deletes a stale output path first) and fail on the read-only
 * layer. Nix's own local-overlay store likewise leaves a lower-only path alone when deleting.
 */
export interface LowerRegistry {
  has(name: string): boolean;
  /** Every registered name, in bytewise order (SQLite's BINARY collation). */
  sortedNames(): Iterable<string>;
}

/**
 * Something that keeps a copy of the index's decisions (the native fast path): every upper
 * entry, and lower objects once served. It answers requests while the index changes it (on
 * other threads), so it must never be seen half filled: a missing upper name would be answered
 * as absent. `rebuild` empties it and runs `fill` (which calls `set`), answering nothing from it
 * in between.
 */
export interface TopLevelSink {
  set(name: string, kind: 'upper' | 'lower' | 'whiteout'): void;
  delete(name: string): void;
  rebuild(fill: () => void): void;
  /** Whether it answers lookups of the names it holds now (off: `--no-fast-path`, tracing). */
  answering(): boolean;
}

/**
 * The top-level index: which layer each merged store-root name resolves to.
 *
 * Invariants:
 * - `upper` mirrors the upper dir's top level exactly. It is read once at start (and again on
 *   `refresh`); afterwards the upper layer changes only through this process, which updates
 *   the map on every create, rename and delete at the top level.
 * - `lower` caches lstat answers for lower names. A positive answer is kept until evicted or
 *   refreshed (store objects are immutable and are not removed from a shared lower store);
 *   a negative answer expires after `negativeTtlMs`, so objects added to the lower store show.
 * - Resolving one name never lists a directory.
 */
export class TopLevelIndex {
  private upper = new Map<string, UpperKind>();
  private lower: LRUCache<string, boolean>;
  /**
   * The lower DB's valid paths: a lower entry shows only when registered there, which also
   * tells a store object whose name looks like Nix bookkeeping (a `builtins.path` of a
   * `Cargo.lock` is `<hash>-Cargo.lock`) from bookkeeping. Without it (unit tests), every lower
   * store-object name shows except bookkeeping-like ones.
   */
  registry: LowerRegistry | undefined;
  private sink: TopLevelSink | undefined;

  constructor(readonly dirs: LayerDirs, private readonly negativeTtlMs = 1000, cacheSize = 200_000) {
    this.lower = growingCache<string, boolean>(cacheSize, { ttlResolution: 100 });
    this.scanUpper();
  }

  /** Re-reads the upper dir's top level and forgets every cached lower answer. */
  refresh(): void {
    this.lower.clear();
    this.scanUpper();
  }

  /**
   * Keeps `sink` up to date from now on: it gets every upper entry now, each change to them,
   * and lower objects as `lowerServed` reports them.
   */
  attach(sink: TopLevelSink): void {
    this.sink = sink;
    this.pushAll();
  }

  private pushAll(): void {
    const sink = this.sink;
    if (!sink) return;
    sink.rebuild(() => {
      for (const [name, kind] of this.upper) sink.set(name, kind === 'object' ? 'upper' : 'whiteout');
    });
  }

  /**
   * A lookup of lower object `name` has been answered (after any closure copy it awaited):
   * from now on the sink may serve it without asking.
   */
  lowerServed(name: string): void {
    if (this.sink && !this.upper.has(name)) this.sink.set(name, 'lower');
  }

  /** The next lookup of lower object `name` must come here again (its DB row may be gone). */
  unsettle(name: string): void {
    if (this.sink && !this.upper.has(name)) this.sink.delete(name);
  }

  private scanUpper(): void {
    const upper = new Map<string, UpperKind>();
    for (const ent of fs.readdirSync(this.dirs.upperDir, { withFileTypes: true })) {
      const name = ent.name;
      if (name.startsWith(WHITEOUT_PREFIX)) {
        upper.set(name.slice(WHITEOUT_PREFIX.length), 'whiteout');
      } else if (ent.isCharacterDevice() && isWhiteoutDevice(`${this.dirs.upperDir}/${name}`)) {
        upper.set(name, 'whiteout');
      } else if (upper.get(name) !== 'whiteout') {
        upper.set(name, 'object');
      }
    }
    this.upper = upper;
    this.pushAll();
  }

  /** The layer of a top-level name, or null when it does not exist in the merged view. */
  resolve(name: string): Layer | null {
    const kind = this.upper.get(name);
    if (kind === 'object') return Layer.Upper;
    if (kind === 'whiteout') return null;
    return this.lowerHas(name) ? Layer.Lower : null;
  }

  /** Whether the lower store provides `name` (ignoring upper entries and whiteouts). */
  lowerHas(name: string): boolean {
    const cached = this.lower.get(name);
    if (cached !== undefined) return cached;
    if (!isStoreObjectName(name)) return false;
    let present: boolean;
    try {
      fs.lstatSync(`${this.dirs.lowerDir}/${name}`);
      present = true;
    } catch {
      present = false;
    }
    // The lower DB is asked only about entries that exist: Nix looks up a `.lock` name for
    // every path it adds, and the lower store rarely has one. A registered name is not asked
    // again while cached; an unregistered one after `negativeTtlMs` (or when the follower
    // reports its row).
    if (present && !this.lowerVisibleName(name)) present = false;
    if (present) this.lower.set(name, true);
    else if (this.negativeTtlMs > 0) this.lower.set(name, false, { ttl: this.negativeTtlMs }); // ttl 0 would mean forever
    return present;
  }

  /** A lower name that can be part of the merged view: a registered store object (LowerRegistry). */
  private lowerVisibleName(name: string): boolean {
    if (!isStoreObjectName(name)) return false;
    return this.registry ? this.registry.has(name) : !isBookkeepingName(name);
  }

  upperKind(name: string): UpperKind | undefined {
    return this.upper.get(name);
  }

  reason(name: string): TopReason {
    const kind = this.upper.get(name);
    if (kind === 'object') return 'upper-object';
    if (kind === 'whiteout') return 'whiteout';
    if (this.lowerHas(name)) return 'lower-object';
    if (!fs.existsSync(`${this.dirs.lowerDir}/${name}`)) return 'absent';
    return isStoreObjectName(name) && !isBookkeepingName(name) ? 'lower-unregistered' : 'lower-bookkeeping';
  }

  /** Records that the upper layer now has an object named `name` (after create/rename/mkdir). */
  upperAdded(name: string): void {
    this.upper.set(name, 'object');
    this.sink?.set(name, 'upper');
  }

  /**
   * Records that the upper layer no longer has `name`; a lower object of that name shows again.
   * A cached "not in the lower store" may predate the lower store's copy: it is asked again.
   */
  upperRemoved(name: string): void {
    this.upper.delete(name);
    this.lower.delete(name);
    this.sink?.delete(name);
  }

  /** Forgets a cached lower answer (the follower calls this for names new in the lower DB). */
  forgetLower(name: string): void {
    this.lower.delete(name);
  }

  /**
   * Removes a whiteout for `name` from the upper dir, so a new upper object can take the name.
   * True when there was one: if the object then cannot be made, `restoreWhiteout` puts it back.
   */
  clearWhiteout(name: string): boolean {
    if (this.upper.get(name) !== 'whiteout') return false;
    for (const p of [`${this.dirs.upperDir}/${name}`, `${this.dirs.upperDir}/${WHITEOUT_PREFIX}${name}`]) {
      try { fs.unlinkSync(p); } catch { /* either form may be absent */ }
    }
    this.upper.delete(name);
    this.sink?.delete(name);
    return true;
  }

  /**
   * Hides the lower object `name` again after clearWhiteout, when what was to replace it could
   * not be made (ENOSPC, say). As a `.wh.NAME` file: a char device needs mknod, which Node lacks.
   */
  restoreWhiteout(name: string): void {
    fs.writeFileSync(`${this.dirs.upperDir}/${WHITEOUT_PREFIX}${name}`, '', { mode: 0o644 });
    this.upper.set(name, 'whiteout');
    this.sink?.set(name, 'whiteout');
  }

  /**
   * The merged listing of the store root: upper objects, plus lower store objects that are
   * registered and neither shadowed nor whited out. Lower bookkeeping names, unregistered
   * lower entries and `.wh.*` files never show. The lower dir's names are matched against the
   * registry in one sorted pass, not one query each.
   */
  listRoot(): string[] {
    const names: string[] = [];
    for (const [name, kind] of this.upper) if (kind === 'object') names.push(name);
    let lowerNames: string[];
    try { lowerNames = fs.readdirSync(this.dirs.lowerDir); } catch { lowerNames = []; }
    // Without a fast path, `ls -l` looks every listed name up next, here: each name shown is
    // remembered as present and registered, so those lookups need neither an lstat nor a DB
    // query. With one, the fast path answers the lookups of settled lower objects (in mirror
    // mode, all of them) and the memo would only cost the listing a cache entry per name.
    const remember = !this.sink?.answering();
    const shown = (name: string): void => {
      if (this.upper.has(name)) return; // shadowed or whited out
      names.push(name);
      if (remember) this.lower.set(name, true);
    };
    if (!this.registry) {
      for (const name of lowerNames) if (isStoreObjectName(name) && !isBookkeepingName(name)) shown(name);
      return names;
    }
    lowerNames.sort(bytewise);
    let i = 0;
    for (const valid of this.registry.sortedNames()) {
      while (i < lowerNames.length && lowerNames[i]! < valid) i++;
      if (i === lowerNames.length) break;
      if (lowerNames[i] === valid) {
        const name = lowerNames[i++]!;
        if (isStoreObjectName(name)) shown(name); // as a lookup would judge it (lowerVisibleName)
      }
    }
    return names;
  }

  /** Upper top-level names by kind, for verify and explain. */
  upperEntries(): IterableIterator<[string, UpperKind]> {
    return this.upper.entries();
  }
}

/**
 * Bytewise order of ASCII names, as SQLite's BINARY collation sorts them (store object names
 * are ASCII; `<`, unlike localeCompare, compares code units).
 */
function bytewise(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A kernel OverlayFS whiteout is a character device with device number 0/0. */
export function isWhiteoutDevice(path: string): boolean {
  try {
    const st = fs.lstatSync(path);
    return st.isCharacterDevice() && st.rdev === 0;
  } catch {
    return false;
  }
}
