import * as fs from 'node:fs';

/** Objects and bytes in the upper layer (top-level names that are not bookkeeping). */
export function upperUsage(upperDir: string): { objects: number; bytes: number } {
  let objects = 0, bytes = 0;
  const walk = (p: string): void => {
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st) return;
    bytes += st.isDirectory() ? 0 : st.size;
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(`${p}/${n}`);
  };
  for (const name of safeList(upperDir)) {
    if (name.startsWith('.') || name.endsWith('.lock')) continue;
    objects++;
    walk(`${upperDir}/${name}`);
  }
  return { objects, bytes };
}

function safeList(dir: string): string[] {
  try { return fs.readdirSync(dir); } catch { return []; }
}
