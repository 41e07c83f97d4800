import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * One line per entry below `dir` (sorted, lstat-based, links not followed): relative path,
 * type, permission bits, size, content hash or link target. Two trees with equal lines serve
 * the same store. `ignore` drops relative paths (e.g. `.links`).
 */
export async function treeLines(dir: string, opts: { ignore?: (rel: string) => boolean; times?: boolean } = {}): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const abs = rel ? path.join(dir, rel) : dir;
    const names = (await fs.promises.readdir(abs)).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      if (opts.ignore?.(r)) continue;
      const p = path.join(dir, r);
      const st = await fs.promises.lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      const t = opts.times ? ` mtime=${Math.floor(st.mtimeMs / 1000)}` : '';
      if (st.isDirectory()) {
        out.push(`d ${r} ${mode}${t}`);
        await walk(r);
      } else if (st.isSymbolicLink()) {
        out.push(`l ${r} -> ${await fs.promises.readlink(p)}`);
      } else if (st.isFile()) {
        const h = createHash('sha256').update(await fs.promises.readFile(p)).digest('hex').slice(0, 16);
        out.push(`f ${r} ${mode} ${st.size} ${h}${t}`);
      } else {
        out.push(`o ${r} ${mode} rdev=${st.rdev}`);
      }
    }
  };
  await walk('');
  return out;
}

/**
 * A digest of a whole lower root as DESIGN.md requires it untouched: the tree (types, modes,
 * sizes, contents, link targets, mtimes), and the DB dir's file list and bytes.
 */
export async function lowerRootDigest(root: string): Promise<string> {
  const lines = await treeLines(root, { times: true });
  return createHash('sha256').update(lines.join('\n')).digest('hex');
}
