import { TempRoot } from '../metadata/temp-roots';
import { UpperDb } from '../metadata/upper-db';
import { hashPart, storeObjectNameOf } from '../store/store-path';
import { STORE_DIR } from './view';

/**
 * Which store paths running Nix clients use, as Nix 2.8's GC decides what it must keep: the
 * closure of the temp roots in the merged DB (a build's sources are references of its .drv,
 * which is the root). Paths compare by hash part, as the GC compares them. Roots are added as
 * they arrive (the GC socket); the closure is computed again only when there are new ones.
 */
export class InUse {
  private roots: TempRoot[] = [];
  private seen = 0;
  private live = new Set<string>();
  private readonly perRoot = new Map<string, Set<string>>();

  constructor(private readonly db: UpperDb) {}

  /** Takes the roots seen so far (a list that only grows; a client may list a root twice). */
  update(roots: readonly TempRoot[]): void {
    if (roots.length === this.seen) return;
    this.seen = roots.length;
    const unique = new Map(roots.map((r) => [`${String(r.pid)} ${r.path}`, r]));
    this.roots = [...unique.values()];
    this.live = this.closure(this.roots.map((r) => r.path));
  }

  /** The roots that keep `storePath` (itself or in its closure); empty when none does. */
  users(storePath: string): TempRoot[] {
    const h = hashOf(storePath);
    if (h === null || !this.live.has(h)) return [];
    return this.roots.filter((r) => {
      let c = this.perRoot.get(r.path);
      if (c === undefined) {
        c = this.closure([r.path]);
        this.perRoot.set(r.path, c);
      }
      return c.has(h);
    });
  }

  /** Hash parts of the closure of `paths`, the paths themselves included (valid or not). */
  private closure(paths: string[]): Set<string> {
    const out = new Set<string>();
    for (const p of [...paths, ...this.db.closure(paths)]) {
      const h = hashOf(p);
      if (h !== null) out.add(h);
    }
    return out;
  }
}

function hashOf(storePath: string): string | null {
  const name = storeObjectNameOf(STORE_DIR, storePath);
  return name === null ? null : hashPart(name);
}
