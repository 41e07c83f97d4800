import test from 'ava';
import type { ExecutionContext } from 'ava';
import Database = require('better-sqlite3');
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cli, run } from '../helpers/exec';
import { freshLower, lowerAdd, sharedLower } from '../helpers/fixture';
import { Merged, mountMerged, tempDir } from '../helpers/mount';
import { derivation, nix, nixEnv, nixOk } from '../helpers/nix';
import { lowerRootDigest } from '../helpers/tree';

// The merged store's lifecycle with real Nix 2.8 as the actor: GC, delete, duplicates,
// optimise, verify, refresh. Every test checks that the lower root is byte-identical after.

const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');
const valid = async (m: Merged, p: string): Promise<boolean> => (await nix('nix-store', ['--store', m.root, '--check-validity', p])).code === 0;

async function build(m: Merged, name: string, inputs: Record<string, string>): Promise<string> {
  const drv = await derivation(m.dir, name, inputs, `echo ${Object.keys(inputs).map((a) => `\${${a}}`).join(' ')} > $out`);
  return (await nixOk('nix-build', ['--store', m.root, '--no-out-link', ...drv])).trim();
}

async function addText(m: Merged, dir: string, fileName: string, content: string): Promise<string> {
  const f = path.join(dir, fileName);
  await fs.promises.writeFile(f, content);
  return (await nixOk('nix-store', ['--store', m.root, '--add', f])).trim();
}

/** Every lower object is still visible and valid in the merged store. */
async function lowerIntact(t: ExecutionContext, m: Merged, paths: Record<string, string>): Promise<void> {
  for (const [role, q] of Object.entries(paths)) {
    t.true(fs.existsSync(path.join(m.store, rel(q))), `lower ${role} no longer visible`);
    t.true(await valid(m, q), `lower ${role} no longer valid`);
  }
}

async function noWhiteouts(t: ExecutionContext, upper: string): Promise<void> {
  for (const n of await fs.promises.readdir(upper)) {
    const st = await fs.promises.lstat(path.join(upper, n));
    t.false(n.startsWith('.wh.') || (st.isCharacterDevice() && st.rdev === 0), `whiteout ${n} in the upper dir`);
  }
}

/** Deletes path `p`'s row and its references from the merged DB `db`, as a crash or a hand edit leaves it. */
async function dropRow(t: ExecutionContext, db: string, p: string): Promise<void> {
  const del = await run('sqlite3', [db, `PRAGMA foreign_keys = OFF; DELETE FROM Refs WHERE referrer = (SELECT id FROM ValidPaths WHERE path = '${p}'); DELETE FROM ValidPaths WHERE path = '${p}';`]);
  t.is(del.code, 0, del.stderr);
}

/** Whether the mount's GC roots dir has a root for `p` (a symlink to the logical store path). */
const rooted = (m: Merged, p: string): boolean =>
  fs.lstatSync(path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store', rel(p)), { throwIfNoEntry: false })?.isSymbolicLink() === true;

async function eventually(f: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return f();
}

for (const gc of [['nix-collect-garbage'], ['nix-store', '--gc']] as const) {
  test(`GC with ${gc.join(' ')}: removes unrooted upper objects only; lower objects stay visible and valid`, async (t) => {
    const lower = await sharedLower();
    const before = await lowerRootDigest(lower.root);
    const m = await mountMerged(t, lower.root);
    const p = lower.manifest.paths;
    const out = await build(m, 'gc-victim', { app: p.appOut });
    const added = await addText(m, m.dir, 'gc-added.txt', `unrooted ${Date.now()}\n`);
    t.true(fs.existsSync(path.join(m.upper, rel(out))));

    const r = await nix(gc[0], ['--store', m.root, ...gc.slice(1)]);
    t.is(r.code, 0, r.stderr);
    for (const q of [out, added]) {
      t.false(fs.existsSync(path.join(m.upper, rel(q))), `${q} still in the upper dir`);
      t.false(await valid(m, q), `${q} still valid`);
    }
    await lowerIntact(t, m, p);
    await noWhiteouts(t, m.upper);
    t.is((await nix('nix-store', ['--store', m.root, '--verify'])).code, 0);
    await m.unmount();
    t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
  });
}

test('GC right after mount waits until the GC roots, written in the background, exist (Nix\'s GC lock held shared)', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  // The daemon starts writing the roots only once the test creates `gate`: a GC that did not
  // wait for them would find every lower object unrooted and try to delete it.
  const dir = tempDir(t);
  const gate = path.join(dir, 'roots-gate');
  const m = await mountMerged(t, lower.root, { dir, env: { LOCAL_OVERLAY_TEST_ROOTS_GATE: gate } });
  const s = JSON.parse((await cli(['status', m.root, '--json'])).stdout) as { gcRootsSyncing: boolean };
  t.true(s.gcRootsSyncing, 'roots still being written');
  const added = await addText(m, m.dir, 'gc-lock-added.txt', `unrooted ${Date.now()}\n`); // adds are not held up
  const gc = spawn('nix-collect-garbage', ['--store', m.root], { env: nixEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => { gc.kill('SIGKILL'); });
  let stderr = '';
  gc.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise<number | null>((resolve) => gc.on('close', resolve));
  t.true(await eventually(async () => /waiting for the big garbage collector lock/.test(stderr), 30_000), `the GC waits for the lock: ${stderr}`);
  t.is(gc.exitCode, null, 'and has not finished');
  await fs.promises.writeFile(gate, '');
  t.is(await exited, 0, stderr);
  t.false(await valid(m, added), 'the unrooted upper path was collected');
  await lowerIntact(t, m, lower.manifest.paths);
  t.true(fs.readdirSync(path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store')).length > 0, 'roots written');
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('remount: the GC roots sync is skipped while nothing it reads changed; a root removed by hand or a new lower path brings it back', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const rootsDir = path.join(dir, 'merged/nix/var/nix/gcroots/local-overlay-lower-store');
  const skipped = (): number => (fs.readFileSync(path.join(dir, 'merged/nix/var/log/local-overlay.log'), 'utf8').match(/gc roots: as the last sync left them/g) ?? []).length;
  const idle = async (m: Merged): Promise<boolean> => eventually(async () => !(JSON.parse((await cli(['status', m.root, '--json'])).stdout) as { gcRootsSyncing: boolean }).gcRootsSyncing);

  let m = await mountMerged(t, lower.root, { dir });
  t.true(await idle(m), 'first sync done');
  const first = fs.readdirSync(rootsDir).sort();
  t.true(first.length > 0);
  t.is(skipped(), 0, 'a first mount syncs');
  await m.unmount();

  m = await mountMerged(t, lower.root, { dir });
  t.true(await idle(m));
  t.is(skipped(), 1, 'a remount with nothing changed does not sync');
  t.deepEqual(fs.readdirSync(rootsDir).sort(), first);
  await m.unmount();

  fs.rmSync(path.join(rootsDir, first[0]));
  m = await mountMerged(t, lower.root, { dir });
  t.true(await idle(m));
  t.is(skipped(), 1, 'a root removed by hand makes the mount sync');
  t.deepEqual(fs.readdirSync(rootsDir).sort(), first, 'the removed root is back');
  await m.unmount();

  const added = await lowerAdd(lower.root, `roots-${Date.now()}`);
  m = await mountMerged(t, lower.root, { dir });
  t.true(await idle(m));
  t.is(skipped(), 1, 'a lower store that grew makes the mount sync');
  t.true(fs.readdirSync(rootsDir).includes(rel(added)), 'the new lower path is rooted');
  await m.unmount();
});

test('delete: a referenced upper path cannot be deleted until its referrer is gone', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const a = await addText(m, m.dir, 'referenced.txt', `referenced ${Date.now()}\n`);
  const b = await build(m, 'referrer', { a });
  const r1 = await nix('nix-store', ['--store', m.root, '--delete', a]);
  t.not(r1.code, 0);
  t.regex(r1.stderr, /Cannot delete path/i);
  t.true(await valid(m, a));
  // b and its .drv (which names a as an input) are a's referrers.
  const bDrv = (await nixOk('nix-store', ['--store', m.root, '--query', '--deriver', b])).trim();
  await nixOk('nix-store', ['--store', m.root, '--delete', b, bDrv]);
  await nixOk('nix-store', ['--store', m.root, '--delete', a]);
  t.false(await valid(m, a));
  t.false(fs.existsSync(path.join(m.upper, rel(a))));
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('delete: a lower-only path is refused, naming the lower store\'s GC root; it stays visible and valid', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths.appOut;
  const r = await nix('nix-store', ['--store', m.root, '--delete', p]);
  t.not(r.code, 0);
  t.regex(r.stderr, /Cannot delete path .* since it is still alive/i);
  const roots = await nixOk('nix-store', ['--store', m.root, '--query', '--roots', p]);
  t.regex(roots, /gcroots\/local-overlay-lower-store\//, 'the root that keeps it says the lower store keeps it');
  t.true(fs.existsSync(path.join(m.store, rel(p))));
  t.true(await valid(m, p));
  await noWhiteouts(t, m.upper);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('duplicates: deleting a path in both layers removes the upper copy; the lower copy shows and is valid again', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const name = `dup-${Date.now()}`;
  const p = await addText(m, dir, `lower-extra-${name}`, `${name}\n`);
  t.true(fs.existsSync(path.join(m.upper, rel(p))), 'first added to the merged store: upper');
  t.is(await lowerAdd(lower.root, name), p, 'then the lower store gains the same path');
  const lowerDigest = await lowerRootDigest(lower.root);

  const ex = JSON.parse((await cli(['explain', '--json', path.join(m.store, rel(p))])).stdout) as { paths: { reason: string }[] };
  t.is(ex.paths[0].reason, 'duplicate');
  await nixOk('nix-store', ['--store', m.root, '--delete', p]);
  t.false(fs.existsSync(path.join(m.upper, rel(p))), 'the upper copy is gone');
  t.is(await fs.promises.readFile(path.join(m.store, rel(p)), 'utf8'), `${name}\n`, 'the lower copy shows');
  t.true(await eventually(() => valid(m, p)), 'valid again in the merged DB within 5 s');
  await noWhiteouts(t, m.upper);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), lowerDigest, 'the lower root changed');
});

test('duplicates: a path the lower store gains while the mount\'s GC roots are still being written stays collectable', async (t) => {
  // The roots sync of the mount reads the lower DB in a worker. Rows the lower DB gained after
  // the mount's import belong to the follower, which knows what the upper layer has: the sync
  // must not root them (here: a path the upper layer already has, which would stay alive).
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const gate = path.join(dir, 'roots-gate');
  const m = await mountMerged(t, lower.root, { dir, env: { LOCAL_OVERLAY_TEST_ROOTS_GATE: gate } });
  type Status = { gcRootsSyncing: boolean; follower: { lowerMaxId: number } };
  const status = async (): Promise<Status> => JSON.parse((await cli(['status', m.root, '--json'])).stdout) as Status;
  const atMount = (await status()).follower.lowerMaxId;
  const name = `dup-syncing-${Date.now()}`;
  const p = await addText(m, dir, `lower-extra-${name}`, `${name}\n`);
  t.is(await lowerAdd(lower.root, name), p);
  t.true(await eventually(async () => (await status()).follower.lowerMaxId > atMount), 'the follower read the new lower row');
  t.true((await status()).gcRootsSyncing, 'the roots sync is still held back');
  await fs.promises.writeFile(gate, '');
  t.true(await eventually(async () => !(await status()).gcRootsSyncing, 30_000), 'the roots sync finished');
  const rootsDir = path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store');
  t.true(fs.readdirSync(rootsDir).length > 0, 'roots written');
  t.false(fs.readdirSync(rootsDir).includes(rel(p)), 'the duplicate is not rooted');
  await nixOk('nix-store', ['--store', m.root, '--delete', p]);
  t.false(fs.existsSync(path.join(m.upper, rel(p))), 'the upper copy is gone');
  t.true(await eventually(() => valid(m, p)), 'the lower copy is valid again within 5 s');
  t.true(await eventually(async () => fs.readdirSync(rootsDir).includes(rel(p))), 'and rooted, as a lower-only path');
  await m.unmount();
});

test('optimise: removes upper copies of objects the lower store has; the lower copy is served and stays valid', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const name = `opt-${Date.now()}`;
  const p = await addText(m, dir, `lower-extra-${name}`, `${name}\n`);
  await lowerAdd(lower.root, name);
  const lowerDigest = await lowerRootDigest(lower.root);

  const dry = await cli(['optimise', m.root, '--dry-run', '--json']);
  t.is(dry.code, 0, dry.stderr);
  const d = JSON.parse(dry.stdout) as { removed: number; duplicates: { path: string; bytes: number; skipped?: string }[] };
  t.deepEqual(d.duplicates.map((x) => [x.path, x.bytes, x.skipped]), [[p, name.length + 1, undefined]]);
  t.is(d.removed, 0);
  t.true(fs.existsSync(path.join(m.upper, rel(p))), 'dry run removed nothing');

  // While a GC holds Nix's GC lock, nothing is removed.
  const gc = spawn('flock', ['--exclusive', path.join(m.root, 'nix/var/nix/gc.lock'), 'sh', '-c', 'echo locked; read _'], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => { gc.kill('SIGKILL'); });
  await new Promise<void>((resolve) => gc.stdout.on('data', (d: Buffer) => { if (d.toString().includes('locked')) resolve(); }));
  const busy = await cli(['optimise', m.root, '--lock-timeout', '1']);
  t.is(busy.code, 1, busy.stdout + busy.stderr);
  t.regex(busy.stderr, /waiting for Nix's GC lock/);
  t.regex(busy.stdout, /removed 0 upper copies, 0 bytes freed; nothing removed: Nix's GC lock \(.*gc\.lock\) stayed taken for 1 s/);
  t.true(fs.existsSync(path.join(m.upper, rel(p))), 'kept while the lock is taken');
  gc.stdin.end();
  await new Promise((r) => gc.on('close', r));

  const real = await cli(['optimise', m.root, '--check-contents']);
  t.is(real.code, 0, real.stderr);
  t.regex(real.stdout, new RegExp(`removed 1 upper copy, ${name.length + 1} bytes freed`));
  t.false(fs.existsSync(path.join(m.upper, rel(p))));
  t.is(await fs.promises.readFile(path.join(m.store, rel(p)), 'utf8'), `${name}\n`);
  t.true(await valid(m, p));
  await nixOk('nix-store', ['--store', m.root, '--verify-path', p]);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), lowerDigest, 'the lower root changed');
});

test('optimise during a build that reads a duplicate: the build succeeds, the duplicate is kept and named; a run after the build removes it', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  // A directory object: the sandbox bind-mounts it (a single file would be linked or copied in).
  const src = path.join(dir, 'dup-src');
  await fs.promises.mkdir(path.join(src, 'lib'), { recursive: true });
  await fs.promises.writeFile(path.join(src, 'lib/x'), `in use ${Date.now()}\n`);
  const p = (await nixOk('nix-store', ['--store', m.root, '--add', src])).trim();
  t.is((await nixOk('nix-store', ['--store', lower.root, '--add', src])).trim(), p, 'the same path in the lower store: a duplicate');
  const lowerDigest = await lowerRootDigest(lower.root);

  // The builder reads the input until the test lets it end (a file in its build dir).
  const drv = await derivation(dir, 'dup-reader', { dup: p },
    'PATH=/usr/bin; echo reader-started; while [ ! -e go ]; do cat ${dup}/lib/x > /dev/null || { echo READ FAILED; exit 1; }; sleep 0.1; done; cat ${dup}/lib/x > $out');
  const env = nixEnv();
  const build = spawn('nix-build', ['--store', m.root, '--no-out-link', '--option', 'sandbox-paths', '/bin/sh=/bin/sh /lib /lib64 /usr/lib /usr/bin', ...drv],
    { env, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { build.kill('SIGKILL'); });
  let out = '';
  build.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const ended = new Promise<number | null>((resolve) => build.on('close', resolve));
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the build did not start: ${log}`)), 120_000);
    build.stderr.on('data', (d: Buffer) => {
      log += d.toString();
      if (log.includes('reader-started')) { clearTimeout(timer); resolve(); }
    });
    void ended.then(() => { clearTimeout(timer); reject(new Error(`the build ended before it started reading: ${log}`)); });
  });

  // Both runs while the builder reads; what they did is checked once the build has ended.
  const dry = await cli(['optimise', m.root, '--dry-run']);
  const r = await cli(['optimise', m.root, '--json']);
  const upperKept = fs.existsSync(path.join(m.upper, rel(p)));
  const tmp = env.TMPDIR ?? '';
  const buildDir = (await fs.promises.readdir(tmp)).find((n) => n.startsWith('nix-build-dup-reader.drv-'));
  t.truthy(buildDir, 'the build dir');
  await fs.promises.writeFile(path.join(tmp, buildDir ?? 'none', 'go'), '');
  t.is(await ended, 0, log);
  t.false(log.includes('READ FAILED'), log);
  t.is(await fs.promises.readFile(path.join(m.store, rel(out.trim())), 'utf8'), await fs.promises.readFile(path.join(src, 'lib/x'), 'utf8'));

  t.is(dry.code, 0, dry.stderr);
  t.regex(dry.stdout, new RegExp(`would keep +${p} \\(\\d+ bytes\\): in use by running Nix processes \\(temp roots, pid \\d+: /nix/store/\\w+-dup-reader\\.drv`));
  t.is(r.code, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as { gcLock: string; removed: number; inUse: number; duplicates: { path: string; removed: boolean; skipped?: string; inUse?: { pid: number | null; path: string }[] }[] };
  t.is(rep.gcLock, 'exclusive');
  t.is(rep.removed, 0);
  t.is(rep.inUse, 1);
  t.deepEqual(rep.duplicates.map((d) => [d.path, d.removed]), [[p, false]]);
  t.regex(rep.duplicates[0]?.skipped ?? '', /in use by running Nix processes/);
  t.true((rep.duplicates[0]?.inUse ?? []).some((u) => u.pid !== null && u.path.endsWith('-dup-reader.drv')), 'the .drv being built keeps it (its source)');
  t.true(upperKept, 'the upper copy was kept while the build ran');

  const after = await cli(['optimise', m.root]);
  t.is(after.code, 0, after.stderr);
  t.regex(after.stdout, new RegExp(`removed ${p} `));
  t.false(fs.existsSync(path.join(m.upper, rel(p))), 'removed once the build has ended');
  t.is(await fs.promises.readFile(path.join(m.store, rel(p), 'lib/x'), 'utf8'), await fs.promises.readFile(path.join(src, 'lib/x'), 'utf8'), 'the lower copy is served');
  t.true(await valid(m, p));
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), lowerDigest, 'the lower root changed');
});

test('nix-store --optimise on the merged root works on upper objects only, and runs through when an upper file equals one deep in a lower object', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const same = `same content ${Date.now()}\n`;
  const a = await addText(m, m.dir, 'opt-a.txt', same);
  const b = await addText(m, m.dir, 'opt-b.txt', same);
  const r = await nix('nix-store', ['--store', m.root, '--optimise']);
  t.is(r.code, 0, r.stderr);
  const sa = await fs.promises.stat(path.join(m.upper, rel(a)));
  const sb = await fs.promises.stat(path.join(m.upper, rel(b)));
  t.is(sa.ino, sb.ino, 'identical upper files were hard-linked');
  for (const q of Object.values(lower.manifest.paths)) t.true(await valid(m, q));
  // An upper file with the contents of a file deep in a lower object: once .links has it, the
  // optimiser makes that lower file's directory writable to replace the file.
  const tree = path.join(m.dir, 'opt-tree');
  await fs.promises.mkdir(tree);
  await fs.promises.copyFile(path.join(m.lowerStore, rel(lower.manifest.paths.dirObject), 'share/doc/sample/notes.txt'), path.join(tree, 'notes.txt'));
  await nixOk('nix-store', ['--store', m.root, '--add', tree]);
  for (const run of [1, 2]) {
    const again = await nix('nix-store', ['--store', m.root, '--optimise']);
    t.is(again.code, 0, `run ${run}: ${again.stderr}`);
  }
  t.is((await fs.promises.stat(path.join(m.lowerStore, rel(lower.manifest.paths.dirObject), 'share/doc/sample'))).mode & 0o777, 0o555, 'the lower dir is as it was');
  t.is((await nix('nix-store', ['--store', m.root, '--verify', '--check-contents'])).code, 0);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('verify: finds rows without objects, duplicates and whiteouts hiding valid objects; --repair fixes them', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  let m = await mountMerged(t, lower.root, { dir });
  const gone = await addText(m, dir, 'vanishing.txt', `vanishing ${Date.now()}\n`);
  const name = `vdup-${Date.now()}`;
  const dup = await addText(m, dir, `lower-extra-${name}`, `${name}\n`);
  await lowerAdd(lower.root, name);
  await m.unmount();
  const lowerDigest = await lowerRootDigest(lower.root);
  // Damage the upper layer behind the mount's back.
  fs.rmSync(path.join(m.upper, rel(gone)), { force: true });
  const hidden = lower.manifest.paths.dirObject;
  fs.writeFileSync(path.join(m.upper, `.wh.${rel(hidden)}`), '');
  // An upper row that disagrees with the lower DB about a lower-only object.
  const differs = lower.manifest.paths.singleFile;
  await run('sqlite3', [path.join(m.root, 'nix/var/nix/db/db.sqlite'), `UPDATE ValidPaths SET narSize = 1 WHERE path = '${differs}'`]);

  const r = await cli(['verify', m.root, '--json']);
  t.is(r.code, 1, 'problems found: exit 1');
  const rep = JSON.parse(r.stdout) as { problems: { kind: string; path: string }[] };
  const kinds = rep.problems.map((p) => `${p.kind} ${p.path}`).sort();
  t.deepEqual(kinds, [`duplicate ${dup}`, `row-without-object ${gone}`, `whiteout-hides-valid ${hidden}`, `row-differs ${differs}`].sort());

  const fix = await cli(['verify', m.root, '--repair']);
  t.is(fix.code, 0, fix.stdout + fix.stderr);
  const again = await cli(['verify', m.root, '--json']);
  t.is(again.code, 0, again.stdout);
  m = await mountMerged(t, lower.root, { dir });
  t.true(fs.existsSync(path.join(m.store, rel(hidden))), 'the whiteout is gone');
  t.false(await valid(m, gone));
  t.true(await valid(m, dup));
  await nixOk('nix-store', ['--store', m.root, '--verify-path', differs]);
  t.is(JSON.parse(await nixOk('nix', ['path-info', '--store', m.root, '--json', differs]))[0].narSize, 176, 'the row was restored from the lower DB');
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), lowerDigest, 'the lower root changed');
});

test('verify --repair drops the rows of a lower chain its GC deleted in one run, but those a merged path built on them still refers to', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const p = lower.manifest.paths;
  const u = (await nixOk('nix-build', ['--store', m.root, '--no-out-link', ...await derivation(dir, 'on-lib', { lib: p.libOut }, 'echo ${lib} > $out')])).trim();
  // The lower store's own GC, with its roots gone: every lower path is deleted.
  fs.rmSync(path.join(lower.root, 'nix/var/nix/gcroots/lower'), { recursive: true, force: true });
  const gc = await nix('nix-collect-garbage', ['--store', lower.root]);
  t.is(gc.code, 0, gc.stderr);
  t.false(fs.existsSync(path.join(lower.root, 'nix/store', rel(p.libOut))));
  const libClosure = (await nixOk('nix-store', ['--store', m.root, '--query', '--requisites', p.libOut])).trim().split('\n').sort();

  const gone = async (): Promise<string[]> => {
    const r = await cli(['verify', m.root, '--json']);
    return (JSON.parse(r.stdout) as { problems: { kind: string; path: string }[] }).problems.filter((q) => q.kind === 'row-without-object').map((q) => q.path).sort();
  };
  const first = await cli(['verify', m.root, '--repair']);
  t.is(first.code, 1, first.stdout);
  t.regex(first.stdout, new RegExp(`problem +row-without-object +${p.libOut}: .*\\(not dropped: 2 valid paths that stay refer to it. Delete those`), 'the merged path and its derivation');
  t.deepEqual(await gone(), libClosure, 'one run dropped every row but those of the closure the merged path refers to');

  // Delete what refers to them (the merged path and its derivation), then repair again.
  const referrers = (await nixOk('nix-store', ['--store', m.root, '--query', '--referrers-closure', p.libOut])).trim().split('\n').filter((q) => !libClosure.includes(q));
  t.true(referrers.includes(u));
  await nixOk('nix-store', ['--store', m.root, '--delete', ...referrers]);
  const second = await cli(['verify', m.root, '--repair']);
  t.is(second.code, 0, second.stdout);
  t.deepEqual(await gone(), []);
  t.is((await nix('nix-store', ['--store', m.root, '--verify'])).code, 0);
});

test('Nix verify on a lazy merged root: damage to used lower paths is reported, unused lower paths are not', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir, metadata: 'lazy' });
  const p = lower.manifest.paths;
  await fs.promises.lstat(path.join(m.store, rel(p.appOut))); // the merged store uses appOut's closure
  t.true(await valid(m, p.libOut));
  // Damage the lower store (a private copy): a used file truncated, a used input deleted,
  // and an unused path corrupted.
  const libFile = (await fs.promises.readdir(path.join(lower.root, 'nix/store', rel(p.libOut)), { recursive: true }))
    .map((f) => path.join(lower.root, 'nix/store', rel(p.libOut), String(f))).find((f) => fs.statSync(f).isFile() && fs.statSync(f).size > 0) as string;
  fs.chmodSync(path.dirname(libFile), 0o755);
  fs.chmodSync(libFile, 0o644);
  fs.truncateSync(libFile, 0);
  fs.rmSync(path.join(lower.root, 'nix/store', rel(p.textFile)), { force: true });
  const unused = path.join(lower.root, 'nix/store', rel(p.singleFile));
  t.false(await valid(m, p.dirObject), 'dirObject is not used by the merged store');
  const dirFile = path.join(lower.root, 'nix/store', rel(p.dirObject), 'share/data/numbers.txt');
  fs.chmodSync(path.dirname(dirFile), 0o755);
  fs.chmodSync(dirFile, 0o644);
  fs.truncateSync(dirFile, 1);
  t.truthy(unused);

  const r = await nix('nix-store', ['--store', m.root, '--verify', '--check-contents']);
  t.regex(r.stderr, new RegExp(`path '${p.libOut}' was modified`));
  t.regex(r.stderr, new RegExp(`${p.textFile}.* disappeared`));
  t.notRegex(r.stderr, new RegExp(rel(p.dirObject)), 'an unused lower path was reported');
});

test('refresh: a path just added to the lower store is valid in the merged DB once refresh returns (mirror mode)', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // The follower looks once a minute here: what refresh does must be enough by itself.
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '60000'] });
  const added = await lowerAdd(lower.root, 'refresh-late');
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  const v = await nix('nix-store', ['--store', m.root, '--check-validity', added]);
  t.is(v.code, 0, `valid right after refresh: ${v.stderr}`);
  t.true((await fs.promises.readdir(m.store)).includes(rel(added)), 'and listed');
});

test('refresh: while a Nix process holds the merged DB\'s write lock, refresh waits for it and then imports', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '60000'] });
  const added = await lowerAdd(lower.root, 'refresh-locked');
  // The merged DB lives beside the mount, not in it: this process may open it.
  const nixSide = new Database(path.join(m.root, 'nix/var/nix/db/db.sqlite'));
  t.teardown(() => nixSide.close());
  nixSide.exec('BEGIN IMMEDIATE');
  const refreshed = cli(['refresh', m.root]);
  await new Promise((r) => setTimeout(r, 1500));
  nixSide.exec('COMMIT');
  const r = await refreshed;
  t.is(r.code, 0, r.stderr);
  const v = await nix('nix-store', ['--store', m.root, '--check-validity', added]);
  t.is(v.code, 0, `valid right after refresh: ${v.stderr}`);
});

test('refresh: after the upper dir is changed outside the mount, refresh makes the mount see it', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const name = '0000000000000000000000000000000z-outside-edit';
  await fs.promises.writeFile(path.join(m.upper, name), 'written beside the mount\n');
  t.false((await fs.promises.readdir(m.store)).includes(name), 'not seen before refresh');
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  t.true((await fs.promises.readdir(m.store)).includes(name), 'seen after refresh');
  t.is(await fs.promises.readFile(path.join(m.store, name), 'utf8'), 'written beside the mount\n');
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('lower growth during a GC: new lower paths wait, unseen, until the GC ends, then are imported, rooted and shown', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '100'] });
  // A GC in progress holds Nix's GC lock exclusively (and has read its roots already).
  const gc = spawn('flock', ['--exclusive', path.join(m.root, 'nix/var/nix/gc.lock'), 'sh', '-c', 'echo locked; read _'], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => { gc.kill('SIGKILL'); });
  await new Promise<void>((resolve) => gc.stdout.on('data', (d: Buffer) => { if (d.toString().includes('locked')) resolve(); }));
  const added = await lowerAdd(lower.root, `during-gc-${Date.now()}`);
  await new Promise((r) => setTimeout(r, 1000)); // ten follower ticks
  t.false(await valid(m, added), 'not imported while a GC runs (its roots could not cover it)');
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, rel(added))), { code: 'ENOENT' }, 'and not shown: a GC would take it for invalid and try to delete it');
  const st = await cli(['status', m.root]);
  t.regex(st.stdout, /new lower paths wait for a garbage collection, for \d+\.\d s now/, st.stdout);
  // refresh waits for the GC (up to 10 s), then imports.
  const refreshed = cli(['refresh', m.root]);
  await new Promise((r) => setTimeout(r, 1500));
  t.false(await valid(m, added), 'not imported while the GC still runs');
  gc.stdin.end();
  const r = await refreshed;
  t.is(r.code, 0, `refresh waited for the GC: ${r.stdout}${r.stderr}`);
  t.true(await valid(m, added), 'imported once refresh returns');
  t.true(rooted(m, added), 'and rooted');
  t.true(await eventually(async () => fs.promises.lstat(path.join(m.store, rel(added))).then(() => true, () => false)), 'and shown');
});

test('GCs while the lower store grows: every GC succeeds and every new lower path stays valid', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '100'] });
  const added: string[] = [];
  const growing = (async () => { for (let i = 0; i < 12; i++) added.push(await lowerAdd(lower.root, `gc-race-${i}-${Date.now()}`)); })();
  const failures: string[] = [];
  let gcs = 0;
  for (let done = false; !done;) {
    done = await Promise.race([growing.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 0))]);
    const r = await nix('nix-collect-garbage', ['--store', m.root]);
    gcs++;
    if (r.code !== 0) failures.push(r.stderr.trim().split('\n').pop() ?? '');
  }
  t.deepEqual(failures, [], `GCs that failed, of ${gcs}`);
  for (const p of added) t.true(await eventually(() => valid(m, p)), `${p} valid`);
});

test('a new lower path looked up before the follower imports it: not shown until imported, then rooted (a GC keeps it)', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // A slow follower: the lookup comes first.
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '60000'] });
  const added = await lowerAdd(lower.root, `looked-up-first-${Date.now()}`);
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, rel(added))), { code: 'ENOENT' }, 'not in the merged DB yet: not shown');
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  t.true(await valid(m, added), 'imported by refresh');
  t.true(rooted(m, added), 'and rooted');
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.true(await valid(m, added), 'still valid after a GC');
  t.true(await eventually(async () => fs.promises.lstat(path.join(m.store, rel(added))).then(() => true, () => false), 3000), 'and shown');
});

test('a new lower path looked up (and missed) before its import is shown as soon as Nix finds it valid, not after the kernel\'s negative entry expires', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // A slow follower (the miss comes first) and a long negative timeout (the kernel keeps the miss).
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm'), extra: ['--follow-interval', '60000', '--negative-timeout', '60'] });
  const name = `missed-then-imported-${Date.now()}`;
  const added = await lowerAdd(lower.root, name);
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, rel(added))), { code: 'ENOENT' }, 'not in the merged DB yet: not shown');
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  t.true(await valid(m, added), 'imported by refresh');
  // What a farm's next build does with it: Nix finds it valid, then reads it through the mount.
  const read = await nix('nix-instantiate', ['--store', m.root, '--eval', '--json', '-E', `builtins.readFile (builtins.storePath "${added}")`]);
  t.is(read.code, 0, read.stderr);
  t.is(read.stdout.trim(), JSON.stringify(`${name}\n`));
  await t.notThrowsAsync(fs.promises.lstat(path.join(m.store, rel(added))), 'valid, so shown');
});

test('mount: an upper copy the merged DB does not list of a lower object is dropped (a deletion cut short); other such upper objects are named', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  let m = await mountMerged(t, lower.root, { dir });
  const stray = await addText(m, dir, 'stray.txt', `stray ${Date.now()}\n`);
  await m.unmount();
  // What a crash leaves: Nix deleted the row of a duplicate, then part of its upper copy...
  const dup = lower.manifest.paths.dirObject;
  const cp = await run('cp', ['-a', path.join(lower.root, dup), path.join(m.upper, rel(dup))]);
  t.is(cp.code, 0, cp.stderr);
  await run('chmod', ['-R', 'u+w', path.join(m.upper, rel(dup))]);
  fs.rmSync(path.join(m.upper, rel(dup), 'README.md'));
  // ...and an upper path whose registration never happened.
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  for (const p of [dup, stray]) {
    await dropRow(t, db, p);
  }
  m = await mountMerged(t, lower.root, { dir });
  t.false(fs.existsSync(path.join(m.upper, rel(dup))), 'the half-deleted upper copy is gone');
  t.true(fs.existsSync(path.join(m.store, rel(dup), 'README.md')), 'the lower copy shows');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', dup]);
  t.regex(m.mountStderr, new RegExp(`warning: 1 upper store object has no row in the merged DB .*${rel(stray)}`));
  const v = await cli(['verify', m.root, '--json']);
  const kinds = (JSON.parse(v.stdout) as { problems: { kind: string; path: string }[] }).problems.map((p) => `${p.kind} ${p.path}`);
  t.deepEqual(kinds, [`object-without-row ${stray}`]);
});

test('verify --repair copies back a lower row the merged DB lost, and roots it: a GC keeps it', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  let m = await mountMerged(t, lower.root, { dir });
  await m.unmount();
  const top = lower.manifest.paths.appOut; // no lower path refers to it: it has a root of its own
  t.true(rooted(m, top), 'rooted by the mount');
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  await dropRow(t, db, top);
  fs.rmSync(path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store', rel(top)));
  const fix = await cli(['verify', m.root, '--repair', '--json']);
  t.true((JSON.parse(fix.stdout) as { problems: { kind: string; path: string; repaired: boolean }[] }).problems
    .some((p) => p.kind === 'missing-row' && p.path === top && p.repaired), fix.stdout + fix.stderr);
  t.true(rooted(m, top), 'rooted again by the repair');
  // A mount whose GC-roots stamp still matches would not sync them: the repair must root it itself.
  m = await mountMerged(t, lower.root, { dir });
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.true(await valid(m, top), 'still valid after a GC');
});

test('the lower store\'s GC deletes a top: the mount roots what it kept alive, so a merged GC after verify --repair keeps those lower paths valid', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const { appOut, libOut } = lower.manifest.paths;
  t.true(await eventually(async () => rooted(m, appOut)), 'the top is rooted (in the background)');
  t.false(rooted(m, libOut), 'what it refers to is not: the top keeps it alive');
  // The lower store's own GC: appOut loses its root there and goes; libOut keeps its own.
  fs.rmSync(path.join(lower.root, 'nix/var/nix/gcroots/lower/appOut'));
  const lowerGc = await nix('nix-collect-garbage', ['--store', lower.root]);
  t.is(lowerGc.code, 0, lowerGc.stderr);
  t.false(fs.existsSync(path.join(lower.root, appOut)), 'the lower GC deleted the top');
  t.true(await eventually(async () => rooted(m, libOut) && !rooted(m, appOut), 10_000), 'the mount rooted the new top and dropped the dead root');

  const fix = await cli(['verify', m.root, '--repair', '--json']);
  t.true((JSON.parse(fix.stdout) as { problems: { kind: string; path: string; repaired: boolean }[] }).problems
    .some((p) => p.kind === 'row-without-object' && p.path === appOut && p.repaired), fix.stdout + fix.stderr);
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.true(await valid(m, libOut), 'libOut, still in the lower store, is still valid in the merged root');
  t.true(fs.existsSync(path.join(m.store, rel(libOut))), 'and shown');
});

test('the lower store\'s GC is noticed when a merged add reads the lower DB before the follower looks: the mount roots what the deleted top kept alive', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // A follower interval long enough that the add below always comes before its next look.
  const m = await mountMerged(t, lower.root, { dir, extra: ['--follow-interval', '4000'] });
  const { appOut, libOut } = lower.manifest.paths;
  t.true(await eventually(async () => rooted(m, appOut)), 'the top is rooted (in the background)');
  fs.rmSync(path.join(lower.root, 'nix/var/nix/gcroots/lower/appOut'));
  const lowerGc = await nix('nix-collect-garbage', ['--store', lower.root]);
  t.is(lowerGc.code, 0, lowerGc.stderr);
  // An upper add looks the new name up in the lower DB (upperAdded): that read reopens its snapshot.
  await addText(m, m.dir, 'after-lower-gc.txt', `added ${Date.now()}\n`);
  t.true(await eventually(async () => rooted(m, libOut) && !rooted(m, appOut), 12_000), 'the mount rooted the new top and dropped the dead root');
  const fix = await cli(['verify', m.root, '--repair']);
  t.is(fix.code, 0, fix.stdout + fix.stderr);
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.true(await valid(m, libOut), 'libOut, still in the lower store, is still valid in the merged root');
});

test('a deletion of an object in both layers that did not finish (the client killed half way): the mount restores the row and sets the partial upper copy aside', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const tree = path.join(dir, 'both-tree');
  fs.mkdirSync(tree);
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(tree, `f${i}`), `file ${i} ${Date.now()}\n`);
  const p = (await nixOk('nix-store', ['--store', m.root, '--add', tree])).trim();
  t.is((await nixOk('nix-store', ['--store', lower.root, '--add', tree])).trim(), p, 'the same path in both layers');
  const refreshed = await cli(['refresh', m.root]); // the follower has seen the lower path: a duplicate now
  t.is(refreshed.code, 0, refreshed.stderr);
  const upperCopy = path.join(m.upper, rel(p));
  t.true(fs.existsSync(upperCopy));
  // What `nix-store --delete` killed half way leaves: under Nix's GC lock, held exclusively
  // throughout, the row deleted (its first step), then part of the files, made writable first,
  // through the mount.
  const gcLock = spawn('flock', ['-o', '-x', path.join(m.root, 'nix/var/nix/gc.lock'), 'sleep', '600'], { stdio: 'ignore', detached: true });
  const dies = (): void => { try { process.kill(-gcLock.pid!, 'SIGKILL'); } catch { /* gone */ } }; // flock and its sleep
  t.teardown(dies);
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  const del = await run('sqlite3', [db, `DELETE FROM ValidPaths WHERE path = '${p}';`]);
  t.is(del.code, 0, del.stderr);
  const obj = path.join(m.store, rel(p));
  t.is((await run('sh', ['-c', 'chmod u+w "$1" && rm "$1"/f1 "$1"/f2 "$1"/f3', 'sh', obj])).code, 0);
  await new Promise((r) => setTimeout(r, 3000)); // past a check of the daemon's
  t.false(await valid(m, p), 'left alone while the GC lock is held: a deletion may be under way');
  t.true(fs.existsSync(upperCopy));
  dies(); // the client dies: its lock goes with it

  t.true(await eventually(() => valid(m, p), 10_000), 'the row is back');
  t.false(fs.existsSync(upperCopy), 'the partial upper copy is set aside');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', p]);
  t.true(fs.existsSync(path.join(obj, 'f1')), 'the lower copy shows, whole');
});

test('verify --repair of a lost lower row removes the rowless upper leftover of that path first', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  let m = await mountMerged(t, lower.root, { dir });
  await m.unmount();
  const top = lower.manifest.paths.appOut;
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  await dropRow(t, db, top);
  // What an add of the same path that did not finish leaves: part of the object, no row.
  const leftover = path.join(m.upper, rel(top));
  t.is((await run('cp', ['-a', path.join(lower.root, top), leftover])).code, 0);
  t.is((await run('sh', ['-c', 'chmod -R u+w "$1" && find "$1" -type f | head -1 | xargs truncate -s 1', 'sh', leftover])).code, 0);

  const fix = await cli(['verify', m.root, '--repair', '--json']);
  t.is(fix.code, 0, fix.stderr + fix.stdout);
  const problems = (JSON.parse(fix.stdout) as { problems: { kind: string; path: string; repaired: boolean }[] }).problems;
  t.true(problems.some((p) => p.kind === 'missing-row' && p.path === top && p.repaired), fix.stdout);
  t.true(problems.some((p) => p.kind === 'object-without-row' && p.path === top && p.repaired), fix.stdout);
  t.false(fs.existsSync(leftover), 'the leftover is gone from the upper dir');
  m = await mountMerged(t, lower.root, { dir });
  await nixOk('nix-store', ['--store', m.root, '--verify-path', top]);
});

test('verify --repair on a mounted root has the daemon copy a lost lower row, and root it', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const top = lower.manifest.paths.appOut;
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  // Under the running daemon: a mount would import the row back.
  await dropRow(t, db, top);
  t.true(await eventually(async () => rooted(m, top)), 'rooted by the mount (in the background)');
  fs.rmSync(path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store', rel(top)), { force: true });
  const fix = await cli(['verify', m.root, '--repair', '--json']);
  t.is(fix.code, 0, fix.stderr + fix.stdout);
  t.true((JSON.parse(fix.stdout) as { problems: { kind: string; path: string; repaired: boolean }[] }).problems
    .some((p) => p.kind === 'missing-row' && p.path === top && p.repaired), fix.stdout);
  await nixOk('nix-store', ['--store', m.root, '--verify-path', top]);
  const end = Date.now() + 5000; // the daemon roots in the background (rootsDo)
  while (!rooted(m, top) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.true(rooted(m, top), 'rooted by the daemon');
});

test('an unmounted root stops Nix: verify there drops no row, a build writes nothing; mount takes back a root Nix left an empty .links in', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const added = await addText(m, m.dir, 'kept.txt', 'kept while unmounted\n');
  await m.unmount();
  const rows = (): number => {
    const db = new Database(path.join(m.root, 'nix/var/nix/db/db.sqlite'), { readonly: true });
    try { return (db.prepare('SELECT count(*) AS n FROM ValidPaths').get() as { n: number }).n; } finally { db.close(); }
  };
  const before = rows();
  const verify = await nix('nix-store', ['--store', m.root, '--verify']);
  t.not(verify.code, 0, 'Nix refuses the unmounted root');
  t.regex(verify.stderr, /nix\/store\/\.links' is not a directory/);
  t.is(rows(), before, 'no row dropped');
  const drv = await derivation(m.dir, 'while-unmounted', {}, 'echo x > $out');
  t.not((await nix('nix-build', ['--store', m.root, '--no-out-link', ...drv])).code, 0, 'no build either');
  t.deepEqual(await fs.promises.readdir(m.store), ['.links'], 'only the guard is in the mount point');
  t.regex(await fs.promises.readFile(path.join(m.store, '.links'), 'utf8'), /not mounted[^]*Mount it: local-overlay mount --lower /);

  // A root unmounted by an earlier version has no guard, and Nix made .links a dir there.
  await fs.promises.rm(path.join(m.store, '.links'));
  await fs.promises.mkdir(path.join(m.store, '.links'));
  const again = await mountMerged(t, lower.root, { dir: m.dir });
  t.true(await valid(again, added), 'the row and the object are still there');
  await again.unmount();
  t.true((await fs.promises.lstat(path.join(m.store, '.links'))).isFile(), 'the guard replaced the dir');

  // Anything else Nix left there is not taken for nothing.
  await fs.promises.writeFile(path.join(m.store, 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-stray'), 'x');
  const refused = await cli(['mount', '--lower', lower.root, '--upper', again.upper, '--root', m.root, '--work', again.work]);
  t.is(refused.code, 2, refused.stderr);
  t.regex(refused.stderr, /not empty \(aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-stray\): if Nix wrote them while the root was not mounted/);
});

test('a duplicate whose upper copy is damaged (the lower copy matches the row): optimise --check-contents would remove it; verify --check-contents --repair does, and counts the contents-differ repaired', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const name = `damaged-${Date.now()}`;
  const p = await addText(m, dir, `lower-extra-${name}`, `${name}\n`);
  await lowerAdd(lower.root, name);
  // As an add that did not finish, or a hand edit, leaves it: the merged row is the lower copy's.
  const copy = path.join(m.upper, rel(p));
  await fs.promises.chmod(copy, 0o644);
  await fs.promises.writeFile(copy, 'half\n');
  await fs.promises.chmod(copy, 0o444);
  t.not((await nix('nix-store', ['--store', m.root, '--verify-path', p])).code, 0, 'served damaged');

  const dry = await cli(['optimise', m.root, '--check-contents', '--dry-run']);
  t.is(dry.code, 0, dry.stderr);
  t.regex(dry.stdout, new RegExp(`would remove ${p} \\(5 bytes\\): the upper copy was damaged`));
  // verify --check-contents --repair runs optimise so.
  const repair = await cli(['verify', m.root, '--check-contents', '--repair']);
  t.is(repair.code, 0, repair.stdout + repair.stderr);
  t.regex(repair.stdout, new RegExp(`repaired contents-differ +${p}`));
  t.regex(repair.stdout, new RegExp(`repaired duplicate +${p}: .*the upper copy is damaged`));
  t.false(fs.existsSync(copy), 'verify --repair removed the damaged copy');
  t.is(await fs.promises.readFile(path.join(m.store, rel(p)), 'utf8'), `${name}\n`, 'the lower copy is served');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', p]);
});

test('a mount point that cannot take the guard (immutable) still mounts; it warns only when Nix\'s .links dir is in the way, else Nix refuses the root anyway', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  await m.unmount();
  t.teardown(async () => { await run('chattr', ['-i', m.store]); });
  for (const nixLinks of [true, false]) {
    await run('chattr', ['-i', m.store]);
    await fs.promises.rm(path.join(m.store, '.links'), { recursive: true, force: true });
    if (nixLinks) await fs.promises.mkdir(path.join(m.store, '.links')); // an earlier version's root
    const immutable = await run('chattr', ['+i', m.store]);
    t.is(immutable.code, 0, `this test needs chattr +i on ${m.store} (e2fsprogs, a filesystem that takes it): ${immutable.stderr}`);
    t.not((await run('touch', [path.join(m.store, 'x')])).code, 0, 'chattr +i makes the mount point take no file');
    const again = await mountMerged(t, lower.root, { dir: m.dir });
    const warned = /warning: could not put the guard in .*nix\/store .*which holds a \.links dir: while this root is not mounted, Nix would take its store for empty/;
    if (nixLinks) t.regex(again.mountStderr, warned);
    else t.notRegex(again.mountStderr, /could not put the guard/);
    t.true(await valid(again, lower.manifest.paths.appOut), 'and serves');
    await again.unmount();
    if (!nixLinks) {
      const verify = await nix('nix-store', ['--store', m.root, '--verify']);
      t.not(verify.code, 0, 'Nix refuses the unmounted root without the guard too');
      t.regex(verify.stderr, /creating directory '.*nix\/store\/\.links': Operation not permitted/);
    }
  }
});

test('sync of a lost lower row roots the rows it copied, not a merged client\'s own path registered while the copy ran', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const own = await addText(m, m.dir, 'own.txt', `upper only ${Date.now()}\n`);
  const top = lower.manifest.paths.appOut;
  const synced = Date.now() + 10_000; // the mount's roots sync runs in the background
  while (!rooted(m, top) && Date.now() < synced) await new Promise((r) => setTimeout(r, 100));
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  await dropRow(t, db, top);
  fs.rmSync(path.join(m.root, 'nix/var/nix/gcroots/local-overlay-lower-store', rel(top)), { force: true });
  // A merged-store client that registers its own path (a new row id) while the sync waits for
  // the DB's write lock: it holds the lock, the sync starts, then the client commits.
  const client = spawn('sqlite3', [db], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { try { client.kill('SIGKILL'); } catch { /* gone */ } });
  const locked = new Promise<void>((res) => client.stdout.on('data', (d: Buffer) => { if (d.toString().includes('locked')) res(); }));
  client.stdin.write(`PRAGMA busy_timeout = 10000; BEGIN IMMEDIATE;
CREATE TEMP TABLE t AS SELECT * FROM ValidPaths WHERE path = '${own}';
DELETE FROM ValidPaths WHERE path = '${own}';
INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) SELECT path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca FROM t;
SELECT 'locked';
`);
  await locked;
  const sync = cli(['sync', '--root', m.root, top]);
  await new Promise((r) => setTimeout(r, 1500));
  client.stdin.end('COMMIT;\n');
  const s = await sync;
  t.is(s.code, 0, s.stderr);
  t.true(await valid(m, top));
  const end = Date.now() + 5000; // the daemon roots in the background (rootsDo)
  while (!rooted(m, top) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.true(rooted(m, top), 'the copied lower path is rooted');
  t.false(rooted(m, own), 'the client\'s upper-only path is not rooted: a GC may collect it');
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.false(await valid(m, own), 'collected');
});
