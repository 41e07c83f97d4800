import test from 'ava';
import type { ExecutionContext } from 'ava';
import Database = require('better-sqlite3');
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mirrorRoot } from '../../bench/synth';
import { check, cli, CLI, run } from '../helpers/exec';
import { freshLower, lowerAdd, sharedLower } from '../helpers/fixture';
import { Merged, mountMerged, tempDir } from '../helpers/mount';
import { nix } from '../helpers/nix';

// The native fast path (native/fastpath.c) against real mounts: that it answers at all, that
// what it answers matches what the layers hold, that top-level changes made through JS reach
// it at once, and that tracing and --no-fast-path hand every request to JS. The POSIX table
// (posix.test.ts and posix-js.test.ts) checks the semantics in both modes.

interface FastCounters { on: boolean; passed: number; entries: number; [op: string]: number | boolean }
interface Status { counters: Record<string, number>; ops: Record<string, number>; fastPath: FastCounters | null; tracing: unknown }

async function status(root: string): Promise<Status> {
  const r = await cli(['status', root, '--json']);
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Status;
}

const rel = (storePath: string): string => storePath.replace(/^\/nix\/store\//, '');
const n = (f: FastCounters | null, k: string): number => (f ? Number(f[k] ?? 0) : 0);

/** Every entry below `dir` as `name d_ino type` from readdir(3) (python's scandir), one per line. */
async function scandir(dir: string): Promise<string[]> {
  const out = await check('python3', ['-c', `
import os, sys
for root, dirs, files in os.walk(sys.argv[1]):
    with os.scandir(root) as it:
        for e in it:
            t = 'd' if e.is_dir(follow_symlinks=False) else 'l' if e.is_symlink() else 'f'
            print(os.path.relpath(e.path, sys.argv[1]), e.inode(), t)
`, dir]);
  return out.trim().split('\n').filter((l) => l !== '').sort();
}

/** The same entries from lstat(2): `name st_ino type`. */
async function lstatLines(dir: string): Promise<string[]> {
  const out = await check('find', [dir, '-mindepth', '1', '-printf', '%P %i %y\n']);
  return out.trim().split('\n').filter((l) => l !== '').sort();
}

test('the fast path answers lookups, reads, readdir and upper changes; status counts them with the rest', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const s0 = await status(m.root);
  t.true(s0.fastPath?.on, 'on by default');

  const lowerObj = path.join(m.store, rel(lower.manifest.paths.dirObject));
  await check('find', [lowerObj, '-printf', '%y %s %m\n']);
  await check('sh', ['-c', `find '${lowerObj}' -type f -exec cat {} + >/dev/null`]);
  const upperObj = path.join(m.store, '0000000000000000000000000000000a-fast-upper');
  await fs.promises.mkdir(upperObj);
  await fs.promises.mkdir(path.join(upperObj, 'sub'));
  await fs.promises.writeFile(path.join(upperObj, 'sub', 'file'), 'through the fast path\n');
  await fs.promises.rename(path.join(upperObj, 'sub', 'file'), path.join(upperObj, 'moved'));
  t.is(await fs.promises.readFile(path.join(upperObj, 'moved'), 'utf8'), 'through the fast path\n');
  t.is(await fs.promises.readFile(path.join(m.upper, '0000000000000000000000000000000a-fast-upper', 'moved'), 'utf8'), 'through the fast path\n', 'in the upper dir');
  await fs.promises.lstat(path.join(m.store, '0000000000000000000000000000000b-absent')).catch(() => undefined);

  const s1 = await status(m.root);
  const f = s1.fastPath;
  for (const op of ['getattr', 'readdir', 'open', 'read', 'release', 'create', 'write', 'mkdir', 'rename', 'miss']) {
    t.true(n(f, op) > n(s0.fastPath, op), `fast ${op} counted`);
  }
  t.true(n(f, 'passed') > 0, 'top-level changes still went to JS');
  t.true(n(f, 'entries') >= 2, 'the table knows the objects looked up');
  t.true(s1.ops.getattr >= n(f, 'getattr'), 'status ops include the fast answers');
  t.true(s1.counters.miss >= 1 && s1.counters.lower > s0.counters.lower && s1.counters.upper > s0.counters.upper);

  const text = await cli(['status', m.root]);
  t.regex(text.stdout, /fast path +on: \d+ requests answered natively, \d+ passed to JS/);
});

test('mirror mode answers a lower object\'s first lookup natively; lazy mode sends it to JS for the closure copy', async (t) => {
  const lower = await sharedLower();
  const name = rel(lower.manifest.paths.dirObject);
  const mirror = await mountMerged(t, lower.root);
  const lazy = await mountMerged(t, lower.root, { metadata: 'lazy' });
  for (const m of [mirror, lazy]) {
    const s0 = await status(m.root);
    await fs.promises.lstat(path.join(m.store, name));
    const entries = await fs.promises.readdir(path.join(m.store, name));
    t.true(entries.length > 0);
    const s1 = await status(m.root);
    const passed = n(s1.fastPath, 'passed') - n(s0.fastPath, 'passed');
    if (m === mirror) {
      t.is(passed, 0, 'mirror: nothing passed to JS');
      t.is(s1.counters.closureSyncs, 0);
    } else {
      t.true(passed >= 1, 'lazy: the first lookup went to JS');
      t.is(s1.counters.closureSyncs - s0.counters.closureSyncs, 1, 'lazy: one closure copy');
      t.true(n(s1.fastPath, 'readdir') > n(s0.fastPath, 'readdir'), 'lazy: below the object, the fast path answers');
    }
  }
});

/**
 * A mount over a fresh lower store, and a lower object of `label` whose files are in the lower
 * store but whose DB row is not yet, as a copy into a shared lower store (or a build there)
 * leaves them; `addRow` registers it. `followMs`: the follower's interval.
 */
async function lateRowObject(t: ExecutionContext, label: string, metadata: 'mirror' | 'lazy', followMs: number): Promise<{ m: Merged; storePath: string; name: string; addRow: () => Promise<string> }> {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // The same content and name give the same store path in any store: learn it from a scratch one.
  const scratch = path.join(dir, 'scratch');
  await fs.promises.mkdir(path.join(scratch, 'nix/store'), { recursive: true });
  const storePath = await lowerAdd(scratch, label);
  const name = rel(storePath);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), metadata, extra: ['--follow-interval', String(followMs)] });
  await fs.promises.writeFile(path.join(m.lowerStore, name), `${label}\n`, { mode: 0o444 });
  return { m, storePath, name, addRow: () => lowerAdd(lower.root, label) };
}

/** lstat until `p` exists (then its stats) or `ms` pass (then null). */
async function lstatWithin(p: string, ms: number): Promise<fs.Stats | null> {
  const deadline = Date.now() + ms;
  for (;;) {
    const st = await fs.promises.lstat(p).catch(() => null);
    if (st !== null || Date.now() > deadline) return st;
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('lazy: a lower object whose DB row comes after its files is not shown until the row exists, then copied on lookup', async (t) => {
  // The follower, slowed down, does not reopen the lower DB here: the lookup must see the row
  // itself, on a connection whose cached pages predate it.
  const { m, storePath, name, addRow } = await lateRowObject(t, 'late-row', 'lazy', 60_000);
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, name)), { code: 'ENOENT' }, 'not registered in the lower store: not shown');
  t.false((await fs.promises.readdir(m.store)).includes(name), 'nor listed');
  t.is((await status(m.root)).counters.closureSyncs, 0, 'nothing copied');

  t.is(await addRow(), storePath);
  const st = await lstatWithin(path.join(m.store, name), 5000);
  t.true(st?.isFile(), 'shown within 5 s of its row (the cached miss expires after --negative-timeout)');
  t.is((await status(m.root)).counters.closureSyncs, 1, 'the closure was copied by that lookup');
  const v = await nix('nix-store', ['--store', m.root, '--check-validity', storePath]);
  t.is(v.code, 0, `valid in the merged store: ${v.stderr}`);
});

test('mirror: a lower object whose DB row comes after its files is not shown (nor collected by GC) until the row exists', async (t) => {
  const { m, storePath, name, addRow } = await lateRowObject(t, 'late-row-mirror', 'mirror', 500);
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, name)), { code: 'ENOENT' }, 'not registered in the lower store: not shown');
  // Nix's GC deletes every invalid entry it lists; on a lower entry that fails (read-only) and
  // aborts the whole collection.
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, `GC succeeds: ${gc.stderr}`);
  t.true(fs.existsSync(path.join(m.lowerStore, name)), 'the lower entry is untouched');
  const ex = await cli(['explain', '--json', '--root', m.root, storePath]);
  t.is((JSON.parse(ex.stdout) as { paths: { reason: string }[] }).paths[0]?.reason, 'lower-unregistered', ex.stdout + ex.stderr);

  t.is(await addRow(), storePath);
  const st = await lstatWithin(path.join(m.store, name), 5000);
  t.true(st?.isFile(), 'shown within 5 s of its row');
  const v = await nix('nix-store', ['--store', m.root, '--check-validity', storePath]);
  t.is(v.code, 0, `valid in the merged store: ${v.stderr}`);
});

test('readdir gives the d_ino and d_type that lstat gives, in both layers', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const upperObj = path.join(m.store, '0000000000000000000000000000000c-fast-dino');
  await fs.promises.mkdir(path.join(upperObj, 'd'), { recursive: true });
  await fs.promises.writeFile(path.join(upperObj, 'd', 'f'), 'x');
  await fs.promises.symlink('d/f', path.join(upperObj, 'l'));
  for (const obj of [path.join(m.store, rel(lower.manifest.paths.dirObject)), upperObj]) {
    const fromReaddir = await scandir(obj);
    t.true(fromReaddir.length >= 3, `${obj}: entries found`);
    t.deepEqual(fromReaddir, await lstatLines(obj), `${obj}: readdir and lstat agree`);
  }
});

test('the root listing gives the d_ino and d_type that lstat gives', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  await fs.promises.mkdir(path.join(m.store, '0000000000000000000000000000000d-fast-root-dino'));
  await fs.promises.writeFile(path.join(m.store, '0000000000000000000000000000000d-fast-root-dino.lock'), '');
  // Every lower object looked up first, by path: all are then settled, and the listing's
  // entries come with the fast path's lookups (a name never looked up may not be yet).
  for (const name of await fs.promises.readdir(m.lowerStore)) await fs.promises.lstat(path.join(m.store, name)).catch(() => undefined);
  // readdir(3) itself (python's scandir would lstat an entry whose d_type is DT_UNKNOWN).
  const listed = (await check('python3', ['-c', `
import ctypes, sys
class Dirent(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64), ('d_reclen', ctypes.c_ushort),
                ('d_type', ctypes.c_ubyte), ('d_name', ctypes.c_char * 256)]
libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
d = libc.opendir(sys.argv[1].encode())
types = {4: 'd', 8: 'f', 10: 'l'}
while True:
    e = libc.readdir(d)
    if not e: break
    name = e.contents.d_name.decode()
    if name not in ('.', '..'): print(name, e.contents.d_ino, types.get(e.contents.d_type, 'DT_%d' % e.contents.d_type))
`, m.store])).trim().split('\n').sort();
  const stated = (await check('find', [m.store, '-mindepth', '1', '-maxdepth', '1', '-printf', '%P %i %y\n'])).trim().split('\n').sort();
  t.true(listed.length >= 4, `entries listed: ${listed.join(', ')}`);
  t.deepEqual(listed, stated, 'readdir and lstat agree at the root');
});

test('refresh: upper names never go missing while the fast path\'s table is rebuilt', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  // Many upper names, so the rebuild takes a while; bookkeeping-like names, which the fast path
  // would answer "absent" at once if its table lacked them.
  const upper = path.join(dir, 'upper');
  await fs.promises.mkdir(upper);
  const names = Array.from({ length: 20_000 }, (_, i) => `refresh-${i}.lock`);
  for (const n of names) await fs.promises.writeFile(path.join(upper, n), '');
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), upper, extra: ['--attr-timeout', '0', '--negative-timeout', '0'] });
  // A separate process stats three of them in a loop until told to stop (stdin closes).
  const watched = [names[0], names[9_999], names[19_999]].map((n) => path.join(m.store, n));
  const statter = spawn(process.execPath, ['-e', `
    const fs = require('fs'); const ps = ${JSON.stringify(watched)};
    let n = 0, missing = 0, stop = false;
    process.stdin.on('end', () => { stop = true; }); process.stdin.resume();
    (function loop() {
      for (let i = 0; i < 200; i++) for (const p of ps) { n++; if (fs.statSync(p, { throwIfNoEntry: false }) === undefined) missing++; }
      if (stop) { console.log(JSON.stringify({ n, missing })); return; }
      setImmediate(loop);
    })();`], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  statter.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise((r) => statter.once('exit', r));
  t.teardown(() => { statter.kill('SIGKILL'); });
  for (let i = 0; i < 8; i++) {
    const r = await cli(['refresh', m.root]);
    t.is(r.code, 0, r.stderr);
  }
  statter.stdin.end();
  await exited;
  const { n, missing } = JSON.parse(out) as { n: number; missing: number };
  t.true(n > 1000, `stats made: ${n}`);
  t.is(missing, 0, `upper names answered absent during refreshes: ${missing} of ${n}`);
});

test('top-level changes reach the fast path at once: rename away, delete of an upper copy, a new lower object', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const a = path.join(m.store, '0000000000000000000000000000000d-fast-a');
  const b = path.join(m.store, '0000000000000000000000000000000d-fast-b');
  await fs.promises.mkdir(a);
  await fs.promises.writeFile(path.join(a, 'file'), 'a\n');
  t.is(await fs.promises.readFile(path.join(a, 'file'), 'utf8'), 'a\n');
  await fs.promises.rename(a, b);
  await t.throwsAsync(fs.promises.readFile(path.join(a, 'file')), { code: 'ENOENT' }, 'the old name is gone');
  t.is(await fs.promises.readFile(path.join(b, 'file'), 'utf8'), 'a\n', 'the new name serves the file');

  // A lower object added after the mount shows (absent answers are never cached natively).
  const added = rel(await lowerAdd(lower.root, 'fast-late'));
  let seen = false;
  for (let i = 0; i < 40 && !seen; i++) {
    seen = await fs.promises.lstat(path.join(m.store, added)).then(() => true, () => false);
    if (!seen) await new Promise((r) => setTimeout(r, 100));
  }
  t.true(seen, 'a lower object added after mount is visible within 4 s');

  // refresh: an upper copy put beside the mount takes over from the lower object, file by
  // file; deleting it through the mount shows the lower object again.
  const libName = rel(lower.manifest.paths.libOut);
  const lowerFiles = (await check('find', [path.join(m.lowerStore, libName), '-type', 'f', '-printf', '%P\n'])).trim().split('\n');
  const probe = path.join(m.store, libName, lowerFiles[0]!);
  const lowerBytes = await fs.promises.readFile(probe);
  await check('cp', ['-a', path.join(m.lowerStore, libName), path.join(m.upper, libName)]);
  await check('sh', ['-c', `chmod -R u+w '${m.upper}/${libName}' && echo upper > '${m.upper}/${libName}/UPPER'`]);
  await t.throwsAsync(fs.promises.readFile(path.join(m.store, libName, 'UPPER')), { code: 'ENOENT' }, 'before refresh the lower object is served');
  t.is((await cli(['refresh', m.root])).code, 0);
  await new Promise((r) => setTimeout(r, 1200)); // the kernel's negative entry for UPPER (--negative-timeout 1)
  t.is(await fs.promises.readFile(path.join(m.store, libName, 'UPPER'), 'utf8'), 'upper\n', 'after refresh the upper copy is served');
  await check('rm', ['-rf', path.join(m.store, libName)]);
  t.false(fs.existsSync(path.join(m.upper, libName)), 'the upper copy is gone');
  await t.throwsAsync(fs.promises.readFile(path.join(m.store, libName, 'UPPER')), { code: 'ENOENT' }, 'the upper-only file went with it');
  t.deepEqual(await fs.promises.readFile(probe), lowerBytes, 'the lower object shows again');
});

test('tracing and --no-fast-path send every request to JS', async (t) => {
  const lower = await sharedLower();
  const obj = rel(lower.manifest.paths.dirObject);
  const m = await mountMerged(t, lower.root);
  const traceFile = path.join(m.dir, 'trace.log');
  const on = await cli(['trace', m.root, 'on', '--file', traceFile]);
  t.is(on.code, 0, on.stderr);
  const s0 = await status(m.root);
  t.false(s0.fastPath?.on, 'off while tracing');
  await check('find', [path.join(m.store, obj), '-printf', '%y\n']);
  await fs.promises.lstat(path.join(m.store, '0000000000000000000000000000000e-absent')).catch(() => undefined);
  const s1 = await status(m.root);
  t.is(n(s1.fastPath, 'getattr'), n(s0.fastPath, 'getattr'), 'no fast getattr while tracing');
  t.is(n(s1.fastPath, 'miss'), n(s0.fastPath, 'miss'), 'no fast miss while tracing');
  t.regex(await fs.promises.readFile(traceFile, 'utf8'), /resolve \/nix\/store\/0000000000000000000000000000000e-absent absent/);
  const off = await cli(['trace', m.root, 'off']);
  t.is(off.code, 0, off.stderr);
  t.true((await status(m.root)).fastPath?.on, 'on again after tracing');

  const js = await mountMerged(t, lower.root, { extra: ['--no-fast-path'] });
  await check('find', [path.join(js.store, obj), '-printf', '%y\n']);
  const s2 = await status(js.root);
  t.false(s2.fastPath?.on);
  t.is(n(s2.fastPath, 'getattr') + n(s2.fastPath, 'readdir') + n(s2.fastPath, 'miss'), 0, 'nothing answered natively');
  t.true(s2.ops.getattr > 0 && s2.ops.readdir > 0, 'JS answered');
});

/** Whether `name` shows in a listing of `dir` within 4 s (the daemon looks at the lower store every 500 ms). */
async function listedSoon(dir: string, name: string): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    if ((await listing(dir)).includes(name)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** Reads the first entries of `dir` (one getdents) and closes it: a listing abandoned half way. */
async function abandon(dir: string): Promise<void> {
  await check('python3', ['-c', 'import os, sys\nit = os.scandir(sys.argv[1])\nnext(it)\nit.close()', dir]);
}

/** The names in `dir`, listed by an outside process (`ls -A`). */
async function listing(dir: string): Promise<string[]> {
  return (await check('ls', ['-A', dir])).trim().split('\n').filter((l) => l !== '').sort();
}

/**
 * Whether listing `dir` again asks the daemon nothing (`readdirs` counts the READDIRs it
 * answered). Other tests drop the kernel's caches meanwhile (drop_caches is machine-wide), and a
 * drop between two listings costs one more READDIR: so up to three tries, each listing once
 * first to let the kernel keep it. Without kept listings every try asks again.
 */
async function keptByKernel(dir: string, readdirs: () => Promise<number>): Promise<boolean> {
  for (let attempt = 0; attempt < 3; attempt++) {
    await listing(dir);
    const before = await readdirs();
    await listing(dir);
    if ((await readdirs()) === before) return true;
  }
  return false;
}

test('the kernel keeps listings: asked once, reset by changes through the mount; the root is listed again when the lower store changes', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const readdirs = async (): Promise<number> => (await status(m.root)).ops.readdir ?? 0;

  // A lower object: listed by the daemon once, then from the kernel's cache.
  const lowerObj = path.join(m.store, rel(lower.manifest.paths.dirObject));
  const expected = (await fs.promises.readdir(path.join(m.lowerStore, rel(lower.manifest.paths.dirObject)))).sort();
  t.deepEqual(await listing(lowerObj), expected);
  t.true(await keptByKernel(lowerObj, readdirs), 'listing a lower object again asks the daemon nothing');
  t.deepEqual(await listing(lowerObj), expected);
  t.true(n((await status(m.root)).fastPath, 'listings') >= 1, 'status counts the listings the kernel keeps');

  // An upper object: every change through the mount shows in the next listing.
  const up = path.join(m.store, '0000000000000000000000000000000f-fast-listing');
  await fs.promises.mkdir(path.join(up, 'sub'), { recursive: true });
  await fs.promises.writeFile(path.join(up, 'a'), 'a');
  t.deepEqual(await listing(up), ['a', 'sub']);
  await fs.promises.writeFile(path.join(up, 'b'), 'b');
  t.deepEqual(await listing(up), ['a', 'b', 'sub'], 'a created file shows');
  await fs.promises.unlink(path.join(up, 'a'));
  t.deepEqual(await listing(up), ['b', 'sub'], 'an unlinked file goes');
  await fs.promises.rename(path.join(up, 'b'), path.join(up, 'sub', 'b'));
  t.deepEqual(await listing(up), ['sub'], 'a file renamed away goes');
  t.deepEqual(await listing(path.join(up, 'sub')), ['b'], 'and shows where it went');
  await fs.promises.symlink('sub/b', path.join(up, 'l'));
  await fs.promises.mkdir(path.join(up, 'd'));
  await fs.promises.link(path.join(up, 'sub', 'b'), path.join(up, 'h'));
  t.deepEqual(await listing(up), ['d', 'h', 'l', 'sub'], 'a symlink, a directory and a hard link show');
  await fs.promises.rmdir(path.join(up, 'd'));
  t.deepEqual(await listing(up), ['h', 'l', 'sub'], 'a removed directory goes');

  // The root too; it also changes beside the mount, when the lower store does.
  const root1 = await listing(m.store);
  t.true(await keptByKernel(m.store, readdirs), 'listing the root again asks the daemon nothing');
  t.deepEqual(await listing(m.store), root1);
  const top = '0000000000000000000000000000001f-fast-listing-top';
  await fs.promises.mkdir(path.join(m.store, top));
  t.true((await listing(m.store)).includes(top), 'an object made through the mount shows at once');
  await fs.promises.rmdir(path.join(m.store, top));
  t.false((await listing(m.store)).includes(top), 'and goes at once');
  const added = rel(await lowerAdd(lower.root, 'fast-listing-late'));
  t.true(await listedSoon(m.store, added), 'a lower object added after mount shows in the root listing within 4 s');
});

test('refresh: an upper copy put beside the mount over a lower object whose listing the kernel keeps is listed afresh', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const readdirs = async (): Promise<number> => (await status(m.root)).ops.readdir ?? 0;
  const libName = rel(lower.manifest.paths.libOut);
  const obj = path.join(m.store, libName);
  const before = await listing(obj);
  t.true(await keptByKernel(obj, readdirs), 'the kernel keeps the lower listing');
  t.deepEqual(await listing(obj), before);
  t.false(before.includes('UPPER'));
  await check('cp', ['-a', path.join(m.lowerStore, libName), path.join(m.upper, libName)]);
  await check('sh', ['-c', `chmod -R u+w '${m.upper}/${libName}' && echo upper > '${m.upper}/${libName}/UPPER'`]);
  t.is((await cli(['refresh', m.root])).code, 0);
  t.deepEqual(await listing(obj), [...before, 'UPPER'].sort(), 'after refresh the upper copy is listed');
  t.deepEqual(await listing(obj), [...before, 'UPPER'].sort(), 'and kept');
});

test('a listed directory the kernel forgets (removed through the mount) leaves the set refresh invalidates', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const listedDirs = async (): Promise<number> => n((await status(m.root)).fastPath, 'listedDirs');
  const obj = path.join(m.store, '0000000000000000000000000000002f-fast-forgotten');
  const subdirs = Array.from({ length: 40 }, (_, i) => path.join(obj, `d${String(i)}`));
  for (const d of subdirs) await fs.promises.mkdir(path.join(d, 'inner'), { recursive: true });

  // Other tests drop the kernel's caches meanwhile (machine-wide): list again if one did.
  let peak = 0;
  for (let attempt = 0; attempt < 3 && peak < subdirs.length; attempt++) {
    await check('ls', ['-A', ...subdirs]);
    peak = await listedDirs();
  }
  t.true(peak >= subdirs.length, `the ${String(subdirs.length)} listed directories are remembered (status shows ${String(peak)})`);

  // Removed, their inodes are evicted and the kernel sends FORGETs (with the next requests).
  await fs.promises.rm(obj, { recursive: true });
  let after = peak;
  for (let i = 0; i < 40 && after > peak - subdirs.length; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await listedDirs();
  }
  t.true(after <= peak - subdirs.length, `forgotten directories leave the set (${String(peak)} before the removal, ${String(after)} after)`);

  // The set still takes new listings, and refresh still reaches them.
  await fs.promises.mkdir(path.join(obj, 'again'), { recursive: true });
  await listing(path.join(obj, 'again'));
  t.true((await listedDirs()) >= 1);
  t.is((await cli(['refresh', m.root])).code, 0);
  t.is(await listedDirs(), 0, 'refresh invalidates every remembered listing and starts the set over');
});

test('--no-fast-path: every listing reaches the daemon', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { extra: ['--no-fast-path'] });
  const obj = path.join(m.store, rel(lower.manifest.paths.dirObject));
  await listing(obj);
  const r1 = (await status(m.root)).ops.readdir ?? 0;
  await listing(obj);
  const s = await status(m.root);
  t.true((s.ops.readdir ?? 0) > r1, 'the second listing was asked too');
  t.is(n(s.fastPath, 'listings'), 0);
});

test('the kernel keeps a symlink\'s target once read, in both layers; a symlink replaced through the mount reads anew; --no-fast-path asks every time', async (t) => {
  // Other tests drop the kernel's caches meanwhile (each drop costs one more readlink), so 20
  // readlinks must reach the daemon only a few times, where without the cache all 20 do.
  const times = 20;
  const readlinks = async (root: string): Promise<number> => (await status(root)).ops.readlink ?? 0;
  const asked = async (root: string, link: string, target: string): Promise<number> => {
    const before = await readlinks(root);
    for (let i = 0; i < times; i++) t.is(await fs.promises.readlink(link), target);
    return (await readlinks(root)) - before;
  };
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const link = path.join(m.store, rel(lower.manifest.paths.dirObject), 'link-to-doc');
  const expected = await fs.promises.readlink(path.join(lower.root, 'nix/store', rel(lower.manifest.paths.dirObject), 'link-to-doc'));
  t.true(await asked(m.root, link, expected) < 5, 'a lower symlink\'s target is kept by the kernel');

  const obj = path.join(m.store, '0000000000000000000000000000003b-fast-symlinks');
  await fs.promises.mkdir(obj);
  await fs.promises.symlink('first', path.join(obj, 'l'));
  t.true(await asked(m.root, path.join(obj, 'l'), 'first') < 5, 'an upper symlink\'s target is kept by the kernel');
  await fs.promises.symlink('second', path.join(obj, 'l.new'));
  await fs.promises.rename(path.join(obj, 'l.new'), path.join(obj, 'l'));
  t.true(await asked(m.root, path.join(obj, 'l'), 'second') < 5, 'the replaced symlink is read anew, then kept');

  const plain = await mountMerged(t, lower.root, { extra: ['--no-fast-path'] });
  const plainLink = path.join(plain.store, rel(lower.manifest.paths.dirObject), 'link-to-doc');
  t.true(await asked(plain.root, plainLink, expected) >= times, 'without the fast path every readlink reaches the daemon');
});

test('listings the kernel keeps: long ones listed by several processes at once, one abandoned half way, fsync and ioctl on a directory', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const obj = path.join(m.store, '0000000000000000000000000000002a-fast-long-listing');
  await fs.promises.mkdir(obj);
  const names: string[] = [];
  for (let i = 0; i < 3000; i++) names.push(`entry-with-a-long-name-to-fill-many-readdir-pages-${String(i).padStart(5, '0')}`);
  await check('sh', ['-c', 'cd "$1" && shift && touch "$@"', 'sh', obj, ...names]);
  const want = [...names].sort();
  const lists = await Promise.all([0, 1, 2, 3].map(() => listing(obj)));
  for (const l of lists) t.deepEqual(l, want, 'four concurrent listings are complete');
  await abandon(obj);
  t.deepEqual(await listing(obj), want, 'after a listing abandoned half way');
  await fs.promises.unlink(path.join(obj, names[1234]!));
  t.deepEqual(await listing(obj), want.filter((x) => x !== names[1234]), 'an unlinked entry goes');

  // Directory handles the kernel makes without asking: fsync and an ioctl still get answers.
  await check('python3', ['-c', 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)', obj]);
  const ioctl = await check('python3', ['-c', `
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.ioctl(fd, 0x80086601, bytearray(8))  # FS_IOC_GETFLAGS
    print('answered')
except OSError as e:
    print('refused', e.errno)
`, obj]);
  t.regex(ioctl, /answered|refused/);
  t.deepEqual((await listing(m.store)).includes(path.basename(obj)), true, 'the daemon still serves');
});

test('lazy mode: the kept root listing shows a lower object added after mount (the daemon watches the lower store)', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), metadata: 'lazy' });
  const before = await listing(m.store);
  t.deepEqual(await listing(m.store), before, 'kept');
  const added = rel(await lowerAdd(lower.root, 'fast-listing-lazy'));
  t.true(await listedSoon(m.store, added), 'the new lower object is listed within 4 s');
});

test('READDIRPLUS: a listing brings every entry\'s attributes; after the kernel forgets them, the entries still work', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const obj = path.join(m.store, '0000000000000000000000000000003a-fast-readdirplus');
  await fs.promises.mkdir(obj);
  const names = Array.from({ length: 300 }, (_, i) => `file-${String(i).padStart(3, '0')}`);
  await check('sh', ['-c', 'cd "$1" && shift && for n in "$@"; do echo "$n" > "$n"; done', 'sh', obj, ...names]);
  await fs.promises.mkdir(path.join(obj, 'sub'));
  await fs.promises.symlink('file-000', path.join(obj, 'link'));
  const p0 = n((await status(m.root)).fastPath, 'readdirplus');

  // `ls -l` and `find` agree with the upper dir, entry by entry.
  const upperDir = path.join(m.upper, path.basename(obj));
  const want = (await check('find', [upperDir, '-mindepth', '1', '-printf', '%P %s %m %y %l\n'])).trim().split('\n').sort();
  const got = (await check('find', [obj, '-mindepth', '1', '-printf', '%P %s %m %y %l\n'])).trim().split('\n').sort();
  t.deepEqual(got, want);
  t.true(n((await status(m.root)).fastPath, 'readdirplus') > p0, 'the listing was a READDIRPLUS');

  // The kernel forgets the entries (each FORGET must match a lookup libfuse counted).
  await fs.promises.writeFile('/proc/sys/vm/drop_caches', '2');
  for (const name of names.slice(0, 100)) t.is(await fs.promises.readFile(path.join(obj, name), 'utf8'), `${name}\n`);
  for (const name of names.slice(100, 200)) await fs.promises.rename(path.join(obj, name), path.join(obj, 'sub', name));
  for (const name of names.slice(200)) await fs.promises.unlink(path.join(obj, name));
  t.deepEqual(await listing(obj), [...names.slice(0, 100), 'link', 'sub'].sort());
  t.deepEqual(await listing(path.join(obj, 'sub')), names.slice(100, 200));
  t.is(await fs.promises.readlink(path.join(obj, 'link')), 'file-000');
  await check('ls', ['-lR', m.store]);
  t.true((await status(m.root)).fastPath?.on, 'the daemon still serves');
});

test('listings abandoned half way in more directories than handles are kept for (the oldest are given back), half of them removed and forgotten meanwhile', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const obj = path.join(m.store, '0000000000000000000000000000004a-fast-abandoned');
  const dirs = Array.from({ length: 70 }, (_, i) => `d${String(i).padStart(2, '0')}`);
  // 70 directories of 200 long names: each listing takes several READDIRs.
  await check('sh', ['-c', `mkdir -p '${obj}' && cd '${obj}' && for d in ${dirs.join(' ')}; do mkdir $d; (cd $d && touch $(seq -f 'entry-with-a-rather-long-name-%04g' 1 200)); done`]);
  for (const d of dirs.slice(0, 35)) await abandon(path.join(obj, d));
  // The first half goes while its handles are still kept, and the kernel forgets it.
  await check('rm', ['-rf', ...dirs.slice(0, 35).map((d) => path.join(obj, d))]);
  await fs.promises.writeFile('/proc/sys/vm/drop_caches', '2');
  for (const d of dirs.slice(35)) await abandon(path.join(obj, d));
  for (const d of dirs.slice(35, 40)) t.is((await listing(path.join(obj, d))).length, 200, `${d} lists whole`);
  t.deepEqual(await listing(obj), dirs.slice(35));
  t.true((await status(m.root)).fastPath?.on, 'the daemon still serves');
});

test('lazy mode: listing the root copies no closure (only names the fast path knows come with attributes)', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), metadata: 'lazy' });
  const s0 = await status(m.root);
  const names = await listing(m.store);
  t.true(names.length >= 5, 'the root lists the lower objects');
  const s1 = await status(m.root);
  t.true(n(s1.fastPath, 'readdirplus') > n(s0.fastPath, 'readdirplus'), 'the listing was a READDIRPLUS');
  t.is(s1.counters.closureSyncs ?? 0, s0.counters.closureSyncs ?? 0, 'and copied no closure');
  t.is(s1.counters.lower ?? 0, s0.counters.lower ?? 0, 'nor looked up a lower object');
});

test('polling: a dense run of opens is found while the reader polls (--poll-us 50), never with --poll-us 0; the log says which', async (t) => {
  const lower = await sharedLower();
  const file = path.join(rel(lower.manifest.paths.dirObject), 'README.md');
  // 3,000 open/read/close in one process: OPEN and RELEASE requests back to back.
  const loop = 'import sys\nfor _ in range(3000):\n    with open(sys.argv[1], "rb") as f: f.read()';
  for (const us of [50, 0]) {
    // The governor turns polling off while other tasks wait for a CPU (src/mount/poll.ts), as
    // they may while other test files run; this test is about the reader, so it runs without.
    const m = await mountMerged(t, lower.root, { extra: ['--poll-us', String(us), '--log-level', 'debug'], env: { LOCAL_OVERLAY_TEST_POLL_UNGOVERNED: '1' } });
    const logFile = path.join(m.root, 'nix/var/log/local-overlay.log');
    // How many requests polling finds depends on how busy the machine is: about 1 in 2 on a
    // quiet one, as few as 1 in 300 with other test files running. Without polling it is none.
    // So: some, in one of up to three runs.
    let polled = 0, opens = 0;
    for (let run = 0; run < (us > 0 ? 3 : 1) && polled === 0; run++) {
      const s0 = await status(m.root);
      await check('python3', ['-c', loop, path.join(m.store, file)]);
      const s1 = await status(m.root);
      opens = n(s1.fastPath, 'open') - n(s0.fastPath, 'open');
      polled = n(s1.fastPath, 'polled') - n(s0.fastPath, 'polled');
      t.true(opens >= 3000, `--poll-us ${us}: ${opens} opens answered natively`);
    }
    const log = await fs.promises.readFile(logFile, 'utf8');
    if (us > 0) t.true(polled > 0, `--poll-us ${us}: ${polled} of ${opens * 2} requests found while polling`);
    else t.is(polled, 0, '--poll-us 0: never polls');
    t.regex(log, us > 0 ? /polling \/dev\/fuse up to 50 µs before sleeping/ : /not polling \/dev\/fuse/);
  }
});

test('a mount removed from outside while the lower store changes: the daemon exits 0, it never notifies the kernel through the channel libfuse freed', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const lowerStore = path.join(lower.root, 'nix/store');
  // Each round: a daemon in the foreground (its exit status is ours to see), a listing of the
  // root (the kernel keeps it), `fusermount -u` from outside, then the lower store changes every
  // 50 ms (the daemon looks every 100 ms and asks for the root's listing to be dropped) until
  // the daemon notices the unmount (within 2 s) and exits.
  for (let round = 0; round < 4; round++) {
    const at = path.join(dir, `r${round}`);
    const root = path.join(at, 'merged');
    const store = path.join(root, 'nix/store');
    const daemon = spawn(process.execPath, [CLI, 'mount', '--lower', lower.root, '--upper', path.join(at, 'upper'), '--root', root, '--work', path.join(at, 'work'),
      '--metadata', 'mirror', '--follow-interval', '100', '--foreground'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    daemon.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => daemon.on('exit', (code, signal) => resolve({ code, signal })));
    t.teardown(() => { if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL'); });
    for (let i = 0; i < 100 && !(await mounted(store)); i++) await new Promise((r) => setTimeout(r, 100));
    t.true(await mounted(store), `round ${round}: mounted`);
    await listing(store);
    await new Promise((r) => setTimeout(r, 300));
    await check('fusermount', ['-u', store]);
    let gone = false;
    const end = exited.then((r) => { gone = true; return r; });
    for (let i = 0; i < 100 && !gone; i++) {
      const now = new Date();
      await fs.promises.utimes(lowerStore, now, now);
      await new Promise((r) => setTimeout(r, 50));
    }
    const result = await end;
    t.deepEqual(result, { code: 0, signal: null }, `round ${round}: the daemon's exit (stderr: ${stderr.trim().split('\n').slice(-3).join(' | ')})`);
  }
});

async function mounted(dir: string): Promise<boolean> {
  const text = await fs.promises.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === dir);
}

/** The open(2) flags of the daemon's descriptors of `file`, from /proc (octal, as fdinfo gives them). */
async function daemonFdFlags(pid: number, file: string): Promise<number[]> {
  const fdDir = `/proc/${pid}/fd`;
  const flags: number[] = [];
  for (const fd of await fs.promises.readdir(fdDir)) {
    const target = await fs.promises.readlink(path.join(fdDir, fd)).catch(() => '');
    if (target !== file) continue;
    const info = await fs.promises.readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    flags.push(parseInt(/^flags:\s+([0-7]+)/m.exec(info)?.[1] ?? '0', 8));
  }
  return flags;
}

test('files the fast path opens for a client, and /dev/fuse, are closed in the daemon\'s children (O_CLOEXEC): upper created, upper opened, lower opened', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const obj = '0000000000000000000000000000005a-fast-cloexec';
  await fs.promises.mkdir(path.join(m.store, obj));
  await fs.promises.writeFile(path.join(m.store, obj, 'old'), 'x');
  const lowerFile = path.join(rel(lower.manifest.paths.dirObject), 'README.md');
  const s0 = await status(m.root);
  const created = await fs.promises.open(path.join(m.store, obj, 'tool'), 'w');
  const opened = await fs.promises.open(path.join(m.store, obj, 'old'), 'r+');
  const read = await fs.promises.open(path.join(m.store, lowerFile), 'r');
  try {
    const s1 = await status(m.root);
    t.true(n(s1.fastPath, 'create') > n(s0.fastPath, 'create') && n(s1.fastPath, 'open') >= n(s0.fastPath, 'open') + 2, 'opened by the fast path');
    const O_CLOEXEC = 0o2000000;
    for (const [what, file] of [['created', path.join(m.upper, obj, 'tool')], ['opened', path.join(m.upper, obj, 'old')], ['lower', path.join(m.lowerStore, lowerFile)]] as const) {
      const flags = await daemonFdFlags(m.pid, file);
      t.is(flags.length, 1, `${what}: the daemon holds it once`);
      t.true(flags.every((f) => (f & O_CLOEXEC) !== 0), `${what}: O_CLOEXEC (flags ${flags.map((f) => f.toString(8)).join(', ')})`);
    }
    const device = await daemonFdFlags(m.pid, '/dev/fuse');
    t.true(device.length >= 1 && device.every((f) => (f & O_CLOEXEC) !== 0), `/dev/fuse: O_CLOEXEC (flags ${device.map((f) => f.toString(8)).join(', ')})`);
  } finally {
    await Promise.all([created.close(), opened.close(), read.close()]);
  }
});

test('O_DIRECT: reads and writes of upper files and lower files succeed, with and without the fast path, passthrough files included', async (t) => {
  const lower = await sharedLower();
  const lowerObj = rel(lower.manifest.paths.dirObject);
  const sizes = (await check('find', [path.join(lower.root, 'nix/store', lowerObj), '-type', 'f', '-printf', '%s %P\n'])).trim().split('\n')
    .map((l) => ({ size: Number(l.slice(0, l.indexOf(' '))), name: l.slice(l.indexOf(' ') + 1) }));
  const small = sizes.find((f) => f.size > 0 && f.size < 128 * 1024);
  const big = sizes.find((f) => f.size >= 128 * 1024);
  t.truthy(small && big, 'the lower object has a small file and one read with passthrough');
  for (const extra of [[], ['--no-fast-path']]) {
    const m = await mountMerged(t, lower.root, { extra });
    const mode = extra.length ? 'JS' : 'fast path';
    const obj = path.join(m.store, '0000000000000000000000000000006a-fast-direct');
    await fs.promises.mkdir(obj);
    await fs.promises.writeFile(path.join(obj, 'file'), Buffer.alloc(64 * 1024, 7));
    const dd = (args: string[]): Promise<{ code: number; stderr: string }> => run('dd', [...args, 'bs=4096', 'status=none']);
    const results: Record<string, string> = {};
    const note = async (what: string, args: string[]): Promise<void> => {
      const r = await dd(args);
      results[what] = r.code === 0 ? 'ok' : r.stderr.trim();
    };
    await note('upper read', [`if=${path.join(obj, 'file')}`, 'of=/dev/null', 'iflag=direct']);
    await note('upper write (new file)', ['if=/dev/zero', `of=${path.join(obj, 'new')}`, 'count=4', 'oflag=direct']);
    await note('upper write (existing file)', ['if=/dev/zero', `of=${path.join(obj, 'file')}`, 'count=4', 'oflag=direct', 'conv=notrunc']);
    await note('lower read', [`if=${path.join(m.store, lowerObj, small!.name)}`, 'of=/dev/null', 'iflag=direct']);
    const p0 = n((await status(m.root)).fastPath, 'passthrough');
    await note('lower read (passthrough)', [`if=${path.join(m.store, lowerObj, big!.name)}`, 'of=/dev/null', 'iflag=direct']);
    t.is(n((await status(m.root)).fastPath, 'passthrough'), p0 + 1, `${mode}: the large lower file was opened with passthrough`);
    t.deepEqual(results, { 'upper read': 'ok', 'upper write (new file)': 'ok', 'upper write (existing file)': 'ok', 'lower read': 'ok', 'lower read (passthrough)': 'ok' }, mode);
    t.is((await fs.promises.stat(path.join(m.upper, path.basename(obj), 'new'))).size, 4 * 4096, `${mode}: the direct write is in the upper dir`);
    const got = await run('cmp', [path.join(m.store, lowerObj, big!.name), path.join(lower.root, 'nix/store', lowerObj, big!.name)]);
    t.is(got.code, 0, `${mode}: the passthrough file's bytes`);
  }
});

// Lists DIR part way (one getdents), removes every third name (through the mount), lets other
// listings run (`race`: one of DIR from the start; `evict`: one each of 64 other directories
// left open part way), then lists on. Prints what the first listing saw, as JSON.
const listingWhileChanged = `
import json, os, re, sys
d, how, n, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == 'top'
def name(i): return ('%032d-' % i if top else 'f%05d-' % i) + 'x' * (i * 7 % 150)
ours = re.compile(r'^[0-9]{32}-x*$' if top else r'^f[0-9]{5}-x*$')
created = {name(i) for i in range(n)}
a = os.scandir(d)
seen = [next(a).name for _ in range(50)]
held = []
if how == 'evict':
    for k in range(64):
        it = os.scandir(os.path.join(sys.argv[5], 'o%02d' % k)); next(it); held.append(it)
removed = {name(i) for i in range(0, n, 3)}
for x in removed: os.unlink(os.path.join(d, x))
if how == 'race':
    with os.scandir(d) as b: [e.name for e in b]
try:
    seen += [e.name for e in a]; err = None
except OSError as e:
    err = str(e)
seen = [x for x in seen if ours.match(x)]
throughout = created - removed
print(json.dumps({'error': err, 'missing': len(throughout - set(seen)), 'neverCreated': len([x for x in seen if x not in created]), 'duplicates': len(seen) - len(set(seen))}))
`;

/** Makes `obj`/d-others/o00..o63, each with more than one READDIR's worth of names (a listing of it stays kept). */
async function otherDirs(obj: string): Promise<string> {
  const others = Array.from({ length: 64 }, (_, k) => `o${String(k).padStart(2, '0')}`);
  await fs.promises.mkdir(obj);
  await check('sh', ['-c', `cd '${obj}' && mkdir -p d-others && cd d-others && for o in ${others.join(' ')}; do mkdir $o; (cd $o && touch $(seq -f 'entry-with-a-rather-long-name-%04g' 1 100)); done`]);
  return path.join(obj, 'd-others');
}

/**
 * Lists `dir` (3,000 names made here) 50 names in, removes every third name, then ('race') lists
 * it whole on another handle or ('evict') starts 64 other listings, and goes on: every name there
 * throughout must come once and no other.
 */
async function continuedListings(t: ExecutionContext, dir: string, others: string, top: boolean): Promise<void> {
  const names = Array.from({ length: 3000 }, (_, i) => (top ? String(i).padStart(32, '0') : `f${String(i).padStart(5, '0')}`) + `-${'x'.repeat(i * 7 % 150)}`);
  for (const how of ['race', 'evict']) {
    if (!top) await fs.promises.mkdir(dir);
    await check('sh', ['-c', 'cd "$1" && shift && touch "$@"', 'sh', dir, ...names]);
    const out = JSON.parse(await check('python3', ['-c', listingWhileChanged, dir, how, String(names.length), top ? 'top' : 'below', others])) as Record<string, unknown>;
    t.deepEqual(out, { error: null, missing: 0, neverCreated: 0, duplicates: 0 }, how);
    if (top) await check('sh', ['-c', 'cd "$1" && shift && rm -f "$@"', 'sh', dir, ...names]);
    else await fs.promises.rm(dir, { recursive: true });
  }
}

test('a listing continued after its directory changed and other listings ran gives every name there throughout, once (readdir offsets do not depend on the kept handle)', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const obj = path.join(m.store, '0000000000000000000000000000007a-fast-offsets');
  const others = await otherDirs(obj);
  await continuedListings(t, path.join(obj, 'd'), others, false);
});

test('the same for the store dir, whose listings JS serves', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const others = await otherDirs(path.join(m.store, '0000000000000000000000000000007b-js-offsets'));
  await continuedListings(t, m.store, others, true);
});

/**
 * A synthetic lower root (bench/synth.ts) of `n` registered paths, each with an object in the
 * lower store dir (an empty dir, or an empty file for a .drv), so that the store dir and the DB
 * agree.
 */
async function synthLower(dir: string, n: number): Promise<{ root: string; names: string[] }> {
  const root = path.join(await mirrorRoot(dir, n), 'root');
  const db = new Database(path.join(root, 'nix/var/nix/db/db.sqlite'), { readonly: true, fileMustExist: true });
  let names: string[];
  try {
    names = (db.prepare('SELECT path FROM ValidPaths').pluck().all() as string[]).map(rel);
  } finally {
    db.close();
  }
  const store = path.join(root, 'nix/store');
  for (const name of names) {
    if (name.endsWith('.drv')) fs.writeFileSync(path.join(store, name), '', { mode: 0o444 });
    else fs.mkdirSync(path.join(store, name), { mode: 0o555 });
  }
  return { root, names };
}

// The table holds a bounded number of lower objects (LO_MAX_LOWER_ENTRIES, 2^19), and forgets
// them all when one more comes. That used to free the chain entry the new one was then linked
// behind: heap corruption, and the daemon aborted ("malloc_consolidate(): unaligned fastbin
// chunk detected") during an `ls -l` of a lower store of a million paths. Here the bound is
// 200 (LOCAL_OVERLAY_TEST_FAST_LOWER_MAX) over 3,000 lower objects: the mount settles them all
// (15 times the bound), then every lookup of a forgotten one settles it again.
test('more lower objects than the fast path\'s table holds: it forgets them again and again, and the mount goes on answering', async (t) => {
  const dir = tempDir(t);
  const lower = await synthLower(dir, 3000);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), env: { LOCAL_OVERLAY_TEST_FAST_LOWER_MAX: '200' } });
  const expected = lower.names.slice().sort();
  for (let pass = 0; pass < 3; pass++) {
    // Every object looked up and, for a dir, listed; then the kernel forgets them, so that the
    // next pass asks the daemon again.
    const out = await check('find', [m.store, '-mindepth', '1', '-maxdepth', '2', '-printf', '%P\n']);
    t.deepEqual(out.trim().split('\n').sort(), expected, `pass ${pass}: every object listed, once`);
    await fs.promises.writeFile('/proc/sys/vm/drop_caches', '2');
  }
  const s = await status(m.root);
  t.true(s.fastPath?.on, 'the fast path is still on');
  t.true(n(s.fastPath, 'entries') <= 200 + 10, 'the table stays within its bound');
  t.true(n(s.fastPath, 'passed') > 0, 'forgotten objects were looked up through JS and settled again');
  t.notThrows(() => process.kill(m.pid, 0), 'the daemon is alive');
});
