import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowerDb } from './lower-db';
import { writeFileAtomic } from '../util/own-files';

/**
 * GC roots that keep the lower store's objects alive for plain Nix.
 *
 * Nix 2.8's GC deletes every store-dir entry that is not reachable from a root, invalidating
 * its DB row first and then deleting its files, and aborts on the first file it cannot delete.
 * In a mirror-mode merged store every lower object is valid in the upper DB, so without roots
 * the GC would drop lower rows and then fail with EROFS. With these roots the GC never
 * considers a lower object dead: it only deletes upper objects, and it never walks the files of
 * a lower object (its cost does not grow with the lower store's file count).
 *
 * The roots are symlinks `ROOT/nix/var/nix/gcroots/local-overlay-lower-store/<name>` →
 * `/nix/store/<name>`, for the tops of the lower-only part of the lower store's graph: lower
 * objects that no other lower object references, except objects that are also in the upper layer
 * (duplicates), which stay collectable: deleting one removes its upper copy and the lower copy
 * shows again. A duplicate's lower references are rooted in its place, so whatever only a
 * duplicate kept alive stays alive. `nix-store --query --roots` names this dir as the reason a
 * lower object cannot be deleted.
 *
 * A full `sync` leaves a stamp (`stampFile`): what it was computed from (the lower DB files'
 * identity, the duplicates, the store dir) and the roots dir as it left it. While all of these
 * are unchanged, the roots are exact and a mount need not sync again (`current`). Every change
 * the mount makes to the roots afterwards removes the stamp first.
 */
export class LowerRoots {
  constructor(readonly dir: string, private readonly lower: LowerDb, readonly stampFile: string | null = null, private readonly storeDir = '/nix/store') {}

  /** Whether the roots dir is what a full `sync` with these duplicates would make of it now. */
  current(duplicates: ReadonlySet<string>): boolean {
    if (this.stampFile === null) return false;
    let stamp: string;
    try { stamp = fs.readFileSync(this.stampFile, 'utf8'); } catch { return false; }
    const dir = this.dirIdentity();
    return dir !== null && stamp === this.stamp(this.lower.signature(), duplicates, dir);
  }

  private stamp(lowerSignature: string, duplicates: ReadonlySet<string>, dir: string): string {
    const dups = createHash('sha256').update([...duplicates].sort().join('\n')).digest('hex');
    return `${JSON.stringify({ storeDir: this.storeDir, lower: lowerSignature, duplicates: dups, dir })}\n`;
  }

  /** The roots dir's inode and change time: a root added or removed by hand shows here. */
  private dirIdentity(): string | null {
    const st = fs.statSync(this.dir, { throwIfNoEntry: false, bigint: true });
    return st === undefined ? null : `${st.ino}:${st.mtimeNs}:${st.ctimeNs}`;
  }

  /** The next mount must sync in full: the roots are about to change. */
  private dropStamp(): void {
    if (this.stampFile !== null) fs.rmSync(this.stampFile, { force: true });
  }

  /**
   * The root names the lower store's rows up to id `maxId` need, given the names the upper layer
   * also has. A referrer above `maxId` does not count: its rows were not considered.
   */
  wanted(duplicates: ReadonlySet<string>, maxId = Number.MAX_SAFE_INTEGER): Set<string> {
    const db = this.lower.conn();
    const tops = db.prepare(`
      SELECT v.path FROM ValidPaths v
      WHERE v.id <= @maxId AND NOT EXISTS (SELECT 1 FROM Refs r WHERE r.reference = v.id AND r.referrer != v.id AND r.referrer <= @maxId)`).pluck().all({ maxId }) as string[];
    const out = new Set<string>();
    const refsOf = db.prepare('SELECT w.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer JOIN ValidPaths w ON w.id = r.reference WHERE v.path = ? AND w.id != v.id').pluck();
    const pending: string[] = [];
    for (const p of tops) {
      const name = p.slice(this.storeDir.length + 1);
      if (duplicates.has(name)) pending.push(p); else out.add(name);
    }
    const seen = new Set<string>(pending);
    while (pending.length > 0) {
      for (const ref of refsOf.all(pending.pop() as string) as string[]) {
        const name = ref.slice(this.storeDir.length + 1);
        if (!duplicates.has(name)) out.add(name);
        else if (!seen.has(ref)) { seen.add(ref); pending.push(ref); }
      }
    }
    return out;
  }

  /**
   * Makes the roots dir hold exactly the roots wanted; returns how many were added/removed.
   * `upTo` limits the sync to the lower rows up to `maxId`, those of the snapshot whose files'
   * identity is `signature`: the mount's sync, which runs in a worker with a connection of its
   * own, must not act on rows the lower DB gained since the mount imported. Those are the
   * follower's, who roots them knowing what the upper layer has (`duplicates` is the mount's).
   */
  sync(duplicates: ReadonlySet<string>, upTo?: { maxId: number; signature: string }): { added: number; removed: number } {
    this.dropStamp();
    const lowerSignature = upTo?.signature ?? this.lower.snapshotSignature(); // of the snapshot `wanted` reads
    const want = this.wanted(duplicates, upTo?.maxId);
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    let added = 0, removed = 0;
    const have = new Set(fs.readdirSync(this.dir));
    for (const name of have) {
      if (!want.has(name)) { fs.rmSync(path.join(this.dir, name), { force: true }); removed++; }
    }
    for (const name of want) {
      if (!have.has(name)) { fs.symlinkSync(`${this.storeDir}/${name}`, path.join(this.dir, name)); added++; }
    }
    const dir = this.dirIdentity();
    if (this.stampFile !== null && dir !== null) {
      writeFileAtomic(this.stampFile, this.stamp(lowerSignature, duplicates, dir));
    }
    return { added, removed };
  }

  /**
   * New lower paths (the follower's import): root those no other lower path refers to. Old
   * tops that gained a referrer keep their root, which only keeps alive what is alive anyway;
   * the next full `sync` (at mount) drops it. Costs a query per new path, not per lower path.
   * A new path the upper layer has too (a merged client added it while the lower store did)
   * is a duplicate from the start: collectable, its references rooted.
   */
  added(paths: readonly string[], duplicates: ReadonlySet<string>): number {
    this.dropStamp();
    const referred = this.lower.conn().prepare(
      'SELECT 1 FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE v.path = ? AND r.referrer != r.reference LIMIT 1').pluck();
    let n = 0;
    for (const p of paths) {
      const name = p.slice(this.storeDir.length + 1);
      if (duplicates.has(name)) this.becameDuplicate(name, duplicates);
      else if (referred.get(p) === undefined && this.link(name)) n++;
    }
    return n;
  }

  /** `name` is now in the upper layer too: it becomes collectable, its references stay rooted. */
  becameDuplicate(name: string, duplicates: ReadonlySet<string>): void {
    this.dropStamp();
    fs.rmSync(path.join(this.dir, name), { force: true });
    const refsOf = this.lower.conn().prepare(
      'SELECT w.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer JOIN ValidPaths w ON w.id = r.reference WHERE v.path = ? AND w.id != v.id').pluck();
    const pending = [`${this.storeDir}/${name}`];
    const seen = new Set(pending);
    while (pending.length > 0) {
      for (const ref of refsOf.all(pending.pop() as string) as string[]) {
        const refName = ref.slice(this.storeDir.length + 1);
        if (!duplicates.has(refName)) this.link(refName);
        else if (!seen.has(ref)) { seen.add(ref); pending.push(ref); }
      }
    }
  }

  /** `name` is no longer in the upper layer: the lower copy is served and kept alive again. */
  stoppedDuplicate(name: string): void {
    this.dropStamp();
    this.link(name);
  }

  private link(name: string): boolean {
    try {
      fs.symlinkSync(`${this.storeDir}/${name}`, path.join(this.dir, name));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
        return this.link(name);
      }
      throw err;
    }
  }

  /** Removes every root (for a lazy mount, which plain Nix cannot collect anyway). */
  clear(): void {
    this.dropStamp();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
