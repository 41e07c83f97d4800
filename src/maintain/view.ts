import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { copyClosure } from '../metadata/closure';
import { LowerRoots } from '../metadata/gc-roots';
import { LowerDb } from '../metadata/lower-db';
import { pathsAbove } from '../metadata/rows';
import { UpperDb } from '../metadata/upper-db';
import { MountConfig, rootLayout } from '../mount/config';
import { isMountPoint, liveRecord } from '../mount/records';
import { isStoreObjectName, isBookkeepingName } from '../store/store-path';

export const STORE_DIR = '/nix/store';

/**
 * A merged root as the maintenance commands see it: its layers and DBs, and whether a daemon
 * is serving it. Changes to the upper layer go through the mount when one is running (so the
 * kernel's caches stay exact), straight to the upper dir otherwise.
 */
export class RootView {
  readonly upperDb: UpperDb;
  readonly lowerDb: LowerDb;
  readonly lowerStore: string;
  readonly mergedStore: string;
  readonly mounted: boolean;

  constructor(readonly cfg: MountConfig) {
    this.lowerStore = rootLayout(cfg.lowerRoot).storeDir;
    this.mergedStore = rootLayout(cfg.mergedRoot).storeDir;
    this.upperDb = UpperDb.open(rootLayout(cfg.mergedRoot).dbDir, { timeoutMs: 10_000 });
    this.lowerDb = new LowerDb(rootLayout(cfg.lowerRoot).dbFile);
    this.mounted = liveRecord(cfg.mergedRoot) !== null && isMountPoint(this.mergedStore);
  }

  close(): void {
    this.upperDb.close();
    this.lowerDb.close();
  }

  /** Upper top-level store objects (not bookkeeping, not whiteouts). */
  upperObjects(): string[] {
    // A name gone between the listing and its lstat (a GC of the mount meanwhile) is left out.
    return fs.readdirSync(this.cfg.upperDir).filter((n) => isStoreObjectName(n) && !isBookkeepingName(n)
      && fs.lstatSync(path.join(this.cfg.upperDir, n), { throwIfNoEntry: false })?.isCharacterDevice() === false);
  }

  /** Whether the lower store dir has an entry `name` (registered in its DB or not). */
  lowerHas(name: string): boolean {
    return fs.lstatSync(path.join(this.lowerStore, name), { throwIfNoEntry: false }) !== undefined;
  }

  /** Whether the merged view shows the lower entry `name`: it exists and the lower DB lists it as valid. */
  lowerServes(name: string): boolean {
    return this.lowerHas(name) && this.lowerDb.isValid(`${STORE_DIR}/${name}`);
  }

  /** The merged root's GC roots of lower objects (mirror mode), as the daemon keeps them. */
  lowerRoots(): LowerRoots {
    const layout = rootLayout(this.cfg.mergedRoot);
    return new LowerRoots(path.join(layout.gcRootsDir, 'local-overlay-lower-store'), this.lowerDb, path.join(layout.stateDir, 'gc-roots.stamp'));
  }

  /**
   * Copies the closures of lower paths `paths` into the upper DB in this process, for a root
   * that is not mounted (mounted, the daemon copies: Metadata.sync). The upper objects of the
   * paths the copy makes valid had no row (an add that did not finish), and the lower copy's
   * row would make them valid: they are removed first (`onRemoved` says which), inside the
   * copy's transaction. Returns the paths copied.
   */
  copyFromLower(paths: readonly string[], onRemoved: (storePath: string) => void): string[] {
    if (this.mounted) throw new Error('copyFromLower: the root is mounted; its daemon copies');
    let copied: string[] = [];
    copyClosure(this.upperDb, this.lowerDb, paths, {
      beforeCommit: (before) => {
        copied = pathsAbove(this.upperDb.db, before);
        for (const p of copied) {
          const name = p.slice(STORE_DIR.length + 1);
          if (!fs.existsSync(path.join(this.cfg.upperDir, name))) continue;
          this.removeUpper(name);
          onRemoved(p);
        }
      },
    });
    return copied;
  }

  /**
   * Removes the upper copy of a top-level object, in one step as the store sees it: a rename
   * out of the store, then the deletion out of sight. Deleted file by file in place, a copy
   * interrupted half way (a crash, a kill) would go on shadowing the lower copy, half empty.
   * Mounted, the rename goes through the mount (so the kernel and the daemon see it), to a name
   * the overlay keeps in the work dir (libfuse's for unlinked-but-open files: overlay.ts).
   */
  removeUpper(name: string): void {
    const aside = `.fuse_hidden${randomBytes(8).toString('hex')}`;
    let moved: string;
    if (this.mounted) {
      fs.renameSync(path.join(this.mergedStore, name), path.join(this.mergedStore, aside));
      moved = path.join(this.cfg.workDir, 'hidden', aside);
    } else {
      // The next mount empties the trash if this process does not get to it.
      moved = path.join(this.cfg.workDir, 'trash', aside);
      fs.mkdirSync(path.dirname(moved), { recursive: true, mode: 0o755 });
      fs.renameSync(path.join(this.cfg.upperDir, name), moved);
    }
    makeWritable(moved);
    fs.rmSync(moved, { recursive: true, force: false });
  }
}

function makeWritable(p: string): void {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return;
  fs.chmodSync(p, st.mode | 0o700);
  for (const n of fs.readdirSync(p)) makeWritable(path.join(p, n));
}

/**
 * Whether `err` says a file is gone: an upper object that Nix deletes (a GC, a --delete through
 * the mount) while verify or optimise reads it. They check what is there, and skip it.
 */
export function isGone(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

/** What `read` returns, or null when what it reads is gone (isGone). */
export function ifPresent<T>(read: () => T): T | null {
  try {
    return read();
  } catch (err) {
    if (isGone(err)) return null;
    throw err;
  }
}

/** Bytes of regular files and symlinks below `p`. */
export function diskBytes(p: string): number {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return st.size;
  let n = 0;
  for (const c of fs.readdirSync(p)) n += diskBytes(path.join(p, c));
  return n;
}
