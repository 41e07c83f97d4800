import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from '../helpers/exec';
import { freshLower, lowerAdd, Manifest } from '../helpers/fixture';
import { Merged, mountMerged, tempDir } from '../helpers/mount';
import { nixOk } from '../helpers/nix';
import { lowerRootDigest, treeLines } from '../helpers/tree';

// One table of POSIX checks (in the spirit of go-fuse's posixtest.All), each run against a
// real mount served by the built CLI in its own process. posix.test.ts runs it with the native
// fast path (the default), posix-js.test.ts with --no-fast-path, so that both the native
// answers and the JS handlers behind them keep every row. Every row gets the merged store
// dir, the upper dir and the lower store dir, checks the merged view, checks the upper dir,
// and uses the lower dir as the oracle.
//
// Two mounts over one private copy of the lower store (so a daemon bug cannot damage the
// shared fixture; the copy's digest is compared at the end):
// - `fresh`: an empty upper dir. Rows run concurrently, each on its own random names.
// - `layered`: an upper dir prepared before mounting (the mount reads it at start) with
//   upper copies of lower objects, whiteouts in both on-disk forms, an upper-only object and
//   an upper `.links`; the lower copy gets extra objects with hostile symlinks. These rows
//   run serially in table order, because some of them look at the whole root and later
//   ones change it.

interface Dirs {
  /** The merged store dir (the mount point). */
  store: string;
  /** The upper dir of this mount. */
  upper: string;
  /** The lower store dir (`<lower root>/nix/store`). */
  lower: string;
}

type Check = (t: ExecutionContext, d: Dirs) => Promise<void>;

interface Row {
  name: string;
  on: 'fresh' | 'layered';
  check: Check;
  /** Run alone (ava runs serial tests before the concurrent ones), e.g. when it drops kernel caches. */
  serial?: boolean;
}

// ---- fixture state (set by the before hook) -------------------------------------------------

/** Top-level names of the lower objects the rows use (manifest roles). */
const L = { dirObject: '', singleFile: '', appOut: '', libOut: '', textFile: '', tools: '', appDrv: '', libDrv: '' };
/** Names added to the lower copy before mounting. */
const X = { links: '', toplink: '', hiddenNames: '', cargoLock: '', staleLock: '' };
/** Names prepared in the layered upper dir before mounting. */
const U = { only: '', lock: '' };
let manifest: Manifest;
let lowerRoot = '';
let lowerDigestBefore = '';
const lowerSnapshots = new Map<string, string[]>();
let fresh: Merged;
let layered: Merged;

// ---- helpers --------------------------------------------------------------------------------

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** A fresh top-level store-path-like name: 32 nix-base32 chars, a dash, `label`. */
function newName(label: string): string {
  const bytes = randomBytes(32);
  let hash = '';
  for (const b of bytes) hash += NIX32[b & 31];
  return `${hash}-${label}`;
}

const rel = (storePath: string): string => storePath.replace(/^\/nix\/store\//, '');
const exists = (p: string): Promise<boolean> => fs.promises.lstat(p).then(() => true, () => false);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function rejectsWith(t: ExecutionContext, p: Promise<unknown>, code: string, what: string): Promise<void> {
  await t.throwsAsync(p, { code }, `${what}: expected ${code}`);
}

/** One line per entry of `p` itself plus, for a directory, every entry below it (times included). */
async function entryLines(p: string): Promise<string[]> {
  const st = await fs.promises.lstat(p);
  const own = `${(st.mode & 0o170000).toString(8)} ${(st.mode & 0o7777).toString(8)} uid=${st.uid} gid=${st.gid} size=${st.size} mtime=${st.mtimeMs}`;
  if (st.isDirectory()) return [own, ...(await treeLines(p, { times: true }))];
  if (st.isSymbolicLink()) return [own, `-> ${await fs.promises.readlink(p)}`];
  if (st.isFile()) return [own, sha(await fs.promises.readFile(p))];
  return [own, `rdev=${st.rdev}`];
}

/** The lower object is exactly as it was before mounting, and the upper dir has nothing of that name. */
async function assertLowerIntact(t: ExecutionContext, d: Dirs, name: string): Promise<void> {
  t.deepEqual(await entryLines(path.join(d.lower, name)), lowerSnapshots.get(name), `lower object ${name} changed`);
  t.false(await exists(path.join(d.upper, name)), `upper dir gained ${name}`);
  t.false(await exists(path.join(d.upper, `.wh.${name}`)), `upper dir gained a whiteout for ${name}`);
}

/** The merged file and the upper file have exactly `want` as content. */
async function assertContent(t: ExecutionContext, d: Dirs, relPath: string, want: Buffer, what: string): Promise<void> {
  const merged = await fs.promises.readFile(path.join(d.store, relPath));
  const upper = await fs.promises.readFile(path.join(d.upper, relPath));
  t.is(merged.length, want.length, `${what}: merged size`);
  t.true(merged.equals(want), `${what}: merged content`);
  t.true(upper.equals(want), `${what}: upper content`);
  t.is((await fs.promises.stat(path.join(d.store, relPath))).size, want.length, `${what}: merged st_size`);
}

/** Both paths are gone: through the mount and in the upper dir. */
async function assertGone(t: ExecutionContext, d: Dirs, relPath: string, what: string): Promise<void> {
  await rejectsWith(t, fs.promises.lstat(path.join(d.store, relPath)), 'ENOENT', `${what}: merged lstat`);
  t.false(await exists(path.join(d.upper, relPath)), `${what}: still in the upper dir`);
}

/** A new top-level upper object holding `files` (relative path → content), created through the mount. */
async function upperObject(d: Dirs, label: string, files: Record<string, string | Buffer> = {}): Promise<string> {
  const name = newName(label);
  await fs.promises.mkdir(path.join(d.store, name));
  for (const [f, content] of Object.entries(files)) {
    await fs.promises.mkdir(path.dirname(path.join(d.store, name, f)), { recursive: true });
    await fs.promises.writeFile(path.join(d.store, name, f), content);
  }
  return name;
}

/**
 * `ls -laR` of a tree, for comparing two trees line by line: the tree's own path is replaced,
 * runs of blanks are collapsed (column widths follow the widest entry), and the top `..`
 * line and `total` (the parent is the store dir, which differs between the views) are dropped.
 */
async function lsTree(dir: string): Promise<string[]> {
  const r = await run('ls', ['-laR', '--time-style=full-iso', dir], { env: { ...process.env, LC_ALL: 'C' } });
  if (r.code !== 0) throw new Error(`ls -laR ${dir}: ${r.stderr}`);
  const lines = r.stdout.split(dir).join('<dir>').split('\n').map((l) => l.replace(/\s+/g, ' '));
  const firstBlank = lines.indexOf('');
  return lines.filter((l, i) => !(i < firstBlank && (l.endsWith(' ..') || l.startsWith('total '))));
}

/** `stat -f` values: block size, total, free, available blocks, total inodes, free inodes, name length. */
async function statFs(p: string): Promise<{ bsize: number; blocks: number; bfree: number; bavail: number; files: number; ffree: number; namelen: number }> {
  const r = await run('stat', ['-f', '-c', '%S %b %f %a %c %d %l', p]);
  if (r.code !== 0) throw new Error(`stat -f ${p}: ${r.stderr}`);
  const [bsize, blocks, bfree, bavail, files, ffree, namelen] = r.stdout.trim().split(' ').map(Number);
  return { bsize, blocks, bfree, bavail, files, ffree, namelen };
}

/** Runs a command as `nobody` (uid/gid 65534), to exercise allow_other and default_permissions. */
function asNobody(cmd: string, args: string[]): ReturnType<typeof run> {
  return run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', cmd, ...args]);
}

/** Waits until `f` returns true or `ms` pass; returns the last answer. */
async function eventually(f: () => Promise<boolean>, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await f()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

const hiddenNames = (names: string[]): string[] => names.filter((n) => n.startsWith('.fuse_hidden'));

// ---- the table ------------------------------------------------------------------------------

const rows: Row[] = [
  // ---- upper objects: files ----
  {
    name: 'create, write and read back files whose sizes cross 4 KiB and 128 KiB',
    on: 'fresh',
    check: async (t, d) => {
      const name = await upperObject(d, 'sizes');
      const sizes = [0, 1, 4095, 4096, 4097, 131071, 131072, 131073, 3 * 131072 + 4097];
      for (const size of sizes) {
        const data = randomBytes(size);
        await fs.promises.writeFile(path.join(d.store, name, `f${size}`), data);
        await assertContent(t, d, `${name}/f${size}`, data, `size ${size}`);
      }
      // A top-level single-file object, as `nix-store --add` of a file makes.
      const top = newName('single.bin');
      const data = randomBytes(200_000);
      await fs.promises.writeFile(path.join(d.store, top), data);
      await assertContent(t, d, top, data, 'top-level file');
      const listed = await fs.promises.readdir(path.join(d.store, name));
      t.deepEqual(listed.sort(), sizes.map((s) => `f${s}`).sort(), 'the object lists exactly the files written');
    },
  },
  {
    name: 'writes at offsets (holes, unaligned, across 4 KiB and 128 KiB) and ranged reads',
    on: 'fresh',
    check: async (t, d) => {
      const name = await upperObject(d, 'offsets');
      const rp = `${name}/sparse`;
      const want = Buffer.alloc(305_000);
      const fh = await fs.promises.open(path.join(d.store, rp), 'w+');
      try {
        for (const [pos, len] of [[4090, 10], [131_060, 30], [300_000, 5000], [0, 7], [65_536, 131_072 + 3]]) {
          const chunk = randomBytes(len);
          chunk.copy(want, pos);
          const { bytesWritten } = await fh.write(chunk, 0, len, pos);
          t.is(bytesWritten, len, `write of ${len} at ${pos}`);
        }
        t.is((await fh.stat()).size, want.length, 'fstat size through the fd');
        for (const [pos, len] of [[131_070, 10], [4095, 2], [299_990, 5010], [0, 305_000]]) {
          const buf = Buffer.alloc(len);
          const { bytesRead } = await fh.read(buf, 0, len, pos);
          t.is(bytesRead, len, `read of ${len} at ${pos}`);
          t.true(buf.equals(want.subarray(pos, pos + len)), `ranged read at ${pos}`);
        }
        const past = await fh.read(Buffer.alloc(10), 0, 10, 305_000);
        t.is(past.bytesRead, 0, 'a read at EOF returns 0 bytes');
      } finally {
        await fh.close();
      }
      await assertContent(t, d, rp, want, 'sparse file');
      // Overwrite in the middle of an existing file: the rest stays.
      const fh2 = await fs.promises.open(path.join(d.store, rp), 'r+');
      try {
        const patch = randomBytes(9000);
        patch.copy(want, 5000);
        await fh2.write(patch, 0, patch.length, 5000);
      } finally {
        await fh2.close();
      }
      await assertContent(t, d, rp, want, 'after an overwrite in the middle');
    },
  },
  {
    name: 'appends (O_APPEND from node and from the shell)',
    on: 'fresh',
    check: async (t, d) => {
      const name = await upperObject(d, 'append');
      const rp = `${name}/log`;
      const parts: Buffer[] = [];
      for (let round = 0; round < 2; round++) {
        const fh = await fs.promises.open(path.join(d.store, rp), 'a');
        try {
          for (const len of [70_000, 1, 4096, 131_072]) {
            const chunk = randomBytes(len);
            parts.push(chunk);
            // The position is ignored with O_APPEND: the data must still go to the end.
            await fh.write(chunk, 0, len, 0);
          }
        } finally {
          await fh.close();
        }
      }
      const sh = await run('sh', ['-c', 'printf "tail\\n" >> "$1"', 'sh', path.join(d.store, rp)]);
      t.is(sh.code, 0, sh.stderr);
      parts.push(Buffer.from('tail\n'));
      await assertContent(t, d, rp, Buffer.concat(parts), 'appended file');
      await fs.promises.appendFile(path.join(d.store, name, 'new-by-append'), 'x');
      await assertContent(t, d, `${name}/new-by-append`, Buffer.from('x'), 'created by append');
    },
  },
  {
    name: 'truncate and ftruncate grow and shrink; O_TRUNC empties',
    on: 'fresh',
    check: async (t, d) => {
      const data = randomBytes(10_000);
      const name = await upperObject(d, 'truncate', { f: data });
      const rp = `${name}/f`;
      const p = path.join(d.store, rp);
      await fs.promises.truncate(p, 5000);
      await assertContent(t, d, rp, data.subarray(0, 5000), 'truncate to 5000');
      await fs.promises.truncate(p, 140_000);
      await assertContent(t, d, rp, Buffer.concat([data.subarray(0, 5000), Buffer.alloc(135_000)]), 'truncate up to 140000');
      const fh = await fs.promises.open(p, 'r+');
      try {
        await fh.truncate(100);
        t.is((await fh.stat()).size, 100, 'fstat after ftruncate(100)');
        await fh.truncate(200_000);
        t.is((await fh.stat()).size, 200_000, 'fstat after ftruncate(200000)');
      } finally {
        await fh.close();
      }
      await assertContent(t, d, rp, Buffer.concat([data.subarray(0, 100), Buffer.alloc(199_900)]), 'after ftruncate');
      await fs.promises.writeFile(p, 'short');
      await assertContent(t, d, rp, Buffer.from('short'), 'rewritten with O_TRUNC');
      await fs.promises.truncate(p, 0);
      await assertContent(t, d, rp, Buffer.alloc(0), 'truncate to 0');
    },
  },
  {
    name: 'fsync and fdatasync of a file, fsync of a directory',
    on: 'fresh',
    check: async (t, d) => {
      const name = await upperObject(d, 'fsync');
      const data = randomBytes(50_000);
      const fh = await fs.promises.open(path.join(d.store, name, 'f'), 'w');
      try {
        await fh.write(data);
        await t.notThrowsAsync(fh.sync(), 'fsync');
        await t.notThrowsAsync(fh.datasync(), 'fdatasync');
      } finally {
        await fh.close();
      }
      const dh = await fs.promises.open(path.join(d.store, name), 'r');
      try {
        await t.notThrowsAsync(dh.sync(), 'fsync of a directory');
      } finally {
        await dh.close();
      }
      await assertContent(t, d, `${name}/f`, data, 'synced file');
    },
  },

  // ---- upper objects: directories and names ----
  {
    name: 'mkdir and rmdir; rmdir of a non-empty dir is ENOTEMPTY',
    on: 'fresh',
    check: async (t, d) => {
      const name = newName('dirs');
      await fs.promises.mkdir(path.join(d.store, name), { mode: 0o755 });
      await fs.promises.mkdir(path.join(d.store, name, 'a/b/c'), { recursive: true, mode: 0o700 });
      for (const r of [name, `${name}/a`, `${name}/a/b/c`]) {
        const m = await fs.promises.stat(path.join(d.store, r));
        const u = await fs.promises.stat(path.join(d.upper, r));
        t.true(m.isDirectory() && u.isDirectory(), `${r} is a directory in both views`);
        t.is(m.mode, u.mode, `${r}: merged mode equals upper mode`);
      }
      t.is((await fs.promises.stat(path.join(d.store, name))).mode & 0o777, 0o755);
      t.is((await fs.promises.stat(path.join(d.store, name, 'a/b/c'))).mode & 0o777, 0o700);
      await rejectsWith(t, fs.promises.mkdir(path.join(d.store, name, 'a')), 'EEXIST', 'mkdir of an existing dir');
      await rejectsWith(t, fs.promises.mkdir(path.join(d.store, name)), 'EEXIST', 'mkdir of an existing top-level dir');
      await rejectsWith(t, fs.promises.mkdir(path.join(d.store, newName('missing'), 'x')), 'ENOENT', 'mkdir below a missing object');
      await rejectsWith(t, fs.promises.rmdir(path.join(d.store, name, 'a')), 'ENOTEMPTY', 'rmdir of a non-empty dir');
      t.true(await exists(path.join(d.upper, name, 'a/b/c')), 'the failed rmdir removed nothing');
      await fs.promises.writeFile(path.join(d.store, name, 'file'), 'x');
      await rejectsWith(t, fs.promises.rmdir(path.join(d.store, name, 'file')), 'ENOTDIR', 'rmdir of a file');
      await fs.promises.rmdir(path.join(d.store, name, 'a/b/c'));
      await assertGone(t, d, `${name}/a/b/c`, 'rmdir of an empty dir');
      t.deepEqual(await fs.promises.readdir(path.join(d.store, name, 'a/b')), []);
      await fs.promises.rm(path.join(d.store, name), { recursive: true });
      await assertGone(t, d, name, 'rm -r of a top-level dir');
    },
  },
  {
    name: 'unlink of files at the top level and inside objects',
    on: 'fresh',
    check: async (t, d) => {
      const name = await upperObject(d, 'unlink', { 'sub/f': 'one', g: 'two' });
      const top = newName('unlink-top');
      await fs.promises.writeFile(path.join(d.store, top), 'top');
      await fs.promises.unlink(path.join(d.store, name, 'sub/f'));
      await assertGone(t, d, `${name}/sub/f`, 'unlink inside an object');
      t.deepEqual(await fs.promises.readdir(path.join(d.store, name, 'sub')), []);
      await fs.promises.unlink(path.join(d.store, top));
      await assertGone(t, d, top, 'unlink of a top-level file');
      t.false((await fs.promises.readdir(d.store)).includes(top), 'the root no longer lists it');
      await rejectsWith(t, fs.promises.unlink(path.join(d.store, top)), 'ENOENT', 'unlink of a missing file');
      await rejectsWith(t, fs.promises.unlink(path.join(d.store, name, 'sub')), 'EISDIR', 'unlink of a dir');
      await assertContent(t, d, `${name}/g`, Buffer.from('two'), 'a sibling stays');
    },
  },
  {
    name: 'rename: file, dir, over an existing file, into a subdir, top level to top level',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'rename-a', { 'f1': 'one', 'f2': 'two', 'dir/x': 'x', 'full/y': 'y' });
      const s = (r: string): string => path.join(d.store, r);
      await fs.promises.rename(s(`${a}/f1`), s(`${a}/f1-renamed`));
      await assertGone(t, d, `${a}/f1`, 'renamed file, old name');
      await assertContent(t, d, `${a}/f1-renamed`, Buffer.from('one'), 'renamed file, new name');

      await fs.promises.rename(s(`${a}/dir`), s(`${a}/dir-renamed`));
      await assertGone(t, d, `${a}/dir`, 'renamed dir, old name');
      await assertContent(t, d, `${a}/dir-renamed/x`, Buffer.from('x'), 'renamed dir keeps its content');

      await fs.promises.rename(s(`${a}/f2`), s(`${a}/f1-renamed`));
      await assertGone(t, d, `${a}/f2`, 'rename over an existing file, old name');
      await assertContent(t, d, `${a}/f1-renamed`, Buffer.from('two'), 'rename over an existing file replaces it');

      await fs.promises.mkdir(s(`${a}/empty`));
      await rejectsWith(t, fs.promises.rename(s(`${a}/empty`), s(`${a}/full`)), 'ENOTEMPTY', 'rename of a dir over a non-empty dir');

      // A top-level file moved into a subdir of another object, and back out to the top level.
      const top = newName('rename-top-file');
      await fs.promises.writeFile(s(top), 'moved');
      await fs.promises.rename(s(top), s(`${a}/dir-renamed/${top}`));
      await assertGone(t, d, top, 'top-level file moved into a subdir');
      t.false((await fs.promises.readdir(d.store)).includes(top), 'the root no longer lists the moved name');
      await assertContent(t, d, `${a}/dir-renamed/${top}`, Buffer.from('moved'), 'file in its subdir');
      const out = newName('rename-out');
      await fs.promises.rename(s(`${a}/dir-renamed/${top}`), s(out));
      await assertContent(t, d, out, Buffer.from('moved'), 'moved out to the top level');
      t.true((await fs.promises.readdir(d.store)).includes(out), 'the root lists the new top-level name');

      // Top level to top level, over an existing top-level file.
      const other = newName('rename-over');
      await fs.promises.writeFile(s(other), 'old');
      await fs.promises.rename(s(out), s(other));
      await assertGone(t, d, out, 'top-level rename over an existing top-level file');
      await assertContent(t, d, other, Buffer.from('moved'), 'replaced top-level file');

      // A whole object renamed to a new top-level name.
      const b = newName('rename-b');
      await fs.promises.rename(s(a), s(b));
      await assertGone(t, d, a, 'renamed object, old name');
      t.deepEqual(await treeLines(s(b)), await treeLines(path.join(d.upper, b)), 'renamed object: merged tree equals upper tree');
      await assertContent(t, d, `${b}/full/y`, Buffer.from('y'), 'renamed object keeps its content');
      const root = await fs.promises.readdir(d.store);
      t.true(root.includes(b) && !root.includes(a), 'the root lists the new name only');
    },
  },
  {
    name: 'symlink and readlink: relative, absolute, dangling, at the top level and inside',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'symlinks', { 'data/file': 'target content' });
      const s = (r: string): string => path.join(d.store, r);
      const links: Array<[string, string]> = [
        [`${a}/rel`, 'data/file'],
        [`${a}/up`, `../${L.singleFile}`],
        [`${a}/abs`, `/nix/store/${L.singleFile}`],
        [`${a}/dangling`, 'no/such/target'],
        [newName('top-link'), `${a}/data/file`],
        [newName('top-dangling'), '/nonexistent/lo-posix-target'],
      ];
      for (const [r, target] of links) {
        await fs.promises.symlink(target, s(r));
        t.is(await fs.promises.readlink(s(r)), target, `${r}: readlink through the mount`);
        t.is(await fs.promises.readlink(path.join(d.upper, r)), target, `${r}: readlink in the upper dir`);
        const st = await fs.promises.lstat(s(r));
        t.true(st.isSymbolicLink(), `${r}: lstat says symlink`);
        t.is(st.size, Buffer.byteLength(target), `${r}: a symlink's size is its target's length`);
      }
      t.is(await fs.promises.readFile(s(`${a}/rel`), 'utf8'), 'target content', 'relative link is followed by the kernel');
      t.is(await fs.promises.readFile(s(`${a}/up`), 'utf8'), manifest.contents.singleFile, 'relative link to a lower object');
      t.is(await fs.promises.readFile(s(links[4][0]), 'utf8'), 'target content', 'top-level relative link');
      await rejectsWith(t, fs.promises.stat(s(`${a}/dangling`)), 'ENOENT', 'stat of a dangling link');
      await rejectsWith(t, fs.promises.stat(s(links[5][0])), 'ENOENT', 'stat of a dangling top-level link');
      await rejectsWith(t, fs.promises.symlink('x', s(`${a}/rel`)), 'EEXIST', 'symlink over an existing name');
      await rejectsWith(t, fs.promises.readlink(s(`${a}/data/file`)), 'EINVAL', 'readlink of a regular file');
      await fs.promises.unlink(s(`${a}/dangling`));
      await assertGone(t, d, `${a}/dangling`, 'unlinked symlink');
    },
  },
  {
    name: 'hard links within the upper layer share an inode number and nlink',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'hardlinks', { f: 'shared' });
      const s = (r: string): string => path.join(d.store, r);
      const top = newName('hardlink-top');
      await fs.promises.link(s(`${a}/f`), s(`${a}/g`));
      const g = await fs.promises.stat(s(`${a}/g`));
      t.is(g.nlink, 2, 'nlink of the new name');
      await fs.promises.link(s(`${a}/g`), s(top));
      const h = await fs.promises.stat(s(top));
      t.is(h.nlink, 3, 'nlink of the newest name');
      t.is(h.ino, g.ino, 'same inode number for the names in one object and at the top level');
      t.is((await fs.promises.stat(s(`${a}/f`))).ino, g.ino, 'the first name has that inode number too');
      const [uf, ug, uh] = await Promise.all([`${a}/f`, `${a}/g`, top].map((r) => fs.promises.stat(path.join(d.upper, r))));
      t.true(uf.ino === ug.ino && uf.ino === uh.ino && uf.nlink === 3, 'the upper dir holds one inode with three names');
      await fs.promises.writeFile(s(top), 'written through the top-level name');
      t.is(await fs.promises.readFile(path.join(d.upper, a, 'f'), 'utf8'), 'written through the top-level name', 'the upper file changed');
      await rejectsWith(t, fs.promises.link(s(`${a}/f`), s(top)), 'EEXIST', 'link onto an existing name');
      await fs.promises.unlink(s(top));
      await assertGone(t, d, top, 'the unlinked name');
      t.is((await fs.promises.stat(path.join(d.upper, a, 'f'))).nlink, 2, 'upper nlink after unlinking one name');
    },
  },
  {
    name: 'link, unlink, rename in sequence; fstat of a deleted open file has nlink 0',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'link-unlink-rename', { f: 'content' });
      const s = (r: string): string => path.join(d.store, a, r);
      await fs.promises.link(s('f'), s('g'));
      await fs.promises.unlink(s('f'));
      await fs.promises.rename(s('g'), s('f'));
      await assertContent(t, d, `${a}/f`, Buffer.from('content'), 'after link, unlink, rename');
      t.deepEqual(await fs.promises.readdir(s('')), ['f']);
      t.deepEqual(await fs.promises.readdir(path.join(d.upper, a)), ['f']);
      t.is((await fs.promises.stat(path.join(d.upper, a, 'f'))).nlink, 1);
      const fh = await fs.promises.open(s('f'), 'r');
      try {
        await fs.promises.unlink(s('f'));
        const st = await fh.stat();
        t.is(st.nlink, 0, 'a deleted open file has no links');
        t.is(st.size, 7, 'and keeps its size');
      } finally {
        await fh.close();
      }
    },
  },
  {
    name: 'readdir: a dir with 2000 long names (many getdents calls) lists each once, and again the same',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'many');
      const names = Array.from({ length: 2000 }, (_, i) => `entry-${String(i).padStart(4, '0')}-${'x'.repeat(100)}`);
      for (let i = 0; i < names.length; i += 100) {
        await Promise.all(names.slice(i, i + 100).map((n) => fs.promises.writeFile(path.join(d.store, a, n), '')));
      }
      const listed = await fs.promises.readdir(path.join(d.store, a));
      t.is(listed.length, names.length);
      t.deepEqual(listed.slice().sort(), names);
      t.deepEqual((await fs.promises.readdir(path.join(d.store, a))).sort(), names, 'a second listing is the same');
      const ls = await run('ls', ['-1', '-f', path.join(d.store, a)]);
      t.is(ls.stdout.trim().split('\n').filter((n) => n !== '.' && n !== '..').length, names.length, 'ls -f (raw getdents order) sees every entry');
      t.deepEqual((await fs.promises.readdir(path.join(d.upper, a))).sort(), names, 'the upper dir has them all');
    },
  },
  {
    name: 'parallel opens, writes and reads of one file and of many files',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'parallel', { shared: Buffer.alloc(64 * 4096) });
      const shared = path.join(d.store, a, 'shared');
      const blocks = Array.from({ length: 64 }, () => randomBytes(4096));
      await Promise.all(blocks.map(async (b, i) => {
        const fh = await fs.promises.open(shared, 'r+');
        try {
          await fh.write(b, 0, 4096, i * 4096);
        } finally {
          await fh.close();
        }
      }));
      await assertContent(t, d, `${a}/shared`, Buffer.concat(blocks), 'blocks written through 64 parallel fds');
      const files = Array.from({ length: 50 }, (_, i) => [`f${i}`, randomBytes(1000 + i * 997)] as const);
      await Promise.all(files.map(([n, data]) => fs.promises.writeFile(path.join(d.store, a, n), data)));
      const back = await Promise.all(files.map(([n]) => fs.promises.readFile(path.join(d.store, a, n))));
      t.true(back.every((b, i) => b.equals(files[i][1])), 'every parallel file reads back');
      for (const [n, data] of files) t.true((await fs.promises.readFile(path.join(d.upper, a, n))).equals(data), `${n} in the upper dir`);
    },
  },
  {
    name: 'the daemon does not leak file descriptors (1000 open/close cycles on upper and lower files)',
    on: 'fresh',
    serial: true, // counts the daemon's fds: no other row may hold files open meanwhile
    check: async (t, d) => {
      const a = await upperObject(d, 'fdleak', { f: 'x' });
      const pid = fresh.pid;
      t.true(pid > 0, 'the daemon pid is known');
      const fds = async (): Promise<number> => (await fs.promises.readdir(`/proc/${pid}/fd`)).length;
      const cycle = async (): Promise<void> => {
        for (const p of [path.join(d.store, a, 'f'), path.join(d.store, L.singleFile)]) {
          const fh = await fs.promises.open(p, 'r');
          await fh.read(Buffer.alloc(1), 0, 1, 0);
          await fh.close();
        }
        await fs.promises.writeFile(path.join(d.store, a, 'g'), 'y');
        await fs.promises.readFile(path.join(d.store, L.dirObject, 'README.md'));
      };
      for (let i = 0; i < 20; i++) await cycle();
      await sleep(200); // RELEASE is asynchronous
      const before = await fds();
      for (let i = 0; i < 250; i++) await cycle();
      // RELEASE may still be in flight for the last few files.
      t.true(await eventually(async () => (await fds()) <= before + 2), `daemon fds ${before} → ${await fds()}`);
    },
  },

  // ---- upper objects: attributes ----
  {
    name: 'chmod of files and dirs (including setuid and sticky bits)',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'chmod', { f: 'x', 'sub/g': 'y' });
      for (const [r, mode] of [[`${a}/f`, 0o640], [`${a}/f`, 0o4755], [`${a}/sub`, 0o1700], [a, 0o555], [`${a}/sub/g`, 0o444]] as const) {
        await fs.promises.chmod(path.join(d.store, r), mode);
        t.is((await fs.promises.stat(path.join(d.store, r))).mode & 0o7777, mode, `${r}: merged mode ${mode.toString(8)}`);
        t.is((await fs.promises.stat(path.join(d.upper, r))).mode & 0o7777, mode, `${r}: upper mode ${mode.toString(8)}`);
      }
    },
  },
  {
    name: 'chown (as root) of files, dirs and symlinks',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'chown', { f: 'x' });
      await fs.promises.symlink('f', path.join(d.store, a, 'l'));
      await fs.promises.chown(path.join(d.store, a, 'f'), 1234, 5678);
      await fs.promises.chown(path.join(d.store, a), 4321, 8765);
      await fs.promises.lchown(path.join(d.store, a, 'l'), 2222, 3333);
      for (const [r, uid, gid] of [[`${a}/f`, 1234, 5678], [a, 4321, 8765], [`${a}/l`, 2222, 3333]] as const) {
        const m = await fs.promises.lstat(path.join(d.store, r));
        const u = await fs.promises.lstat(path.join(d.upper, r));
        t.deepEqual([m.uid, m.gid], [uid, gid], `${r}: merged owner`);
        t.deepEqual([u.uid, u.gid], [uid, gid], `${r}: upper owner`);
      }
      t.is((await fs.promises.lstat(path.join(d.upper, a, 'f'))).uid, 1234, 'lchown of the link did not follow it');
    },
  },
  {
    name: 'new files, dirs and symlinks belong to the user who made them (and a setgid dir\'s group), in the merged view and the upper dir',
    on: 'fresh',
    check: async (t, d) => {
      // As a Nix build user writes its output: without this, Nix rejects the output
      // ("suspicious ownership or permission").
      const a = await upperObject(d, 'owner');
      await fs.promises.chmod(path.join(d.store, a), 0o777);
      await fs.promises.mkdir(path.join(d.store, a, 'sgid'));
      await fs.promises.chown(path.join(d.store, a, 'sgid'), 0, 4242);
      await fs.promises.chmod(path.join(d.store, a, 'sgid'), 0o2777);
      const make = `const fs = require('fs'); const [a] = process.argv.slice(1);
        fs.closeSync(fs.openSync(a + '/f', 'w', 0o644)); fs.closeSync(fs.openSync(a + '/suid', 'w', 0o4755));
        fs.mkdirSync(a + '/d', 0o755); fs.symlinkSync('f', a + '/l'); fs.closeSync(fs.openSync(a + '/sgid/g', 'w', 0o644));
        fs.mkdirSync(a + '/sgid/sub');`;
      const r = await asNobody(process.execPath, ['-e', make, path.join(d.store, a)]);
      t.is(r.code, 0, `nobody makes entries in a 0777 dir: ${r.stderr}`);
      const nobody = [65534, 65534];
      for (const [rel, owner, mode] of [['f', nobody, 0o644], ['suid', nobody, 0o4755], ['d', nobody, 0o755], ['l', nobody, undefined], ['sgid/g', [65534, 4242], 0o644], ['sgid/sub', [65534, 4242], 0o2755]] as const) {
        for (const [view, dir] of [['merged', d.store], ['upper', d.upper]] as const) {
          const st = await fs.promises.lstat(path.join(dir, a, rel));
          t.deepEqual([st.uid, st.gid], [...owner], `${rel}: ${view} owner`);
          if (mode !== undefined) t.is(st.mode & 0o7777, mode, `${rel}: ${view} mode ${mode.toString(8)}`);
        }
      }
      const root = await fs.promises.lstat(path.join(d.upper, a));
      t.deepEqual([root.uid, root.gid], [0, 0], 'what root makes stays root\'s');
    },
  },
  {
    name: 'chown and chmod of the store dir (Nix with build users makes it root:nixbld 1775) change the upper dir',
    on: 'fresh',
    serial: true,
    check: async (t, d) => {
      const before = await fs.promises.stat(d.upper);
      try {
        await fs.promises.chown(d.store, 0, 4243);
        await fs.promises.chmod(d.store, 0o1775);
        for (const [view, dir] of [['merged', d.store], ['upper', d.upper]] as const) {
          const st = await fs.promises.stat(dir);
          t.deepEqual([st.uid, st.gid, st.mode & 0o7777], [0, 4243, 0o1775], `${view}: store dir owner and mode`);
        }
        await fs.promises.utimes(d.store, 5, 6);
        t.is((await fs.promises.stat(d.upper)).mtimeMs, 6000, 'utimes of the store dir sets the upper dir\'s');
      } finally {
        await fs.promises.chown(d.store, before.uid, before.gid);
        await fs.promises.chmod(d.store, before.mode & 0o7777);
      }
    },
  },
  {
    name: 'utimens: mtime=1 like Nix, lutimes of a symlink, touch -a / touch -m keep the other time',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'utimens', { f: 'x' });
      const f = path.join(d.store, a, 'f');
      const uf = path.join(d.upper, a, 'f');
      await fs.promises.symlink('f', path.join(d.store, a, 'l'));
      await fs.promises.utimes(f, 1, 1);
      await fs.promises.lutimes(path.join(d.store, a, 'l'), 1, 1);
      await fs.promises.utimes(path.join(d.store, a), 1, 1);
      for (const r of [`${a}/f`, `${a}/l`, a]) {
        const m = await fs.promises.lstat(path.join(d.store, r));
        const u = await fs.promises.lstat(path.join(d.upper, r));
        t.is(m.mtimeMs, 1000, `${r}: merged mtime is 1 s`);
        t.is(u.mtimeMs, 1000, `${r}: upper mtime is 1 s`);
        t.is(u.atimeMs, 1000, `${r}: upper atime is 1 s`);
      }
      t.is((await fs.promises.lstat(uf)).mtimeMs, 1000, 'lutimes of the link left its target alone');

      // touch -a / -m send UTIME_OMIT for the other time.
      let r = await run('touch', ['-a', '-d', '@1000000', f]);
      t.is(r.code, 0, r.stderr);
      for (const st of [await fs.promises.stat(f), await fs.promises.stat(uf)]) {
        t.is(st.atimeMs, 1_000_000_000, 'touch -a set atime');
        t.is(st.mtimeMs, 1000, 'touch -a kept mtime');
      }
      r = await run('touch', ['-m', '-d', '@2000000.25', f]);
      t.is(r.code, 0, r.stderr);
      for (const st of [await fs.promises.stat(f), await fs.promises.stat(uf)]) {
        t.is(st.mtimeMs, 2_000_000_250, 'touch -m set mtime (with milliseconds)');
        t.is(st.atimeMs, 1_000_000_000, 'touch -m kept atime');
      }
      const before = Date.now() - 2000;
      r = await run('touch', ['-m', f]);
      t.is(r.code, 0, r.stderr);
      const now = await fs.promises.stat(uf);
      t.true(now.mtimeMs >= before && now.mtimeMs <= Date.now() + 2000, `touch -m without a date sets mtime to now (${now.mtimeMs})`);
      t.is(now.atimeMs, 1_000_000_000, 'touch -m (UTIME_NOW) kept atime');
      const merged = await fs.promises.stat(f, { bigint: true }), upper = await fs.promises.stat(uf, { bigint: true });
      t.is(merged.mtimeNs, upper.mtimeNs, 'merged mtime equals upper mtime to the nanosecond');
      t.is(merged.atimeNs, upper.atimeNs, 'merged atime equals upper atime to the nanosecond');
    },
  },
  {
    name: 'statfs: stat -f works and reports the upper filesystem',
    on: 'fresh',
    check: async (t, d) => {
      const m = await statFs(d.store);
      const u = await statFs(d.upper);
      t.is(m.namelen, 255, 'name length');
      t.true(m.bsize > 0 && m.blocks > 0, `block size ${m.bsize}, blocks ${m.blocks}`);
      t.true(m.bfree <= m.blocks && m.bavail <= m.bfree, 'free <= total, available <= free');
      t.true(m.ffree <= m.files, 'free inodes <= inodes');
      const total = m.blocks * m.bsize, upperTotal = u.blocks * u.bsize;
      t.true(Math.abs(total - upperTotal) <= 2 * m.bsize, `total bytes ${total} match the upper filesystem's ${upperTotal}`);
      // Free space moves with other writers on this machine: compare within 5 %.
      t.true(Math.abs(m.bavail * m.bsize - u.bavail * u.bsize) <= 0.05 * upperTotal, 'available bytes match the upper filesystem');
      const inner = await statFs(path.join(d.store, L.dirObject, 'README.md'));
      t.is(inner.blocks, m.blocks, 'statfs of a path inside a lower object answers for the same filesystem');
    },
  },
  {
    name: 'access: R_OK/W_OK/X_OK for root; another user gets POSIX permissions (allow_other, default_permissions)',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'access', { 'public': 'p', 'private': 's', 'script': '#!/bin/sh\n' });
      const s = (r: string): string => path.join(d.store, a, r);
      await fs.promises.chmod(s('public'), 0o644);
      await fs.promises.chmod(s('private'), 0o600);
      await fs.promises.chmod(s('script'), 0o755);
      const { R_OK, W_OK, X_OK, F_OK } = fs.constants;
      await t.notThrowsAsync(fs.promises.access(s('public'), R_OK | W_OK), 'root: rw on 0644');
      await rejectsWith(t, fs.promises.access(s('public'), X_OK), 'EACCES', 'root: X_OK on a file without x bits');
      await t.notThrowsAsync(fs.promises.access(s('script'), X_OK), 'root: X_OK on 0755');
      await rejectsWith(t, fs.promises.access(s('missing'), F_OK), 'ENOENT', 'F_OK on a missing name');
      await t.notThrowsAsync(fs.promises.access(path.join(d.store, L.singleFile), R_OK), 'root: R_OK on a lower file');

      const test = async (flag: string, p: string): Promise<number> => (await asNobody('test', [flag, p])).code;
      t.is(await test('-r', s('public')), 0, 'nobody can read 0644');
      t.not(await test('-w', s('public')), 0, 'nobody cannot write 0644 root:root');
      t.not(await test('-r', s('private')), 0, 'nobody cannot read 0600');
      t.is(await test('-x', s('script')), 0, 'nobody can execute 0755');
      t.is(await test('-r', path.join(d.store, L.singleFile)), 0, 'nobody can read a lower file');
      const cat = await asNobody('cat', [s('private')]);
      t.not(cat.code, 0, 'nobody: cat of a 0600 file fails');
      t.regex(cat.stderr, /Permission denied/);
      const create = await asNobody('touch', [path.join(d.store, newName('by-nobody'))]);
      t.not(create.code, 0, 'nobody cannot create in the 0755 root:root store dir');
      t.regex(create.stderr, /Permission denied/);
      const write = await asNobody('sh', ['-c', 'echo x >> "$1"', 'sh', s('public')]);
      t.not(write.code, 0, 'nobody cannot append to 0644 root:root');
      t.is(await fs.promises.readFile(path.join(d.upper, a, 'public'), 'utf8'), 'p', 'the upper file is unchanged');
    },
  },

  // ---- upper objects: inodes, unlinked-open files, names ----
  {
    name: 'inode numbers: stable across stats and kernel cache drops, unique across upper and lower objects',
    on: 'fresh',
    serial: true, // drop_caches would also refresh the stale attributes the known-bug hard-link row looks for
    check: async (t, d) => {
      const files: Record<string, string> = {};
      for (let i = 0; i < 40; i++) files[`d${i % 4}/f${i}`] = String(i);
      const a = await upperObject(d, 'inodes', files);
      await fs.promises.link(path.join(d.store, a, 'd0/f0'), path.join(d.store, a, 'hard'));
      const paths: Array<{ merged: string; real: string; layer: string }> = [];
      const collect = async (root: string, realRoot: string, layer: string): Promise<void> => {
        paths.push({ merged: root, real: realRoot, layer });
        if (!(await fs.promises.lstat(realRoot)).isDirectory()) return;
        for (const n of await fs.promises.readdir(realRoot)) await collect(path.join(root, n), path.join(realRoot, n), layer);
      };
      await collect(path.join(d.store, a), path.join(d.upper, a), 'upper');
      for (const n of [L.dirObject, L.appOut, L.libOut, L.singleFile, L.textFile]) await collect(path.join(d.store, n), path.join(d.lower, n), 'lower');
      const statAll = (): Promise<number[]> => Promise.all(paths.map(async (p) => (await fs.promises.lstat(p.merged)).ino));
      const first = await statAll();
      t.deepEqual(await statAll(), first, 'a second round of stats gives the same numbers');
      // Make the kernel forget its dentries and inodes: the next lookups go to the daemon.
      await fs.promises.writeFile('/proc/sys/vm/drop_caches', '2');
      t.deepEqual(await statAll(), first, 'numbers are stable after the kernel forgot the inodes');
      // The merged numbering is a bijection with the real (layer, dev, ino) identities.
      const byReal = new Map<string, number>(), byMerged = new Map<number, string>();
      for (let i = 0; i < paths.length; i++) {
        const st = await fs.promises.lstat(paths[i].real);
        const id = `${paths[i].layer}:${st.dev}:${st.ino}`;
        const seen = byReal.get(id);
        t.true(seen === undefined || seen === first[i], `${paths[i].merged}: one real inode, one merged number`);
        byReal.set(id, first[i]);
        const other = byMerged.get(first[i]);
        t.true(other === undefined || other === id, `${paths[i].merged}: merged inode ${first[i]} also names ${other}`);
        byMerged.set(first[i], id);
      }
      t.is(byMerged.size, paths.length - 1, 'every entry has its own number except the hard link');
      t.true(paths.length > 80, `${paths.length} entries compared`);
    },
  },
  {
    name: 'a file unlinked while open stays usable through its fd and leaves no .fuse_hidden* name in the store or upper dir',
    on: 'fresh',
    check: async (t, d) => {
      const marker = randomBytes(8).toString('hex');
      const a = await upperObject(d, 'unlinked-open', { 'sub/nested': `nested ${marker}` });
      const top = newName('unlinked-open-top');
      const mine = (): Promise<string[]> => hiddenHolding(d, marker);
      const fhTop = await fs.promises.open(path.join(d.store, top), 'w+');
      const fhNested = await fs.promises.open(path.join(d.store, a, 'sub/nested'), 'r+');
      try {
        await fhTop.write(Buffer.from(`${marker} before`), 0, 23, 0);
        await fs.promises.unlink(path.join(d.store, top));
        await fs.promises.unlink(path.join(d.store, a, 'sub/nested'));
        await assertGone(t, d, top, 'unlinked top-level file');
        await assertGone(t, d, `${a}/sub/nested`, 'unlinked nested file');

        await fhTop.write(Buffer.from(' and after'), 0, 10, 23);
        const buf = Buffer.alloc(64);
        const { bytesRead } = await fhTop.read(buf, 0, 64, 0);
        t.is(buf.subarray(0, bytesRead).toString(), `${marker} before and after`, 'read/write through the fd after unlink');
        t.is((await fhTop.stat()).size, 33, 'fstat through the fd after unlink');
        const nested = Buffer.alloc(64);
        const n = await fhNested.read(nested, 0, 64, 0);
        t.is(nested.subarray(0, n.bytesRead).toString(), `nested ${marker}`, 'the nested file is still readable');
        await fhNested.write(Buffer.from('N'), 0, 1, 0);

        t.deepEqual(hiddenNames(await fs.promises.readdir(d.store)), [], 'no .fuse_hidden* in the merged root');
        t.deepEqual(hiddenNames(await fs.promises.readdir(d.upper)), [], 'no .fuse_hidden* in the upper dir');
        t.deepEqual(hiddenNames(await fs.promises.readdir(path.join(d.store, a, 'sub'))), [], 'no .fuse_hidden* in the merged subdir');
        t.deepEqual(hiddenNames(await fs.promises.readdir(path.join(d.upper, a, 'sub'))), [], 'no .fuse_hidden* in the upper subdir');
        t.is((await mine()).length, 2, 'the open files live in the work dir meanwhile');
      } finally {
        await fhTop.close();
        await fhNested.close();
      }
      // RELEASE reaches the daemon after close() returns: wait for the hidden files to go.
      t.true(await eventually(async () => (await mine()).length === 0), 'the work dir lets go of them once they are closed');
      t.deepEqual(hiddenNames(await fs.promises.readdir(d.upper)), [], 'still no .fuse_hidden* in the upper dir');
    },
  },
  {
    name: 'files unlinked while open in a dir that is removed before they are closed (rm -rf of an object in use) leave nothing in the work dir',
    on: 'fresh',
    check: async (t, d) => {
      const marker = randomBytes(8).toString('hex');
      const a = await upperObject(d, 'orphaned-open', { 'sub/nested': `nested ${marker}`, f: `top ${marker}` });
      const mine = (): Promise<string[]> => hiddenHolding(d, marker);
      // Two handles on one file, one on another: libfuse hides each open file at its unlink, and
      // the dirs they were in go (a subdir: the fast path's rmdir; the object: JS's).
      const fhNested = await fs.promises.open(path.join(d.store, a, 'sub/nested'), 'r');
      const fhNested2 = await fs.promises.open(path.join(d.store, a, 'sub/nested'), 'r');
      const fhTop = await fs.promises.open(path.join(d.store, a, 'f'), 'r+');
      try {
        const r = await run('rm', ['-rf', path.join(d.store, a)]);
        t.is(r.code, 0, `rm -rf of an object whose files are open: ${r.stderr}`);
        await assertGone(t, d, a, 'the removed object');
        t.is((await mine()).length, 2, 'the open files live in the work dir meanwhile');
        const buf = Buffer.alloc(64);
        const { bytesRead } = await fhNested.read(buf, 0, 64, 0);
        t.is(buf.subarray(0, bytesRead).toString(), `nested ${marker}`, 'read through the fd after its dir went');
        await fhTop.write(Buffer.from('T'), 0, 1, 0);
      } finally {
        await fhNested.close();
        await fhTop.close();
      }
      const again = Buffer.alloc(64);
      const { bytesRead } = await fhNested2.read(again, 0, 64, 0);
      t.is(again.subarray(0, bytesRead).toString(), `nested ${marker}`, 'the other handle still reads once the first one is closed');
      await fhNested2.close();
      // libfuse unlinks a hidden file at its last RELEASE only through its path, and a file whose
      // dir is gone has none: the daemon must remove it itself (else it stays until the next mount).
      t.true(await eventually(async () => (await mine()).length === 0), 'the work dir lets go of them once they are closed');
    },
  },
  {
    name: 'ENAMETOOLONG for names over 255 bytes; 255 bytes work',
    on: 'fresh',
    check: async (t, d) => {
      const a = await upperObject(d, 'names');
      const max = 'n'.repeat(255), tooLong = 'n'.repeat(256);
      const multibyte = 'é'.repeat(128); // 256 bytes, 128 UTF-16 units
      for (const dir of [d.store, path.join(d.store, a)]) {
        for (const n of [tooLong, multibyte]) {
          const p = path.join(dir, n);
          await rejectsWith(t, fs.promises.writeFile(p, 'x'), 'ENAMETOOLONG', `create ${n.length}-char name in ${dir}`);
          await rejectsWith(t, fs.promises.mkdir(p), 'ENAMETOOLONG', 'mkdir');
          await rejectsWith(t, fs.promises.symlink('x', p), 'ENAMETOOLONG', 'symlink');
          await rejectsWith(t, fs.promises.lstat(p), 'ENAMETOOLONG', `lstat of a ${Buffer.byteLength(n)}-byte name`);
        }
      }
      await rejectsWith(t, fs.promises.lstat(path.join(d.store, 'n'.repeat(1100))), 'ENAMETOOLONG', 'lstat of a 1100-byte name');
      await fs.promises.writeFile(path.join(d.store, a, max), 'max');
      await assertContent(t, d, `${a}/${max}`, Buffer.from('max'), '255-byte name inside an object');
      const topMax = newName('m'.repeat(255 - 33));
      t.is(Buffer.byteLength(topMax), 255);
      await fs.promises.writeFile(path.join(d.store, topMax), 'top');
      await assertContent(t, d, topMax, Buffer.from('top'), '255-byte top-level name');
      await rejectsWith(t, fs.promises.rename(path.join(d.store, topMax), path.join(d.store, tooLong)), 'ENAMETOOLONG', 'rename to a 256-byte name');
      t.true(await exists(path.join(d.upper, topMax)), 'the failed rename kept the source');
      const upperNames = await fs.promises.readdir(d.upper);
      t.false(upperNames.some((n) => Buffer.byteLength(n) > 255), 'nothing over-long reached the upper dir');
    },
  },
  {
    name: '`..` paths are resolved by the kernel in the merged namespace, never outside the layers by the daemon',
    on: 'fresh',
    check: async (t, d) => {
      const root = path.dirname(path.dirname(d.store));
      t.is(await fs.promises.realpath(path.join(d.store, '../..')), root, '<store>/../.. is the merged root');
      t.deepEqual((await fs.promises.readdir(path.join(d.store, '..'))).sort(), (await fs.promises.readdir(path.join(root, 'nix'))).sort(), '<store>/.. lists the nix dir');
      const a = await upperObject(d, 'dotdot', { f: 'x' });
      t.is(await fs.promises.readFile(path.join(d.store, a, '..', L.singleFile), 'utf8'), manifest.contents.singleFile, 'upper/../lower');
      t.is(await fs.promises.readFile(path.join(d.store, L.dirObject, '..', a, 'f'), 'utf8'), 'x', 'lower/../upper');
      t.is((await fs.promises.stat(path.join(d.store, L.dirObject, '../..'))).ino, (await fs.promises.stat(path.join(root, 'nix'))).ino, 'lower/../.. is the nix dir');
      // A symlink that climbs out: resolved relative to the merged dir, not to the lower dir.
      const up = newName('climb');
      await fs.promises.symlink('../../..', path.join(d.store, up));
      t.is(await fs.promises.realpath(path.join(d.store, up)), path.dirname(root), 'a climbing link leads above the merged root');
      t.is(await fs.promises.readlink(path.join(d.upper, up)), '../../..', 'the upper dir holds the literal target');
    },
  },
  {
    name: 'the lower store\'s .links is not part of the merged view',
    on: 'fresh',
    check: async (t, d) => {
      t.true(await exists(path.join(d.lower, '.links')), 'the lower store has a .links dir');
      await rejectsWith(t, fs.promises.lstat(path.join(d.store, '.links')), 'ENOENT', 'merged .links before Nix made one');
      t.false((await fs.promises.readdir(d.store)).includes('.links'));
    },
  },

  // ---- exact Nix-like sequences ----
  {
    name: 'Nix: temp dir created, filled, made read-only with mtime 1, renamed to its final name; then deletePath',
    on: 'fresh',
    check: async (t, d) => {
      const tmp = `add-${process.pid}-${randomBytes(4).toString('hex')}`;
      const final = newName('nix-output');
      const s = (r: string): string => path.join(d.store, r);
      await fs.promises.mkdir(s(tmp), { mode: 0o755 });
      await fs.promises.mkdir(s(`${tmp}/x`));
      await fs.promises.mkdir(s(`${tmp}/x/bin`));
      await fs.promises.writeFile(s(`${tmp}/x/bin/tool`), '#!/bin/sh\necho ok\n', { mode: 0o755 });
      await fs.promises.writeFile(s(`${tmp}/x/data`), randomBytes(150_000));
      await fs.promises.symlink('bin/tool', s(`${tmp}/x/link`));
      // canonicalisePathMetaData: modes 0444/0555, mtime 1, bottom-up.
      for (const [r, mode] of [['x/bin/tool', 0o555], ['x/data', 0o444], ['x/bin', 0o555], ['x', 0o555]] as const) {
        await fs.promises.chmod(s(`${tmp}/${r}`), mode);
      }
      for (const r of ['x/link', 'x/bin/tool', 'x/data', 'x/bin', 'x']) await fs.promises.lutimes(s(`${tmp}/${r}`), 1, 1);
      await fs.promises.rename(s(`${tmp}/x`), s(final));
      await fs.promises.rmdir(s(tmp));
      await assertGone(t, d, tmp, 'the temp dir');
      const merged = await treeLines(s(final), { times: true });
      t.deepEqual(merged, await treeLines(path.join(d.upper, final), { times: true }), 'merged tree equals upper tree');
      t.deepEqual(merged.map((l) => l.replace(/ [0-9a-f]{16} /, ' ')), [
        'd bin 555 mtime=1',
        'f bin/tool 555 18 mtime=1',
        'f data 444 150000 mtime=1',
        'l link -> bin/tool',
      ], 'modes and times as Nix leaves them');
      const st = await fs.promises.lstat(s(final));
      t.is(st.mode & 0o7777, 0o555);
      t.is(st.mtimeMs, 1000);
      const r = await run(s(`${final}/link`), []);
      t.is(r.stdout, 'ok\n', 'the output runs through its symlink');

      // deletePath as Nix's GC does it: make each dir writable, unlink children, rmdir.
      await fs.promises.chmod(s(final), 0o755);
      await fs.promises.chmod(s(`${final}/bin`), 0o755);
      await fs.promises.unlink(s(`${final}/bin/tool`));
      await fs.promises.rmdir(s(`${final}/bin`));
      await fs.promises.unlink(s(`${final}/data`));
      await fs.promises.unlink(s(`${final}/link`));
      await fs.promises.rmdir(s(final));
      await assertGone(t, d, final, 'the deleted output');
    },
  },
  {
    name: 'Nix: a .lock file is created, flock\'ed, unlinked while held, written "d" and closed',
    on: 'fresh',
    check: async (t, d) => {
      const obj = newName('locked');
      const lock = path.join(d.store, `${obj}.lock`);
      const fh = await fs.promises.open(lock, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
      try {
        t.is((await fs.promises.stat(path.join(d.upper, `${obj}.lock`))).mode & 0o777, 0o600, 'the lock file is in the upper dir, mode 0600');
        // Another process holds the lock (until its stdin closes, however slow the machine is):
        // a second non-blocking attempt must fail.
        const holder = spawn('flock', ['-x', lock, '-c', 'echo locked; read -r _ || :']);
        t.teardown(() => { holder.stdin.end(); });
        const locked = new Promise<void>((resolve, reject) => {
          holder.stdout.on('data', (b: Buffer) => { if (b.toString().includes('locked')) resolve(); });
          holder.on('exit', (code) => reject(new Error(`flock holder exited ${code} before locking`)));
        });
        const exited = new Promise<number | null>((resolve) => holder.on('exit', resolve));
        await locked;
        const contended = await run('flock', ['-x', '-n', lock, '-c', 'true']);
        t.is(contended.code, 1, 'flock -n fails while another process holds the lock');
        holder.stdin.end();
        t.is(await exited, 0, 'the holder ran');
        const free = await run('flock', ['-x', '-n', lock, '-c', 'true']);
        t.is(free.code, 0, `flock -n succeeds once released: ${free.stderr}`);
        // deleteLockFile: unlink while open, then write "d" so waiters see a stale lock.
        await fs.promises.unlink(lock);
        await fh.write(Buffer.from('d'), 0, 1, 0);
        await assertGone(t, d, `${obj}.lock`, 'the unlinked lock file');
        t.deepEqual(hiddenNames(await fs.promises.readdir(d.store)), [], 'no .fuse_hidden* in the merged root');
        t.deepEqual(hiddenNames(await fs.promises.readdir(d.upper)), [], 'no .fuse_hidden* in the upper dir');
      } finally {
        await fh.close();
      }
      await assertGone(t, d, `${obj}.lock`, 'the lock file after close');
    },
  },

  // ---- lower objects ----
  {
    name: 'lower objects read exactly as in the lower dir (trees, attributes, bytes at any offset)',
    on: 'fresh',
    check: async (t, d) => {
      for (const n of [L.dirObject, L.appOut, L.singleFile]) {
        t.deepEqual(await entryLines(path.join(d.store, n)), await entryLines(path.join(d.lower, n)), `${n}: tree, modes, sizes, contents, times`);
        t.deepEqual(await lsTree(path.join(d.store, n)).catch(async () => [await fs.promises.readFile(path.join(d.store, n), 'utf8')]),
          await lsTree(path.join(d.lower, n)).catch(async () => [await fs.promises.readFile(path.join(d.lower, n), 'utf8')]), `${n}: ls -laR`);
      }
      t.is(await fs.promises.readFile(path.join(d.store, L.singleFile), 'utf8'), manifest.contents.singleFile);
      const big = 'share/data/numbers.txt';
      const want = await fs.promises.readFile(path.join(d.lower, L.dirObject, big));
      t.true(want.length > 131_072, 'the big lower file crosses 128 KiB');
      const fh = await fs.promises.open(path.join(d.store, L.dirObject, big), 'r');
      try {
        for (const [pos, len] of [[0, 1], [4095, 2], [131_071, 3], [131_072, 65_536], [100_000, 128_894], [want.length - 5, 100]]) {
          const buf = Buffer.alloc(len);
          const { bytesRead } = await fh.read(buf, 0, len, pos);
          t.true(buf.subarray(0, bytesRead).equals(want.subarray(pos, pos + len)), `read of ${len} at ${pos}`);
        }
      } finally {
        await fh.close();
      }
      const cat = await run('sha256sum', [path.join(d.store, L.dirObject, big)]);
      t.is(cat.stdout.split(' ')[0], sha(want), 'sha256sum through the mount');
      for (const [r, target] of [['lib/libsample.so', 'libsample.so.1'], ['link-to-doc', 'share/doc/sample']]) {
        t.is(await fs.promises.readlink(path.join(d.store, L.dirObject, r)), target, `readlink ${r}`);
      }
      await assertLowerIntact(t, d, L.dirObject);
    },
  },
  {
    name: 'lower objects: write-open, O_TRUNC, O_APPEND, truncate, chmod, chown, utimens fail with EROFS and change nothing',
    on: 'fresh',
    check: async (t, d) => {
      const files = [path.join(d.store, L.singleFile), path.join(d.store, L.dirObject, 'README.md'), path.join(d.store, L.appOut, 'bin/lower-app')];
      for (const f of files) {
        for (const flags of ['r+', 'w', 'a', 'a+']) await rejectsWith(t, fs.promises.open(f, flags), 'EROFS', `open ${flags} ${f}`);
        await rejectsWith(t, fs.promises.open(f, fs.constants.O_WRONLY | fs.constants.O_CREAT), 'EROFS', `O_WRONLY|O_CREAT ${f}`);
        // O_APPEND without write access writes nothing: a read-only filesystem allows it.
        const ro = await fs.promises.open(f, fs.constants.O_RDONLY | fs.constants.O_APPEND);
        t.deepEqual(await ro.readFile(), await fs.promises.readFile(path.join(d.lower, path.relative(d.store, f))), `O_RDONLY|O_APPEND reads ${f}`);
        await ro.close();
        await rejectsWith(t, fs.promises.truncate(f, 0), 'EROFS', `truncate ${f}`);
        await rejectsWith(t, fs.promises.chmod(f, 0o777), 'EROFS', `chmod ${f}`);
        await rejectsWith(t, fs.promises.chown(f, 1, 1), 'EROFS', `chown ${f}`);
        await rejectsWith(t, fs.promises.utimes(f, 1, 1), 'EROFS', `utimes ${f}`);
        for (const args of [[], ['-a'], ['-m'], ['-d', '@1']]) {
          const r = await run('touch', [...args, f]);
          t.not(r.code, 0, `touch ${args.join(' ')} ${f} must fail`);
          t.regex(r.stderr, /Read-only file system/, `touch ${args.join(' ')}: EROFS`);
        }
      }
      for (const dir of [path.join(d.store, L.dirObject), path.join(d.store, L.dirObject, 'share/doc')]) {
        await rejectsWith(t, fs.promises.chmod(dir, 0o700), 'EROFS', `chmod of dir ${dir}`);
        // Nix's optimiser's toggle (owner write added, nothing else): answered as done, nothing changes.
        const mode = (await fs.promises.lstat(dir)).mode & 0o7777;
        await fs.promises.chmod(dir, mode | 0o200);
        t.is((await fs.promises.lstat(dir)).mode & 0o7777, mode, `u+w on ${dir} changes nothing`);
        await rejectsWith(t, fs.promises.utimes(dir, 5, 5), 'EROFS', `utimes of dir ${dir}`);
      }
      await rejectsWith(t, fs.promises.lutimes(path.join(d.store, L.dirObject, 'link-to-doc'), 5, 5), 'EROFS', 'lutimes of a lower symlink');
      await rejectsWith(t, fs.promises.lchown(path.join(d.store, L.dirObject, 'link-to-doc'), 5, 5), 'EROFS', 'lchown of a lower symlink');
      for (const n of [L.singleFile, L.dirObject, L.appOut]) await assertLowerIntact(t, d, n);
    },
  },
  {
    name: 'names with a meaning: only libfuse\'s exact .fuse_hidden names are hidden; no top-level .wh.*; non-UTF-8 names are EILSEQ',
    on: 'layered',
    check: async (t, d) => {
      // Any other .fuse_hidden* name is an ordinary name in its own dir.
      const a = path.join(d.store, U.only), b = path.join(d.store, L.libOut);
      await fs.promises.writeFile(path.join(a, '.fuse_hiddenUSER'), 'one');
      await fs.promises.writeFile(path.join(b, '.fuse_hiddenUSER'), 'two');
      t.is(await fs.promises.readFile(path.join(a, '.fuse_hiddenUSER'), 'utf8'), 'one', 'not shared with another dir');
      t.true((await fs.promises.readdir(a)).includes('.fuse_hiddenUSER'), 'listed');
      t.is(await fs.promises.readFile(path.join(d.upper, U.only, '.fuse_hiddenUSER'), 'utf8'), 'one', 'in the upper object');
      await rejectsWith(t, fs.promises.writeFile(path.join(a, '.fuse_hidden00000001000000bb'), ''), 'EPERM', 'making one of libfuse\'s own names');
      // In a lower object such names are the object's own files, read-only.
      const h = path.join(d.store, X.hiddenNames);
      t.deepEqual((await fs.promises.readdir(h)).sort(), ['.fuse_hidden00000001000000aa', '.fuse_hiddenLOWER']);
      t.is(await fs.promises.readFile(path.join(h, '.fuse_hiddenLOWER'), 'utf8'), 'lower one\n');
      t.is(await fs.promises.readFile(path.join(h, '.fuse_hidden00000001000000aa'), 'utf8'), 'lower two\n');
      await rejectsWith(t, fs.promises.writeFile(path.join(h, '.fuse_hiddenABC'), ''), 'EROFS', 'create in a lower object');
      await rejectsWith(t, fs.promises.mkdir(path.join(d.store, L.dirObject, '.fuse_hidden0000000200000002')), 'EROFS', 'mkdir in a lower object');
      // A top-level .wh.* file would be read as a whiteout on the next refresh or mount.
      await rejectsWith(t, fs.promises.writeFile(path.join(d.store, '.wh.mynotes'), 'x'), 'EPERM', 'create .wh.*');
      await rejectsWith(t, fs.promises.mkdir(path.join(d.store, `.wh.${L.singleFile}`)), 'EPERM', 'mkdir .wh.NAME');
      await rejectsWith(t, fs.promises.symlink('x', path.join(d.store, `.wh.${L.singleFile}`)), 'EPERM', 'symlink .wh.NAME');
      t.true((await fs.promises.lstat(path.join(d.store, L.singleFile))).isFile(), 'the lower object still shows');
      // Special files: a store object holds none; a lower object takes nothing.
      const fifo = await run('mkfifo', [path.join(a, 'fifo')]);
      t.regex(fifo.stderr, /Operation not permitted/, `mkfifo in an upper object: ${fifo.stderr}`);
      const lowerFifo = await run('mkfifo', [path.join(d.store, L.dirObject, 'fifo')]);
      t.regex(lowerFifo.stderr, /Read-only file system/, `mkfifo in a lower object: ${lowerFifo.stderr}`);
      // fuse-native hands names to JS as UTF-8 strings: the bytes of any other name are lost.
      const bad = Buffer.concat([Buffer.from(`${d.store}/bad`), Buffer.from([0xff]), Buffer.from('-name')]);
      await rejectsWith(t, fs.promises.writeFile(bad, 'x'), 'EILSEQ', 'create of a non-UTF-8 top-level name');
      t.deepEqual((await fs.promises.readdir(d.upper)).filter((n) => n.startsWith('bad')), [], 'nothing made under a near-miss name');
    },
  },
  {
    name: 'lower objects: create, mkdir, symlink, link, unlink, rmdir inside fail with EROFS and change nothing',
    on: 'fresh',
    check: async (t, d) => {
      const o = path.join(d.store, L.dirObject);
      await rejectsWith(t, fs.promises.writeFile(path.join(o, 'new-file'), 'x'), 'EROFS', 'create inside');
      await rejectsWith(t, fs.promises.writeFile(path.join(o, 'share/doc/new-file'), 'x'), 'EROFS', 'create deep inside');
      await rejectsWith(t, fs.promises.mkdir(path.join(o, 'new-dir')), 'EROFS', 'mkdir inside');
      await rejectsWith(t, fs.promises.symlink('README.md', path.join(o, 'new-link')), 'EROFS', 'symlink inside');
      const up = await upperObject(d, 'link-source', { f: 'x' });
      await rejectsWith(t, fs.promises.link(path.join(d.store, up, 'f'), path.join(o, 'new-hardlink')), 'EROFS', 'hard link into a lower dir');
      await rejectsWith(t, fs.promises.unlink(path.join(o, 'README.md')), 'EROFS', 'unlink inside');
      await rejectsWith(t, fs.promises.unlink(path.join(o, 'link-to-doc')), 'EROFS', 'unlink of a symlink inside');
      await rejectsWith(t, fs.promises.rmdir(path.join(o, 'empty-dir')), 'EROFS', 'rmdir of an empty lower dir');
      await rejectsWith(t, fs.promises.rmdir(path.join(o, 'share/doc/sample/deep/er')), 'EROFS', 'rmdir of a non-empty lower dir');
      await rejectsWith(t, fs.promises.unlink(path.join(d.store, L.singleFile)), 'EROFS', 'unlink of a top-level lower file');
      await rejectsWith(t, fs.promises.rmdir(path.join(d.store, L.appOut)), 'EROFS', 'rmdir of a top-level lower dir');
      const rm = await run('rm', ['-rf', path.join(d.store, L.appOut)]);
      t.not(rm.code, 0, 'rm -rf of a lower object fails');
      t.regex(rm.stderr, /Read-only file system/);
      t.true(await exists(path.join(d.store, L.appOut, 'bin/lower-app')), 'the lower object is still visible');
      for (const n of [L.dirObject, L.singleFile, L.appOut]) await assertLowerIntact(t, d, n);
      t.deepEqual(await fs.promises.readdir(path.join(d.upper, up)), ['f'], 'the upper source object is unchanged');
    },
  },
  {
    name: 'lower objects: rename from, into, within and over a lower object fails with EROFS',
    on: 'fresh',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      const up = await upperObject(d, 'rename-lower', { f: 'upper file' });
      const target = newName('renamed-lower');
      await rejectsWith(t, fs.promises.rename(s(`${L.dirObject}/README.md`), s(`${up}/README.md`)), 'EROFS', 'rename from a lower object into an upper one');
      await rejectsWith(t, fs.promises.rename(s(`${L.dirObject}/README.md`), s(target)), 'EROFS', 'rename from a lower object to the top level');
      await rejectsWith(t, fs.promises.rename(s(`${L.dirObject}/README.md`), s(`${L.dirObject}/README2.md`)), 'EROFS', 'rename within a lower object');
      await rejectsWith(t, fs.promises.rename(s(L.singleFile), s(target)), 'EROFS', 'rename of a top-level lower file');
      await rejectsWith(t, fs.promises.rename(s(L.appOut), s(target)), 'EROFS', 'rename of a top-level lower dir');
      await rejectsWith(t, fs.promises.rename(s(`${up}/f`), s(`${L.dirObject}/f`)), 'EROFS', 'rename into a lower dir');
      await rejectsWith(t, fs.promises.rename(s(`${up}/f`), s(`${L.dirObject}/README.md`)), 'EROFS', 'rename over a file in a lower dir');
      await rejectsWith(t, fs.promises.rename(s(`${up}/f`), s(L.singleFile)), 'EROFS', 'rename over a top-level lower object');
      await assertGone(t, d, target, 'no rename target was created');
      await assertContent(t, d, `${up}/f`, Buffer.from('upper file'), 'the upper source is unchanged');
      t.is(await fs.promises.readFile(s(L.singleFile), 'utf8'), manifest.contents.singleFile, 'the lower object still shows');
      for (const n of [L.dirObject, L.singleFile, L.appOut]) await assertLowerIntact(t, d, n);
    },
  },
  {
    name: 'lower objects: ln of a lower file fails with EPERM and creates nothing; cp (Nix\'s fallback) works',
    on: 'fresh',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      const dst = newName('lower-single-copy.txt');
      await rejectsWith(t, fs.promises.link(s(L.singleFile), s(dst)), 'EPERM', 'link(2) of a lower file');
      const ln = await run('ln', [s(`${L.dirObject}/README.md`), s(dst)]);
      t.not(ln.code, 0, 'ln of a lower file fails');
      t.regex(ln.stderr, /Operation not permitted/);
      const up = await upperObject(d, 'ln-target');
      await rejectsWith(t, fs.promises.link(s(`${L.dirObject}/bin/run.sh`), s(`${up}/run.sh`)), 'EPERM', 'link of a lower file into an upper object');
      await assertGone(t, d, dst, 'no top-level link was created');
      await assertGone(t, d, `${up}/run.sh`, 'no link inside the upper object was created');

      const cp = await run('cp', [s(L.singleFile), s(dst)]);
      t.is(cp.code, 0, cp.stderr);
      await assertContent(t, d, dst, Buffer.from(manifest.contents.singleFile), 'cp of a lower file');
      const tree = newName('lower-tree-copy');
      const cpa = await run('cp', ['-a', s(L.dirObject), s(tree)]);
      t.is(cpa.code, 0, cpa.stderr);
      const lowerTree = await treeLines(path.join(d.lower, L.dirObject), { times: true });
      t.deepEqual(await treeLines(s(tree), { times: true }), lowerTree, 'cp -a of a lower tree: merged copy equals the lower object');
      t.deepEqual(await treeLines(path.join(d.upper, tree), { times: true }), lowerTree, 'cp -a: the upper dir holds the copy');
      for (const n of [L.dirObject, L.singleFile]) await assertLowerIntact(t, d, n);
    },
  },
  {
    name: 'lower names at the top level: mkdir, create, symlink and link with a lower name are EEXIST',
    on: 'fresh',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      const up = await upperObject(d, 'eexist', { f: 'x' });
      await rejectsWith(t, fs.promises.mkdir(s(L.dirObject)), 'EEXIST', 'mkdir with a lower dir\'s name');
      await rejectsWith(t, fs.promises.mkdir(s(L.singleFile)), 'EEXIST', 'mkdir with a lower file\'s name');
      await rejectsWith(t, fs.promises.open(s(L.singleFile), 'wx'), 'EEXIST', 'O_CREAT|O_EXCL with a lower name');
      await rejectsWith(t, fs.promises.symlink('x', s(L.appOut)), 'EEXIST', 'symlink with a lower name');
      await rejectsWith(t, fs.promises.link(s(`${up}/f`), s(L.appOut)), 'EEXIST', 'link to a lower name');
      for (const n of [L.dirObject, L.singleFile, L.appOut]) await assertLowerIntact(t, d, n);
    },
  },
  {
    name: 'lower objects: setxattr fails with EROFS',
    on: 'fresh',
    check: async (t, d) => {
      const r = await run('python3', ['-c', 'import os,sys\ntry:\n  os.setxattr(sys.argv[1], "user.lo", b"1")\nexcept OSError as e:\n  print(e.errno)', path.join(d.store, L.singleFile)]);
      t.is(r.stdout.trim(), String(os.constants.errno.EROFS), `setxattr errno ${r.stdout.trim()} ${r.stderr}`);
      await assertLowerIntact(t, d, L.singleFile);
    },
  },

  // ---- layered: objects in both layers, whiteouts, hostile lower symlinks ----
  {
    name: 'readdir of the root: the union of both layers, once each, without whiteouts, .wh.* or lower bookkeeping',
    on: 'layered',
    check: async (t, d) => {
      const merged = await fs.promises.readdir(d.store);
      t.is(new Set(merged).size, merged.length, `no duplicates in ${merged.join(' ')}`);
      const lowerObjects = Object.values(manifest.paths).map(rel).concat([X.links, X.toplink, X.hiddenNames, X.cargoLock]);
      const upperObjects = [L.libOut, L.textFile, U.only, U.lock, '.links'];
      const hidden = new Set([L.tools, L.appDrv]);
      const want = [...new Set([...upperObjects, ...lowerObjects])].filter((n) => !hidden.has(n)).sort();
      t.deepEqual(merged.slice().sort(), want);
      t.deepEqual(merged.filter((n) => n.startsWith('.wh.') || n.startsWith('.fuse_hidden')), []);
      const ls = await run('ls', ['-la', d.store]);
      t.is(ls.code, 0, ls.stderr);
      const lsNames = ls.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/).slice(8).join(' ').replace(/ -> .*$/, ''));
      t.deepEqual(lsNames.filter((n) => n !== '.' && n !== '..').sort(), merged.slice().sort(), 'ls -la lists the same names');
      t.deepEqual(await fs.promises.readdir(path.join(d.store, '.links')), ['upper-marker'], 'merged .links is the upper one');
    },
  },
  {
    name: 'ls -la of upper and lower objects matches the layer they come from',
    on: 'layered',
    check: async (t, d) => {
      t.deepEqual(await lsTree(path.join(d.store, U.only)), await lsTree(path.join(d.upper, U.only)), 'upper-only object');
      t.deepEqual(await lsTree(path.join(d.store, L.libOut)), await lsTree(path.join(d.upper, L.libOut)), 'object in both layers: the upper copy');
      t.deepEqual(await lsTree(path.join(d.store, L.dirObject)), await lsTree(path.join(d.lower, L.dirObject)), 'lower object');
    },
  },
  {
    name: 'objects in both layers: the merged view serves the upper copy',
    on: 'layered',
    check: async (t, d) => {
      t.is(await fs.promises.readFile(path.join(d.store, L.textFile), 'utf8'), 'the upper copy\n');
      const merged = await treeLines(path.join(d.store, L.libOut), { times: true });
      t.deepEqual(merged, await treeLines(path.join(d.upper, L.libOut), { times: true }), 'the merged tree is the upper tree');
      t.notDeepEqual(merged, await treeLines(path.join(d.lower, L.libOut), { times: true }), 'and differs from the lower tree');
      t.true(merged.some((l) => l.startsWith('f UPPER-COPY ')));
      // The upper copy is writable like any upper object.
      await fs.promises.writeFile(path.join(d.store, L.libOut, 'UPPER-COPY'), 'changed');
      await assertContent(t, d, `${L.libOut}/UPPER-COPY`, Buffer.from('changed'), 'write to the upper copy');
      t.deepEqual(await entryLines(path.join(d.lower, L.libOut)), lowerSnapshots.get(L.libOut), 'the lower copy is unchanged');
    },
  },
  {
    name: 'whiteouts (.wh.NAME and char device 0/0) hide lower objects: ENOENT, not listed',
    on: 'layered',
    check: async (t, d) => {
      for (const n of [L.tools, L.appDrv]) {
        await rejectsWith(t, fs.promises.lstat(path.join(d.store, n)), 'ENOENT', `lstat of whited-out ${n}`);
        await rejectsWith(t, fs.promises.readFile(path.join(d.store, n)), 'ENOENT', `open of whited-out ${n}`);
        t.false((await fs.promises.readdir(d.store)).includes(n), `${n} is not listed`);
        t.true(await exists(path.join(d.lower, n)), `${n} is still in the lower dir`);
      }
      await rejectsWith(t, fs.promises.lstat(path.join(d.store, `.wh.${L.tools}`)), 'ENOENT', 'the .wh. file itself is not visible');
      t.true((await fs.promises.stat(path.join(d.upper, `.wh.${L.tools}`))).isFile(), 'the .wh. whiteout is still in the upper dir');
      const dev = await fs.promises.lstat(path.join(d.upper, L.appDrv));
      t.true(dev.isCharacterDevice() && dev.rdev === 0, 'the char device whiteout is still in the upper dir');
    },
  },
  {
    name: 'symlinks inside lower objects are returned literally, never followed by the daemon',
    on: 'layered',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      t.is(await fs.promises.readlink(s(`${X.links}/passwd`)), '/etc/passwd', 'readlink gives the literal absolute target');
      const st = await fs.promises.lstat(s(`${X.links}/passwd`));
      t.true(st.isSymbolicLink(), 'lstat sees a symlink');
      t.is(st.size, '/etc/passwd'.length, 'the symlink\'s own size, not /etc/passwd\'s');
      t.is(await fs.promises.readlink(s(`${X.links}/escape`)), '../../../../../..', 'readlink of a climbing link');
      // The kernel resolves the link from the merged dir: it must not land where it would from the lower dir.
      t.is(await fs.promises.realpath(s(`${X.links}/escape`)), path.resolve(d.store, X.links, '../../../../../..'));
      t.not(await fs.promises.realpath(s(`${X.links}/escape`)), path.resolve(d.lower, X.links, '../../../../../..'));
      t.is(await fs.promises.readlink(s(X.toplink)), '/etc', 'a top-level lower symlink is returned');
      t.true((await fs.promises.lstat(s(X.toplink))).isSymbolicLink());
      await rejectsWith(t, fs.promises.stat(s(`${X.links}/dangling`)), 'ENOENT', 'a dangling lower link');
      t.is(await fs.promises.readlink(s(`${X.links}/dangling`)), '/nonexistent/lo-posix-target');
    },
  },
  {
    name: 'Nix optimise on lower files: link into .links is ENOSPC, a .tmp-link-* rename over a lower object is EMLINK; nothing changes',
    on: 'layered',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      const linkName = `.links/${newName('x').slice(0, 32)}`;
      await rejectsWith(t, fs.promises.link(s(L.singleFile), s(linkName)), 'ENOSPC', 'link of a lower file into .links');
      await rejectsWith(t, fs.promises.link(s(`${L.dirObject}/README.md`), s(linkName)), 'ENOSPC', 'link of a file inside a lower object into .links');
      t.false(await exists(path.join(d.upper, linkName)), 'nothing was linked into the upper .links');
      const tmp = `.tmp-link-${process.pid}-${randomBytes(4).readUInt32BE()}`;
      await fs.promises.writeFile(s(tmp), 'would-be link');
      await rejectsWith(t, fs.promises.rename(s(tmp), s(L.singleFile)), 'EMLINK', 'rename of a .tmp-link over a top-level lower object');
      await rejectsWith(t, fs.promises.rename(s(tmp), s(`${L.dirObject}/README.md`)), 'EMLINK', 'rename of a .tmp-link over a file in a lower object');
      await assertContent(t, d, tmp, Buffer.from('would-be link'), 'the .tmp-link is untouched');
      await fs.promises.unlink(s(tmp));
      await assertGone(t, d, tmp, 'the removed .tmp-link');
      for (const n of [L.singleFile, L.dirObject]) await assertLowerIntact(t, d, n);
      t.deepEqual(await fs.promises.readdir(s('.links')), ['upper-marker'], 'the merged .links is unchanged');
    },
  },
  {
    name: 'Nix optimise while the lower file is open (a running program): the .tmp-link-* rename over it is still EMLINK; other renames over it and unlink are EROFS',
    on: 'layered',
    check: async (t, d) => {
      const s = (r: string): string => path.join(d.store, r);
      const targets = [L.singleFile, `${L.dirObject}/README.md`];
      // Open, libfuse first renames the target to a .fuse_hidden name (hide_node), and that
      // rename is what fails: its errno is what the caller gets.
      const handles = await Promise.all(targets.map((p) => fs.promises.open(s(p), 'r')));
      try {
        const tmp = `.tmp-link-${process.pid}-${randomBytes(4).readUInt32BE()}`;
        await fs.promises.writeFile(s(tmp), 'would-be link');
        const other = newName('not-a-tmp-link');
        await fs.promises.writeFile(s(other), 'another file');
        for (const target of targets) {
          await rejectsWith(t, fs.promises.rename(s(tmp), s(target)), 'EMLINK', `rename of a .tmp-link over the open ${target}`);
          await rejectsWith(t, fs.promises.rename(s(other), s(target)), 'EROFS', `rename of another file over the open ${target}`);
          await rejectsWith(t, fs.promises.unlink(s(target)), 'EROFS', `unlink of the open ${target}`);
        }
        await assertContent(t, d, tmp, Buffer.from('would-be link'), 'the .tmp-link is untouched');
        await assertContent(t, d, other, Buffer.from('another file'), 'the other file is untouched');
        await fs.promises.unlink(s(tmp));
        await fs.promises.unlink(s(other));
        const first = Buffer.alloc(16);
        await handles[0]!.read(first, 0, 16, 0);
        t.is(first.toString(), (await fs.promises.readFile(path.join(d.lower, L.singleFile))).subarray(0, 16).toString(), 'the open file reads as before');
      } finally {
        for (const h of handles) await h.close();
      }
      for (const n of [L.singleFile, L.dirObject]) await assertLowerIntact(t, d, n);
      t.deepEqual(hiddenNames(await fs.promises.readdir(d.store)), [], 'no .fuse_hidden* in the merged root');
    },
  },
  {
    name: 'a lower store object whose name ends in .lock (builtins.path of a Cargo.lock) is visible; a stale lower lock file is not',
    on: 'layered',
    check: async (t, d) => {
      t.true((await fs.promises.readdir(d.store)).includes(X.cargoLock), `${X.cargoLock} is listed`);
      t.is(await fs.promises.readFile(path.join(d.store, X.cargoLock), 'utf8'), 'Cargo.lock\n');
      t.false((await fs.promises.readdir(d.store)).includes(X.staleLock), `${X.staleLock} is not listed`);
      await rejectsWith(t, fs.promises.lstat(path.join(d.store, X.staleLock)), 'ENOENT', 'a lock file the lower store left behind');
      t.true(await exists(path.join(d.lower, X.staleLock)), 'it is in the lower dir');
    },
  },
  {
    name: 'objects in both layers: rm -rf through the mount removes the upper copy and the lower copy shows again',
    on: 'layered',
    check: async (t, d) => {
      for (const n of [L.libOut, L.textFile]) {
        const r = await run('rm', ['-rf', path.join(d.store, n)]);
        t.is(r.code, 0, r.stderr);
        t.false(await exists(path.join(d.upper, n)), `the upper copy of ${n} is gone`);
        t.deepEqual(await entryLines(path.join(d.store, n)), await entryLines(path.join(d.lower, n)), `${n}: the merged view shows the lower copy`);
        t.is((await fs.promises.readdir(d.store)).filter((x) => x === n).length, 1, `${n} is listed once`);
        await assertLowerIntact(t, d, n);
      }
      t.is(await fs.promises.readFile(path.join(d.store, L.textFile), 'utf8'), manifest.contents.textFile);
    },
  },
  {
    name: 'whiteouts: creating an object with a whited-out name replaces the whiteout',
    on: 'layered',
    check: async (t, d) => {
      await fs.promises.mkdir(path.join(d.store, L.tools));
      t.false(await exists(path.join(d.upper, `.wh.${L.tools}`)), 'the .wh. whiteout is gone');
      t.true((await fs.promises.lstat(path.join(d.upper, L.tools))).isDirectory(), 'the upper dir has the new dir');
      t.deepEqual(await fs.promises.readdir(path.join(d.store, L.tools)), [], 'the merged view shows the new, empty dir');

      await fs.promises.writeFile(path.join(d.store, L.appDrv), 'a new file');
      const st = await fs.promises.lstat(path.join(d.upper, L.appDrv));
      t.true(st.isFile(), 'the char device whiteout was replaced by a file');
      await assertContent(t, d, L.appDrv, Buffer.from('a new file'), 'file replacing a whiteout');
      const listed = await fs.promises.readdir(d.store);
      t.is(listed.filter((n) => n === L.tools || n === L.appDrv).length, 2, 'both names listed once');

      // No whiteout is left behind: deleting the new objects shows the lower ones again.
      await fs.promises.rmdir(path.join(d.store, L.tools));
      await fs.promises.unlink(path.join(d.store, L.appDrv));
      for (const n of [L.tools, L.appDrv]) {
        t.false(await exists(path.join(d.upper, n)), `${n}: nothing in the upper dir`);
        t.deepEqual(await entryLines(path.join(d.store, n)), await entryLines(path.join(d.lower, n)), `${n}: the lower object shows again`);
      }
    },
  },
];

// ---- fixture and registration ---------------------------------------------------------------

const dirsOf = (m: Merged): Dirs => ({ store: m.store, upper: m.upper, lower: m.lowerStore });

/**
 * Registers the table in the calling test file (one per ava worker, so the module state
 * above is that file's own), against mounts started with `mountArgs` added.
 */
/**
 * The names in the work dir's hidden files (WORK/hidden) whose contents hold `marker`: the work
 * dir is shared with concurrent rows, so a row recognises its own files by content.
 */
async function hiddenHolding(d: { upper: string }, marker: string): Promise<string[]> {
  const hiddenDir = path.join(path.dirname(d.upper), 'work', 'hidden');
  const out: string[] = [];
  for (const n of await fs.promises.readdir(hiddenDir)) {
    const content = await fs.promises.readFile(path.join(hiddenDir, n), 'utf8').catch(() => '');
    if (content.includes(marker)) out.push(n);
  }
  return out;
}

export function registerPosixTable(mode: { title: string; mountArgs: string[] }): void {
  // t.teardown is not allowed in hooks: the helpers' teardowns are collected here and run by
  // the after.always hook, which ava runs even when tests or the before hook failed.
  const hookTeardowns: Array<() => void | Promise<void>> = [];
  const hookContext = { teardown: (fn: () => void | Promise<void>) => { hookTeardowns.push(fn); } } as unknown as ExecutionContext;

  test.before(async () => {
    const base = tempDir(hookContext, 'lo-posix-');
    // Other users must reach the mount for the permission row.
    await fs.promises.chmod(base, 0o755);
    const lower = await freshLower(base);
    manifest = lower.manifest;
    lowerRoot = lower.root;
    const lowerStore = path.join(lower.root, 'nix/store');
    for (const k of Object.keys(L) as Array<keyof typeof L>) L[k] = rel(manifest.paths[k]);

    // Extra lower objects, added by Nix (the merged view shows only what the lower DB lists):
    // hostile symlinks, a top-level symlink, and a store object whose name ends in .lock.
    const src = path.join(base, 'lower-src');
    await fs.promises.mkdir(path.join(src, 'lower-links'), { recursive: true });
    await fs.promises.symlink('/etc/passwd', path.join(src, 'lower-links', 'passwd'));
    await fs.promises.symlink('../../../../../..', path.join(src, 'lower-links', 'escape'));
    await fs.promises.symlink('/nonexistent/lo-posix-target', path.join(src, 'lower-links', 'dangling'));
    await fs.promises.symlink('/etc', path.join(src, 'lower-toplink'));
    X.links = rel((await nixOk('nix-store', ['--store', lower.root, '--add', path.join(src, 'lower-links')])).trim());
    X.toplink = rel((await nixOk('nix-store', ['--store', lower.root, '--add', path.join(src, 'lower-toplink')])).trim());
    // Names libfuse could have made, as a lower object's own files.
    await fs.promises.mkdir(path.join(src, 'lower-hidden-names'));
    await fs.promises.writeFile(path.join(src, 'lower-hidden-names', '.fuse_hiddenLOWER'), 'lower one\n');
    await fs.promises.writeFile(path.join(src, 'lower-hidden-names', '.fuse_hidden00000001000000aa'), 'lower two\n');
    X.hiddenNames = rel((await nixOk('nix-store', ['--store', lower.root, '--add', path.join(src, 'lower-hidden-names')])).trim());
    X.cargoLock = rel(await lowerAdd(lower.root, 'Cargo.lock'));
    X.staleLock = `${newName('lower-failed-build')}.lock`; // what a failed build leaves behind
    await fs.promises.writeFile(path.join(lowerStore, X.staleLock), '');
    for (const n of [...Object.values(L), X.links, X.toplink]) lowerSnapshots.set(n, await entryLines(path.join(lowerStore, n)));
    lowerDigestBefore = await lowerRootDigest(lower.root);

    // The layered upper dir, written before mounting.
    const upper = path.join(base, 'layered', 'upper');
    await fs.promises.mkdir(upper, { recursive: true });
    await fs.promises.writeFile(path.join(upper, L.textFile), 'the upper copy\n', { mode: 0o444 });
    const cp = await run('cp', ['-a', path.join(lowerStore, L.libOut), path.join(upper, L.libOut)]);
    if (cp.code !== 0) throw new Error(`cp -a: ${cp.stderr}`);
    await fs.promises.writeFile(path.join(upper, L.libOut, 'UPPER-COPY'), 'only in the upper copy\n');
    await fs.promises.writeFile(path.join(upper, `.wh.${L.tools}`), '');
    const mknod = await run('mknod', [path.join(upper, L.appDrv), 'c', '0', '0']);
    if (mknod.code !== 0) throw new Error(`mknod: ${mknod.stderr}`);
    U.only = newName('upper-only');
    U.lock = `${newName('upper-stale')}.lock`;
    await fs.promises.mkdir(path.join(upper, U.only));
    await fs.promises.writeFile(path.join(upper, U.only, 'file'), 'upper only\n');
    await fs.promises.writeFile(path.join(upper, U.lock), '');
    await fs.promises.mkdir(path.join(upper, '.links'));
    await fs.promises.writeFile(path.join(upper, '.links', 'upper-marker'), '');

    for (const dir of ['fresh', 'layered']) await fs.promises.mkdir(path.join(base, dir), { recursive: true });
    [fresh, layered] = await Promise.all([
      mountMerged(hookContext, lower.root, { dir: path.join(base, 'fresh'), extra: mode.mountArgs }),
      mountMerged(hookContext, lower.root, { dir: path.join(base, 'layered'), upper, extra: mode.mountArgs }),
    ]);
  });

  test.after.always('unmount, then the lower store is byte-for-byte what it was', async (t) => {
    try {
      if (lowerDigestBefore) t.is(await lowerRootDigest(lowerRoot), lowerDigestBefore, 'the lower root changed');
    } finally {
      for (const fn of hookTeardowns.reverse()) await fn();
    }
  });

  for (const row of rows) {
    const serial = row.on === 'layered' || row.serial === true;
    const register = serial ? test.serial : test;
    const title = `${mode.title}, ${row.on === 'layered' ? 'layered' : 'fresh'}: ${row.name}`;
    register(title, (t) => row.check(t, dirsOf(row.on === 'layered' ? layered : fresh)));
  }
}
