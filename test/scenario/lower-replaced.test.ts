import test from 'ava';
import type { ExecutionContext } from 'ava';
import Database = require('better-sqlite3');
import * as fs from 'node:fs';
import * as path from 'node:path';
import { check, cli, REPO } from '../helpers/exec';
import { freshLower, lowerAdd } from '../helpers/fixture';
import { Merged, mountMerged, tempDir } from '../helpers/mount';
import { derivation, nix, nixOk } from '../helpers/nix';

// A lower store replaced in place (same path, new content) between mounts or under a live
// mount, as a new image version or an rsync of a rebuilt shared store does it, with real Nix 2.8.

const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');
const valid = async (m: Merged, p: string): Promise<boolean> => (await nix('nix-store', ['--store', m.root, '--check-validity', p])).code === 0;
const dbFile = (root: string): string => path.join(root, 'nix/var/nix/db/db.sqlite');

/**
 * `next`: a copy of lower root `lower` that has one path more, whose DB file has the same size and
 * the same mtime as `lower`'s (an image build that normalises mtimes), or null when the new row
 * needed a new page (then the case this file is about cannot be made).
 */
async function nextVersion(lower: string, next: string, name: string): Promise<string | null> {
  await check('cp', ['-a', lower, next]);
  const added = await lowerAdd(next, name);
  for (const f of [dbFile(lower), dbFile(next)]) fs.utimesSync(f, 1, 1);
  return fs.statSync(dbFile(lower)).size === fs.statSync(dbFile(next)).size ? added : null;
}

/**
 * As rsync brings a new version of a lower root under a live mount (the new object first, then
 * the DB file written beside and renamed over), then `refresh`: `added` must be valid and shown.
 */
async function rsyncAndRefresh(t: ExecutionContext, m: Merged, lower: string, next: string, added: string): Promise<void> {
  await check('cp', ['-a', path.join(next, 'nix/store', rel(added)), path.join(lower, 'nix/store', rel(added))]);
  await check('cp', ['-a', dbFile(next), `${dbFile(lower)}.tmp`]);
  fs.renameSync(`${dbFile(lower)}.tmp`, dbFile(lower));
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  t.true(await valid(m, added), 'the new lower path is not valid in the merged DB after refresh');
  t.true(fs.existsSync(path.join(m.store, rel(added))), 'the new lower path is not visible after refresh');
}

/**
 * Takes `paths` out of lower root `lower` as its GC would (rows, then objects). By hand, not with
 * nix-store --delete: the suite's other tests use these same store paths (one fixture), and Nix's
 * GC takes them for live while any process names them.
 */
async function dropFromLower(lower: string, paths: string[]): Promise<void> {
  const lowerDb = new Database(dbFile(lower));
  lowerDb.pragma('foreign_keys = ON');
  for (const p of paths) lowerDb.prepare('DELETE FROM ValidPaths WHERE path = ?').run(p);
  lowerDb.close();
  for (const p of paths) {
    await check('chmod', ['-R', 'u+w', path.join(lower, p)]);
    fs.rmSync(path.join(lower, p), { recursive: true });
  }
}

/** Both orders of `a` and `b` joined by ", ", for a RegExp. */
const eitherOrder = (a: string, b: string): string => `(?:${a}, ${b}|${b}, ${a})`;

test('a lower store replaced between mounts by one whose DB file has the same size and mtime: the remount roots the new paths, a merged GC keeps them', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const added = await nextVersion(lower.root, path.join(dir, 'lower-v2'), 'image-v2');
  if (added === null) return t.fail('precondition: the new lower DB file is not of the same size');
  let m = await mountMerged(t, lower.root, { dir });
  await m.unmount();
  fs.renameSync(lower.root, path.join(dir, 'lower-v1'));
  fs.renameSync(path.join(dir, 'lower-v2'), lower.root);
  m = await mountMerged(t, lower.root, { dir });
  t.true(await valid(m, added), 'the new lower path is not valid after the remount');
  const gc = await nix('nix-collect-garbage', ['--store', m.root]);
  t.is(gc.code, 0, gc.stderr);
  t.false(gc.stderr.includes(rel(added)), `the merged GC deleted the new lower path:\n${gc.stderr}`);
  t.true(await valid(m, added), 'the new lower path is not valid after a merged GC');
  t.true(fs.existsSync(path.join(m.store, rel(added))), 'the new lower path is not visible after a merged GC');
  const v = await cli(['verify', m.root]);
  t.is(v.code, 0, v.stdout + v.stderr);
});

test('a lower DB replaced under a live mount by one of the same size and mtime: the follower imports its new path', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const next = path.join(dir, 'lower-v2');
  const added = await nextVersion(lower.root, next, 'live-v2');
  if (added === null) return t.fail('precondition: the new lower DB file is not of the same size');
  const m = await mountMerged(t, lower.root, { dir });
  await rsyncAndRefresh(t, m, lower.root, next, added);
});

test('a lower DB replaced under a live mount by a fresh one with other ids: a new path with an id below the last one imported is imported', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // The same store made afresh, but a new path added first: it takes id 1, every other path moves up.
  const next = path.join(dir, 'lower-v2');
  fs.mkdirSync(path.join(next, 'nix/store'), { recursive: true });
  const added = await lowerAdd(next, 'renumbered-first');
  await check('bash', [path.join(REPO, 'scripts/make-lower-store.sh'), next, path.join(dir, 'manifest-v2.json')]);
  const m = await mountMerged(t, lower.root, { dir });
  await rsyncAndRefresh(t, m, lower.root, next, added);
  for (const p of Object.values(lower.manifest.paths)) t.true(await valid(m, p), `${p} is no longer valid`);
  const v = await cli(['verify', m.root]);
  t.is(v.code, 0, v.stdout + v.stderr);
});

test('a layer dir replaced under a live mount (the lower store dir, the upper dir): status is unhealthy and says to mount again; the log says it once', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  t.is((await cli(['status', m.root])).code, 0, 'healthy at first');
  const store = path.join(lower.root, 'nix/store');
  // A new image version put in place: the same content, another directory.
  await check('cp', ['-a', store, `${store}.v2`]);
  fs.renameSync(store, `${store}.v1`);
  fs.renameSync(`${store}.v2`, store);
  const s = await cli(['status', m.root]);
  t.is(s.code, 1, s.stdout);
  t.regex(s.stdout, new RegExp(`UNHEALTHY \\(.*the lower store ${store} is not the directory mounted \\(device:inode \\d+:\\d+ at mount, \\d+:\\d+ now\\).*unmount and mount again`));
  const log = path.join(m.root, 'nix/var/log/local-overlay.log');
  const deadline = Date.now() + 5000;
  const warned = (): number => fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes(`the lower store ${store} is not the directory mounted`)).length;
  while (warned() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.is(warned(), 1, 'the follower\'s watch logs it');
  // Put back: healthy again. Then the upper dir.
  fs.renameSync(store, `${store}.v2`);
  fs.renameSync(`${store}.v1`, store);
  t.is((await cli(['status', m.root])).code, 0, 'healthy once the mounted dir is back');
  fs.renameSync(m.upper, `${m.upper}.moved`);
  fs.mkdirSync(m.upper);
  const u = await cli(['status', m.root]);
  t.is(u.code, 1, u.stdout);
  t.regex(u.stdout, new RegExp(`the upper dir ${m.upper} is not the directory mounted`));
  fs.rmdirSync(m.upper);
  fs.renameSync(`${m.upper}.moved`, m.upper);
});

test('a remount over a lower store that lost paths the merged DB lists warns, naming them and the merged paths that refer to them', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const { appOut, libOut } = lower.manifest.paths;
  let m = await mountMerged(t, lower.root, { dir });
  const onLib = (await nixOk('nix-build', ['--store', m.root, '--no-out-link', ...await derivation(dir, 'on-lib', { lib: libOut }, 'echo ${lib} > $out')])).trim();
  await m.unmount();
  // The next version of the lower store lacks lib (and app, which refers to it).
  await dropFromLower(lower.root, [appOut, libOut]);
  m = await mountMerged(t, lower.root, { dir });
  t.regex(m.mountStderr, new RegExp(`warning: the merged DB lists 2 paths that neither layer has .*: ${eitherOrder(appOut, libOut)}\\.`));
  // The output built on lib, and its derivation (lib is one of its inputs).
  const referrers = /(\d+) paths? of the merged store refer to them \(([^)]*)\), which Nix takes for valid .* `local-overlay verify (\S+)`/.exec(m.mountStderr);
  t.truthy(referrers, m.mountStderr);
  t.is(referrers?.[1], '2');
  t.deepEqual(referrers?.[2]?.split(', ').sort(), [onLib, (await nixOk('nix-store', ['--store', m.root, '--query', '--deriver', onLib])).trim()].sort());
  t.is(referrers?.[3], m.root);
  // A remount with nothing changed in the lower store says nothing again.
  await m.unmount();
  m = await mountMerged(t, lower.root, { dir });
  t.notRegex(m.mountStderr, /neither layer has/, 'the lower store is as the last mount saw it');
});

test('a lower store that loses paths under a live mount: the log warns, naming them and the merged paths that refer to them; status is unhealthy until their rows go', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const { appOut, libOut } = lower.manifest.paths;
  const m = await mountMerged(t, lower.root, { dir });
  const onLib = (await nixOk('nix-build', ['--store', m.root, '--no-out-link', ...await derivation(dir, 'on-lib', { lib: libOut }, 'echo ${lib} > $out')])).trim();
  const onLibDrv = (await nixOk('nix-store', ['--store', m.root, '--query', '--deriver', onLib])).trim();
  t.is((await cli(['status', m.root])).code, 0, 'healthy at first');
  // The lower store's GC takes lib (and app, which refers to it) while the root is mounted.
  await dropFromLower(lower.root, [appOut, libOut]);
  const log = path.join(m.root, 'nix/var/log/local-overlay.log');
  const warning = (): string | undefined => fs.readFileSync(log, 'utf8').split('\n').find((l) => l.includes('neither layer has'));
  const deadline = Date.now() + 15_000;
  while (warning() === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  t.regex(warning() ?? '(no warning in the log)', new RegExp(`the merged DB lists 2 paths that neither layer has .*: ${eitherOrder(appOut, libOut)}\\. 2 paths of the merged store refer to them \\(${eitherOrder(onLib, onLibDrv)}\\)`));
  const s = await cli(['status', m.root]);
  t.is(s.code, 1, s.stdout);
  t.regex(s.stdout, new RegExp(`UNHEALTHY \\(.*rows without an object: the merged DB lists 2 paths neither layer has \\(${eitherOrder(appOut, libOut)}\\), and 2 paths of the merged store refer to them`));
  // What the operator does: the paths built on lib go, then verify --repair drops the rows.
  await nixOk('nix-store', ['--store', m.root, '--delete', onLib, onLibDrv]);
  const still = await cli(['status', m.root]);
  t.regex(still.stdout, /rows without an object: the merged DB lists 2 paths neither layer has \([^)]*\):/, 'the rows are still there, no longer referred to');
  const r = await cli(['verify', '--repair', m.root]);
  t.is(r.code, 0, r.stdout + r.stderr);
  const after = await cli(['status', m.root]);
  t.is(after.code, 0, after.stdout);
});
