import test from 'ava';
import Database = require('better-sqlite3');
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cli, run } from '../helpers/exec';
import { freshLower, lowerAdd, sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';
import { nixEnv, nixOk } from '../helpers/nix';

// explain --json, status --json and tracing on scenarios with known answers.

const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');

interface Ex {
  storePath: string | null; layer: string | null; reason: string; realPath: string | null;
  appearedAfterMount: boolean; dbRowsEqual: boolean | null; whiteout: string | null;
  dbRowDifferences: { field: string; upper: unknown; lower: unknown }[] | null;
  upperDb: { valid: boolean; narHash?: string; references?: string[] } | null;
  lowerDb: { valid: boolean; narHash?: string } | null;
  closure: { complete: boolean; size: number } | null;
  references: { path: string; layer: string | null }[];
}

async function explain(args: string[]): Promise<Ex[]> {
  const r = await cli(['explain', '--json', ...args]);
  if (r.stdout.trim() === '') throw new Error(`explain printed nothing (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { paths: Ex[] }).paths;
}

test('explain: upper object, lower object, whiteout, duplicate, bookkeeping name, path added after mount', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const p = lower.manifest.paths;
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(upper);
  fs.writeFileSync(path.join(upper, `.wh.${rel(p.dirObject)}`), '');
  const m = await mountMerged(t, lower.root, { dir, upper });

  const src = path.join(dir, 'upper-only.txt');
  fs.writeFileSync(src, `upper only ${Date.now()}\n`);
  const up = (await nixOk('nix-store', ['--store', m.root, '--add', src])).trim();
  const name = `after-${Date.now()}`;
  const dupSrc = path.join(dir, `lower-extra-${name}-dup`);
  fs.writeFileSync(dupSrc, `${name}-dup\n`);
  const dup = (await nixOk('nix-store', ['--store', m.root, '--add', dupSrc])).trim();
  await lowerAdd(lower.root, `${name}-dup`);
  const grown = await lowerAdd(lower.root, name);

  const [eUp, eLow, eWh, eDup, eLinks, eGrown, eHash] = await explain([
    path.join(m.store, rel(up)), p.appOut, p.dirObject, dup, path.join(m.store, '.links'), grown,
    rel(p.libOut).slice(0, 32), '--root', m.root]);

  t.like(eUp, { storePath: up, layer: 'upper', reason: 'upper-object', realPath: path.join(upper, rel(up)) });
  t.true(eUp.upperDb?.valid);
  t.false(eUp.lowerDb?.valid);

  t.like(eLow, { layer: 'lower', reason: 'lower-object', dbRowsEqual: true, appearedAfterMount: false });
  t.is(eLow.realPath, path.join(lower.root, 'nix/store', rel(p.appOut)));
  t.deepEqual(eLow.closure, { complete: true, size: 4, missing: [] } as unknown as Ex['closure']);
  t.deepEqual(eLow.references.map((r) => [r.path, r.layer]).sort(), [[p.libOut, 'lower'], [p.singleFile, 'lower']].sort());

  t.like(eWh, { layer: null, reason: 'whiteout', whiteout: 'wh-file' });

  t.like(eDup, { layer: 'upper', reason: 'duplicate' });
  t.is(eDup.upperDb?.narHash, eDup.lowerDb?.narHash);

  t.like(eLinks, { layer: 'upper', reason: 'bookkeeping' });

  t.like(eGrown, { layer: 'lower', reason: 'lower-object', appearedAfterMount: true });
  t.like(eHash, { storePath: p.libOut, layer: 'lower' });

  // Unmounted: explain reads the layers and DBs directly.
  await m.unmount();
  const [after] = await explain([p.appOut, '--root', m.root]);
  t.like(after, { layer: 'lower', reason: 'lower-object', appearedAfterMount: false });
});

test('explain: in lazy mode a lower path is valid in the lower DB but not yet in the upper DB until looked up', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { metadata: 'lazy' });
  const p = lower.manifest.paths.libOut;
  const [before] = await explain([p, '--root', m.root]);
  t.like(before, { layer: 'lower', reason: 'lower-object' });
  t.false(before.upperDb?.valid);
  t.true(before.lowerDb?.valid);
  await fs.promises.lstat(path.join(m.store, rel(p)));
  const [after] = await explain([p, '--root', m.root]);
  t.true(after.upperDb?.valid);
  t.true(after.closure?.complete);
});

test('explain names the fields in which the merged DB\'s row differs from the lower one, as verify does', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths;
  // Nix 2.8's dump drops ca, sigs and ultimate; loading it back rewrites every row without them.
  const dump = await nixOk('nix-store', ['--store', m.root, '--dump-db']);
  const load = await run('nix-store', ['--store', m.root, '--load-db'], { env: nixEnv(), input: dump });
  t.is(load.code, 0, load.stderr);

  const [single, app] = await explain([p.singleFile, p.appOut, '--root', m.root]);
  t.false(single.dbRowsEqual);
  t.deepEqual(single.dbRowDifferences?.map((d) => d.field), ['ca']);
  t.is(single.dbRowDifferences?.[0].upper, null);
  t.regex(String(single.dbRowDifferences?.[0].lower), /^fixed:r:sha256:/);
  t.true(app.dbRowsEqual, 'a built path (no ca; ultimate reset by --load-db) is still equal');
  t.deepEqual(app.dbRowDifferences, []);

  const text = await cli(['explain', p.singleFile, '--root', m.root]);
  t.regex(text.stdout, /\(DIFFERS from the lower row: ca\)/);
  t.regex(text.stdout, /\n {4}ca +upper \(none\), lower fixed:r:sha256:\S+\n/);
  const verify = await cli(['verify', m.root]);
  t.regex(verify.stdout, new RegExp(`row-differs +${p.singleFile}: .*\\(ca;`));
  t.notRegex(verify.stdout, new RegExp(`row-differs +${p.appOut}`));
});

test('explain: a path in neither layer exits 1; human output names the layer', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const r = await cli(['explain', '--root', m.root, '/nix/store/00000000000000000000000000000000-absent']);
  t.is(r.code, 1);
  t.regex(r.stdout, /resolves to +nothing: in neither layer/);
  const h = await cli(['explain', path.join(m.store, rel(lower.manifest.paths.appOut), 'bin')]);
  t.is(h.code, 0, h.stderr);
  t.regex(h.stdout, /resolves to +lower: lower object/);
  t.regex(h.stdout, /real path +.*\/bin$/m);
});

interface Status { counters: Record<string, number>; ops: Record<string, number>; follower: { mode: string; pendingRows: number }; health: { ok: boolean }; upper: { objects: number } }

async function status(root: string): Promise<Status> {
  const r = await cli(['status', root, '--json']);
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Status;
}

test('status --json: counters move under a scripted workload', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { metadata: 'lazy' });
  const s0 = await status(m.root);
  t.true(s0.health.ok);
  t.is(s0.follower.mode, 'lazy');
  t.is(s0.counters.rowsMirrored, 0);
  const names = Object.values(lower.manifest.paths).map(rel);
  for (const n of names) await fs.promises.lstat(path.join(m.store, n));
  await fs.promises.lstat(path.join(m.store, '00000000000000000000000000000000-missing')).catch(() => undefined);
  await fs.promises.writeFile(path.join(m.store, rel(lower.manifest.paths.appOut), 'new'), 'x').catch(() => undefined);
  await fs.promises.writeFile(path.join(m.store, '00000000000000000000000000000001-new'), 'x');
  t.is(await fs.promises.readFile(path.join(m.store, '00000000000000000000000000000001-new'), 'utf8'), 'x');
  const s1 = await status(m.root);
  t.true(s1.counters.lower - s0.counters.lower >= names.length, 'lower lookups');
  t.true(s1.counters.miss > s0.counters.miss, 'missing names');
  t.is(s1.counters.refused - s0.counters.refused, 1, 'one refused write');
  t.true(s1.counters.closureSyncs >= 1, 'closure syncs in lazy mode');
  t.true(s1.counters.upper > s0.counters.upper, 'upper hits');
  t.is(s1.upper.objects, 1);
  t.true((s1.ops.create ?? 0) >= 1);
  const text = await cli(['status', m.root]);
  t.regex(text.stdout, /\n {2}settings {3}follow 500 ms, .*, poll /, text.stdout);
  t.regex(text.stdout, new RegExp(`\\n {2}ops {8}.*\\bcreate ${s1.ops.create!}\\b`), 'operations by kind, in the text too');

  const m2 = await mountMerged(t, lower.root);
  const s2 = await status(m2.root);
  t.is(s2.counters.rowsMirrored, names.length, 'mirror imported every lower row');
  t.is(s2.follower.pendingRows, 0);
  const all = await cli(['status', '--json']);
  const roots = (JSON.parse(all.stdout) as { root: string }[]).map((s) => s.root);
  t.true(roots.includes(m.root) && roots.includes(m2.root), 'status without a root lists every mount');
});

test('status: a follower whose checks fail makes the mount unhealthy (text, --json, exit 1) until a check succeeds', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const json = async (): Promise<{ code: number; s: { healthy: boolean; health: { ok: boolean; problems: string[] }; follower: { failing: { count: number } } } }> => {
    const r = await cli(['status', m.root, '--json']);
    return { code: r.code, s: JSON.parse(r.stdout) as never };
  };
  const until = async (f: () => Promise<boolean>): Promise<boolean> => {
    for (const end = Date.now() + 15_000; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) if (await f()) return true;
    return false;
  };
  t.is((await json()).code, 0);

  // A writer of the merged DB (a long Nix transaction) holds its write lock while the lower
  // store grows: every check of the follower fails ("database is locked") until it commits.
  const nixSide = new Database(path.join(m.root, 'nix/var/nix/db/db.sqlite'));
  t.teardown(() => { if (nixSide.inTransaction) nixSide.exec('ROLLBACK'); nixSide.close(); });
  nixSide.exec('BEGIN IMMEDIATE');
  const added = await lowerAdd(lower.root, `failing-follower-${Date.now()}`);
  t.true(await until(async () => (await json()).s.follower.failing.count >= 2), 'the follower\'s checks fail');
  const bad = await json();
  t.is(bad.code, 1, 'status exits 1');
  t.false(bad.s.healthy);
  t.false(bad.s.health.ok);
  t.true(bad.s.health.problems.some((p) => /^follower failing: its last \d+ checks failed: database is locked/.test(p)), JSON.stringify(bad.s.health));
  const text = await cli(['status', m.root]);
  t.is(text.code, 1);
  t.regex(text.stdout, /UNHEALTHY \(follower failing: its last \d+ checks failed: database is locked\)/);

  nixSide.exec('COMMIT');
  t.true(await until(async () => (await json()).code === 0), 'healthy again once a check succeeds');
  const good = await json();
  t.true(good.s.healthy && good.s.health.ok, JSON.stringify(good.s.health));
  t.is(good.s.follower.failing.count, 0);
  t.regex((await cli(['status', m.root])).stdout, / {2}healthy\n/);
  t.true(fs.existsSync(path.join(m.store, rel(added))), 'and the new lower path is imported');
});

test('trace: resolution decisions, refused writes and closure syncs, filtered by prefix, switchable at run time', async (t) => {
  const lower = await sharedLower();
  const dir = tempDir(t);
  const trace = path.join(dir, 'trace.log');
  const p = lower.manifest.paths;
  const m = await mountMerged(t, lower.root, { dir, metadata: 'lazy', extra: ['--trace', trace, '--trace-prefix', p.appOut] });
  await fs.promises.lstat(path.join(m.store, rel(p.appOut)));
  await fs.promises.lstat(path.join(m.store, rel(p.libOut)));
  await fs.promises.writeFile(path.join(m.store, rel(p.appOut), 'x'), '').catch(() => undefined);
  const lines = (await fs.promises.readFile(trace, 'utf8')).trim().split('\n');
  t.true(lines.some((l) => new RegExp(`resolve ${p.appOut} lower \\(lower-object\\)`).test(l)), lines.join('\n'));
  t.true(lines.some((l) => new RegExp(`closure ${p.appOut} 4 rows \\d+ ms`).test(l)));
  t.true(lines.some((l) => new RegExp(`refuse ${p.appOut}/x create`).test(l)));
  t.false(lines.some((l) => l.includes(rel(p.libOut))), 'the prefix filters other paths out');

  const off = await cli(['trace', m.root, 'off']);
  t.is(off.code, 0, off.stderr);
  const n = lines.length;
  await fs.promises.lstat(path.join(m.store, rel(p.appOut), 'bin'));
  await fs.promises.writeFile(path.join(m.store, rel(p.appOut), 'y'), '').catch(() => undefined);
  t.is((await fs.promises.readFile(trace, 'utf8')).trim().split('\n').length, n, 'nothing is traced when off');

  const missing = await cli(['trace', m.root, 'on', '--file', path.join(dir, 'no-such-dir', 't.log')]);
  t.is(missing.code, 2, `a trace file in a missing dir is a usage error: ${missing.stderr}`);
  t.regex(missing.stderr, /no-such-dir does not exist/);
  const isDir = await cli(['trace', m.root, 'on', '--file', dir]);
  t.is(isDir.code, 1, `the daemon cannot open a dir as its trace file: ${isDir.stderr}`);
  t.regex(isDir.stderr, /^local-overlay: error: the daemon could not switch tracing: EISDIR/m);
  t.notRegex(isDir.stderr, /Error: /, 'the daemon\'s error is not wrapped twice');
  // A prefix as a hash part, or as a path in the merged store, is made a store path prefix.
  const hash = rel(p.libOut).slice(0, 12);
  for (const prefix of [hash, path.join(m.store, rel(p.libOut))]) {
    const on = await cli(['trace', m.root, 'on', '--file', trace, '--prefix', prefix]);
    t.is(on.code, 0, on.stderr);
    t.regex(on.stdout, new RegExp(`\\(paths under /nix/store/${prefix === hash ? hash : rel(p.libOut)}\\)`));
  }
  await fs.promises.writeFile(path.join(m.store, rel(p.libOut), 'z'), '').catch(() => undefined);
  t.true((await fs.promises.readFile(trace, 'utf8')).includes(`refuse ${p.libOut}/z create`), 'the normalised prefix matches');
  const bad = await cli(['trace', m.root, 'on', '--prefix', 'some/dir']);
  t.is(bad.code, 2, bad.stderr);
  const both = await cli(['sync', '--root', m.root, '--all', p.appOut]);
  t.is(both.code, 2, `sync --all with paths is refused: ${both.stdout}${both.stderr}`);
  const notAPath = await cli(['sync', '--root', m.root, m.root]);
  t.is(notAPath.code, 2, notAPath.stderr);
  t.regex(notAPath.stderr, new RegExp(`${m.root} names no store path`));
});

test('explain: a relative path names its root; paths of two roots are refused; a path in no merged store is said to be so', async (t) => {
  const lower = await sharedLower();
  const m1 = await mountMerged(t, lower.root);
  const m2 = await mountMerged(t, lower.root);
  const obj = rel(lower.manifest.paths.appOut);
  const cwd = path.dirname(m1.root);
  for (const arg of [`merged/nix/store/${obj}`, `./merged/nix/store/${obj}/bin`]) {
    const r = await cli(['explain', '--json', arg], { cwd });
    t.is(r.code, 0, `${arg}: ${r.stderr}`);
    const out = JSON.parse(r.stdout) as { root: string; paths: Ex[] };
    t.is(out.root, m1.root);
    t.like(out.paths[0], { layer: 'lower', reason: 'lower-object' });
  }
  const mixed = await cli(['explain', path.join(m1.store, obj), path.join(m2.store, obj)]);
  t.is(mixed.code, 2, mixed.stderr);
  t.regex(mixed.stderr, new RegExp(`different merged roots \\(${m1.root}: .*; ${m2.root}: .*\\)`));
  const wrongRoot = await cli(['explain', '--root', m1.root, path.join(m2.store, obj)]);
  t.is(wrongRoot.code, 2, wrongRoot.stderr);
  for (const extra of [['--root', m1.root], []]) {
    const r = await cli(['explain', ...extra, '/etc/passwd']);
    t.is(r.code, 2, `${extra.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /\/etc\/passwd is not in a merged store/, 'with two mounts up, not "say which"');
    t.notRegex(r.stdout, /neither layer/);
  }
  for (const [arg, what] of [[m1.root, 'the merged root'], [m1.store, 'the store dir of the merged root']]) {
    const r = await cli(['explain', arg]);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, new RegExp(`${arg} is ${what} ${m1.root}: name an object below ${m1.store}`));
  }
  // Two mounts up: a command without a root takes the one the current dir is in.
  const here = await cli(['verify', '--json'], { cwd: path.join(m2.root, 'nix/var') });
  t.is(here.code, 0, here.stderr);
  const inside = await cli(['explain', '--json', obj], { cwd: m2.root });
  t.is((JSON.parse(inside.stdout) as { root: string }).root, m2.root, inside.stderr);
  const nowhere = await cli(['verify'], { cwd: '/' });
  t.regex(nowhere.stderr, /merged stores are mounted .*: say which with --root ROOT, or run the command in a dir inside that root/);
});

test('status: an upper filesystem with no space left makes the mount unhealthy, naming it', async (t) => {
  const lower = await sharedLower();
  const dir = path.join(tempDir(t), 'small');
  fs.mkdirSync(dir);
  const tmpfs = await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]);
  t.is(tmpfs.code, 0, tmpfs.stderr);
  t.teardown(async () => { await run('umount', ['-l', dir]); });
  const m = await mountMerged(t, lower.root, { dir });
  t.is((await cli(['status', m.root])).code, 0);
  await run('dd', ['if=/dev/zero', `of=${path.join(dir, 'fill')}`, 'bs=1M']); // until ENOSPC
  const full = await cli(['status', m.root]);
  t.is(full.code, 1, full.stdout);
  t.regex(full.stdout, new RegExp(`UNHEALTHY \\(.*upper filesystem full: Error: ${m.upper}: no space left`));
  fs.rmSync(path.join(dir, 'fill'));
  t.is((await cli(['status', m.root])).code, 0, 'healthy again once there is space');
});
