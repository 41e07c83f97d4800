import * as fs from 'node:fs';
import * as path from 'node:path';
import { canonicalPath } from '../mount/config';
import { readRootConfig, RootConfig, runningRecords } from '../mount/records';
import { LocalOverlayError } from '../util/errno';

/**
 * The merged root that `p` names: `p` itself or the nearest directory above it that has a
 * merged root's config.json (so ROOT, ROOT/nix/store, a path inside the store and ROOT/nix/var
 * all name ROOT); `p` itself (resolved) when there is none. Directories below a `nix/store` are
 * not looked into: reading ROOT/nix/store/X/nix/var/... would be a lookup in the mount (a
 * closure copy in lazy mode; a wait forever on a stopped daemon).
 */
export function rootOfPath(p: string): string {
  const abs = path.resolve(p);
  for (let dir = abs; ; dir = path.dirname(dir)) {
    if (!/\/nix\/store(\/|$)/.test(dir) && readRootConfig(dir) !== null) return canonicalPath(dir);
    if (dir === '/') return abs;
  }
}

/**
 * The merged root a command is about: `--root` (or the command's ROOT argument) when given;
 * else the root that `hint` (a path inside a merged root) is in; else the one the current dir
 * is in; else the only running mount.
 */
export function findRoot(root: string | undefined, hint?: string): { root: string; rc: RootConfig } {
  const candidates: string[] = [];
  if (root) candidates.push(rootOfPath(root));
  else {
    // A path inside a merged root names it; so does the current dir, inside one.
    for (const p of [hint?.startsWith('/') ? hint : undefined, process.cwd()]) {
      if (p === undefined) continue;
      const r = rootOfPath(p);
      if (readRootConfig(r) !== null) { candidates.push(r); break; }
    }
    if (candidates.length === 0) {
      const running = runningRecords();
      if (running.length === 1) candidates.push(running[0].config.mergedRoot);
      else if (running.length > 1) {
        throw new LocalOverlayError('usage', `${running.length} merged stores are mounted (${running.map((r) => r.config.mergedRoot).join(', ')}): say which with --root ROOT, or run the command in a dir inside that root`);
      }
    }
  }
  for (const c of candidates) {
    const rc = readRootConfig(c);
    if (rc) return { root: c, rc };
  }
  if (root) {
    throw new LocalOverlayError(fs.existsSync(root) ? 'not-mounted' : 'usage', `${root} is not a local-overlay merged root (no nix/var/local-overlay/config.json: it was never mounted)`);
  }
  throw new LocalOverlayError('not-mounted', 'no merged root given and none is mounted: pass --root MERGED');
}
