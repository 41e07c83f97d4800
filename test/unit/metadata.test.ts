import test from 'ava';
import type { ExecutionContext } from 'ava';
import Database = require('better-sqlite3');
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mirrorRoot } from '../../bench/synth';
import { Checkpointer } from '../../src/metadata/checkpointer';
import { copyClosure } from '../../src/metadata/closure';
import { copyClosureInPieces } from '../../src/metadata/closure-pieces';
import type { HeldLocks } from '../../src/metadata/held-locks';
import { LowerRoots } from '../../src/metadata/gc-roots';
import { LowerDb } from '../../src/metadata/lower-db';
import { Metadata } from '../../src/metadata/metadata';
import { Mirror } from '../../src/metadata/mirror';
import { mergedSignatures, pagedValidNames, PathRow, rowDifferences, VALID_PAGE_SQL } from '../../src/metadata/rows';
import { seedFromLower } from '../../src/metadata/seed';
import { isTornRead, LowerFileChanged, withBusyRetry } from '../../src/metadata/sqlite';
import { UpperDb } from '../../src/metadata/upper-db';
import { OverlayStats } from '../../src/overlay/stats';
import { log } from '../../src/util/log';
import { check, REPO, run } from '../helpers/exec';
import { freshLower, lowerAdd, LowerFixture, sharedLower } from '../helpers/fixture';
import { nixEnv } from '../helpers/nix';
import { tempDir } from '../helpers/mount';

// The metadata module against real SQLite files: the lower DB is one real Nix 2.8 made.

interface Row { id: number; path: string; hash: string; registrationTime: number; deriver: string | null; narSize: number; ultimate: number | null; sigs: string | null; ca: string | null }

/** Rows by path, in path order (ids differ between the DBs; everything else must not). */
function rows(db: Database.Database): Map<string, Omit<Row, 'id'>> {
  const out = new Map<string, Omit<Row, 'id'>>();
  for (const r of db.prepare('SELECT * FROM ValidPaths ORDER BY path').all() as Row[]) {
    const { id: _id, ...rest } = r;
    out.set(r.path, rest);
  }
  return out;
}

function refs(db: Database.Database): string[] {
  return (db.prepare('SELECT a.path || \' -> \' || b.path AS e FROM Refs r JOIN ValidPaths a ON a.id = r.referrer JOIN ValidPaths b ON b.id = r.reference').pluck().all() as string[]).sort();
}

function outputs(db: Database.Database): string[] {
  return (db.prepare('SELECT v.path || \' \' || o.id || \' \' || o.path FROM DerivationOutputs o JOIN ValidPaths v ON v.id = o.drv').pluck().all() as string[]).sort();
}

const dbFile = (root: string): string => path.join(root, 'nix/var/nix/db/db.sqlite');

/** A new upper DB in a temp dir, and the shared lower store's DB, both closed after the test. */
async function overShared(t: ExecutionContext): Promise<{ lower: LowerFixture; dir: string; up: UpperDb; lo: LowerDb }> {
  const lower = await sharedLower();
  const dir = tempDir(t);
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(dbFile(lower.root));
  t.teardown(() => { up.close(); lo.close(); });
  return { lower, dir, up, lo };
}

test('copyClosure copies the closure exactly, references first, and nothing else', async (t) => {
  const { lower, up, lo } = await overShared(t);
  const p = lower.manifest.paths;
  const n = copyClosure(up, lo, [p.appOut]);
  const want = new Set([p.appOut, p.libOut, p.singleFile, p.textFile]);
  t.is(n, want.size);
  const lowerRows = rows(lo.conn());
  const upperRows = rows(up.db);
  t.deepEqual([...upperRows.keys()].sort(), [...want].sort());
  for (const q of want) t.deepEqual(upperRows.get(q), lowerRows.get(q), `row of ${q}`);
  t.deepEqual(refs(up.db), refs(lo.conn()).filter((e) => want.has(e.split(' -> ')[0])));
  // References first: every reference has a smaller id than its referrer.
  const bad = up.db.prepare('SELECT count(*) FROM Refs WHERE reference > referrer').pluck().get();
  t.is(bad, 0);
  t.is(copyClosure(up, lo, [p.appOut]), 0, 'a second copy adds nothing');
  // appDrv's closure adds appDrv, libDrv and the tools; the rest is there already.
  t.is(copyClosure(up, lo, [p.appDrv]), 3);
  t.is(up.db.prepare('SELECT count(*) FROM Refs WHERE reference > referrer').pluck().get(), 0);
});

test('copyClosure never reuses the id of a deleted row (AUTOINCREMENT), and its references still name the right paths', async (t) => {
  const { lower, up, lo } = await overShared(t);
  const p = lower.manifest.paths;
  t.true(copyClosure(up, lo, [p.appOut]) > 0);
  // Delete the newest rows (as Nix's GC or delete would): the high-water mark stays above max(id).
  const high = up.db.prepare('SELECT max(id) FROM ValidPaths').pluck().get() as number;
  up.db.prepare('DELETE FROM Refs WHERE referrer >= ? OR reference >= ?').run(high - 1, high - 1);
  up.db.prepare('DELETE FROM ValidPaths WHERE id >= ?').run(high - 1);
  const n = copyClosure(up, lo, [p.appDrv]);
  t.true(n > 0);
  const newIds = up.db.prepare('SELECT id FROM ValidPaths WHERE id > ? - 2 ORDER BY id').pluck().all(high) as number[];
  t.true(newIds.every((id) => id > high), `new ids ${newIds.join(', ')} reuse one at or below ${high}`);
  const copied = new Set(rows(up.db).keys());
  t.deepEqual(refs(up.db), refs(lo.conn()).filter((e) => copied.has(e.split(' -> ')[0])), 'every copied row has exactly its lower references');
  t.is(up.db.prepare('SELECT count(*) FROM Refs WHERE reference > referrer').pluck().get(), 0, 'references first');
});

const storePath = (c: string, n: string): string => `/nix/store/${c.repeat(32)}-${n}`;

/**
 * A lower DB made by hand (Nix's schema): `paths` get ids 1, 2, ... in that order, and
 * `references` are [referrer, reference] pairs of those ids. With a new upper DB; both closed
 * after the test.
 */
function handMadeDbs(t: ExecutionContext, paths: string[], references: [number, number][]): { up: UpperDb; lo: LowerDb } {
  const dir = tempDir(t);
  const lowerDir = path.join(dir, 'lower-db');
  UpperDb.open(lowerDir).close();
  const lowerFile = path.join(lowerDir, 'db.sqlite');
  const w = new Database(lowerFile);
  const ins = w.prepare('INSERT INTO ValidPaths (id, path, hash, registrationTime, narSize) VALUES (?, ?, ?, 1, 8)');
  paths.forEach((p, i) => ins.run(i + 1, p, `sha256:${i + 1}`));
  const ref = w.prepare('INSERT INTO Refs (referrer, reference) VALUES (?, ?)');
  for (const [referrer, reference] of references) ref.run(referrer, reference);
  w.pragma('journal_mode = DELETE');
  w.close();
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(lowerFile);
  t.teardown(() => { up.close(); lo.close(); });
  return { up, lo };
}

test('copyClosure from a lower DB whose ids are not in dependency order still copies references first', (t) => {
  // As another tool might make it: the referrer got the smaller id.
  const [top, mid, leaf] = [storePath('a', 'top'), storePath('b', 'mid'), storePath('c', 'leaf')];
  const { up, lo } = handMadeDbs(t, [top, mid, leaf], [[1, 2], [2, 3], [1, 3], [3, 3]]);
  t.is(copyClosure(up, lo, [top]), 3);
  t.deepEqual([...rows(up.db).keys()], [top, mid, leaf].sort());
  t.deepEqual(refs(up.db), refs(lo.conn()));
  t.is(up.db.prepare('SELECT count(*) FROM Refs WHERE reference > referrer').pluck().get(), 0, 'references first');
  t.deepEqual(up.db.prepare('SELECT path FROM ValidPaths ORDER BY id').pluck().all(), [leaf, mid, top]);
});

test('copyClosure stops at a path the upper DB has: that row\'s own references are already there', (t) => {
  const [leaf, mid, top, side] = [storePath('a', 'leaf'), storePath('b', 'mid'), storePath('c', 'top'), storePath('d', 'side')];
  // top -> mid -> leaf; side -> leaf and mid
  const { up, lo } = handMadeDbs(t, [leaf, mid, top, side], [[2, 1], [3, 2], [4, 1], [4, 2]]);
  // The upper DB has mid as a build of its own registered it: without a reference to leaf.
  up.insertPath({ id: 0, path: mid, hash: 'sha256:2', registrationTime: 2, deriver: null, narSize: 8, ultimate: 1, sigs: null, ca: null });
  t.is(copyClosure(up, lo, [top]), 1, 'only top: mid is there, and leaf is not in its upper closure');
  t.deepEqual([...rows(up.db).keys()], [mid, top]);
  t.deepEqual(refs(up.db), [`${top} -> ${mid}`]);
  t.is(rows(up.db).get(mid)?.registrationTime, 2, 'the upper row of mid is left as it was');
  // A path that refers to leaf itself brings it along.
  t.is(copyClosure(up, lo, [side]), 2);
  t.deepEqual(refs(up.db), [`${top} -> ${mid}`, `${side} -> ${leaf}`, `${side} -> ${mid}`]);
});

test('copyClosure carries derivation outputs; withBusyRetry waits for a writer without blocking', async (t) => {
  const { lower, dir, up, lo } = await overShared(t);
  // Another connection (as Nix would) holds the write lock for 600 ms.
  const nix = new Database(path.join(dir, 'db/db.sqlite'));
  nix.exec('BEGIN IMMEDIATE');
  let released = 0;
  setTimeout(() => { nix.exec('COMMIT'); nix.close(); released = Date.now(); }, 600);
  // The event loop must not be blocked for the whole wait: each attempt may block for the
  // connection's busy timeout (50 ms), not more, and then yields. Measured per attempt, not as
  // gaps between timer ticks, which a loaded machine stretches by itself.
  const attempts: number[] = [];
  const n = await withBusyRetry(() => {
    const t0 = performance.now();
    try {
      return copyClosure(up, lo, [lower.manifest.paths.appDrv]);
    } finally {
      attempts.push(performance.now() - t0);
    }
  });
  t.true(released > 0 && Date.now() >= released, 'it finished after the writer let go');
  t.true(attempts.length >= 2, `it tried again after yielding (${attempts.length} attempts)`);
  const longest = Math.max(...attempts);
  t.true(longest < 300, `no attempt blocked the event loop for long (longest ${longest.toFixed(0)} ms; the writer held the lock 600 ms)`);
  t.true(n >= 4);
  const drvs = [lower.manifest.paths.appDrv, lower.manifest.paths.libDrv];
  t.deepEqual(outputs(up.db), outputs(lo.conn()).filter((o) => drvs.some((d) => o.startsWith(d + ' '))));
});

test('withBusyRetry tries a torn read again a few times, and gives up on other errors at once', async (t) => {
  const failing = (code: string, times: number): (() => string) => {
    let n = 0;
    return () => {
      if (n++ < times) throw Object.assign(new Error(code), { code });
      return `ok after ${times}`;
    };
  };
  // A long deadline: this file's other tests block the event loop with synchronous SQLite
  // waits; on a loaded machine (its lazy test took 17 s instead of 1) this test failed once,
  // its error not kept: retries timed by the default 10 s deadline are the likely cause.
  const deadline = 120_000;
  t.is(await withBusyRetry(failing('SQLITE_CORRUPT', 2), deadline), 'ok after 2', 'a checkpoint that tore two reads');
  await t.throwsAsync(withBusyRetry(failing('SQLITE_CORRUPT', 10), deadline), { message: 'SQLITE_CORRUPT' }, 'a DB that stays corrupt is an error');
  await t.throwsAsync(withBusyRetry(failing('SQLITE_CONSTRAINT', 1), deadline), { message: 'SQLITE_CONSTRAINT' });
  t.is(await withBusyRetry(failing('SQLITE_BUSY', 6), deadline), 'ok after 6');
});

test('mirror: imports every lower row once, then only new ones, and leaves no files beside the lower DB', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const lowerDbDir = path.dirname(dbFile(lower.root));
  const before = fs.readdirSync(lowerDbDir).sort();
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(dbFile(lower.root));
  t.teardown(() => { up.close(); lo.close(); });
  const mirror = new Mirror(up, lo);
  const first = mirror.importNew();
  t.is(first.count, rows(lo.conn()).size);
  t.deepEqual(rows(up.db), rows(lo.conn()));
  t.deepEqual(refs(up.db), refs(lo.conn()));
  t.deepEqual(outputs(up.db), outputs(lo.conn()));
  t.deepEqual(mirror.importNew(), { count: 0, paths: [] });
  t.deepEqual(fs.readdirSync(lowerDbDir).sort(), before, 'no -wal/-shm or other file was created beside the lower DB');

  const added = await lowerAdd(lower.root, `mirror-unit-${Date.now()}`);
  t.true(lo.changed());
  lo.reopen();
  const second = mirror.importNew();
  t.deepEqual(second, { count: 1, paths: [added] });
  t.deepEqual(rows(up.db), rows(lo.conn()));
  t.is((up.db.pragma('foreign_key_check') as unknown[]).length, 0);
});

test('mirror: new rows referring to a lower path whose merged row Nix deleted bring its closure along, references whole', async (t) => {
  const { lower, up, lo } = await freshDbs(t);
  t.teardown(() => { up.close(); lo.close(); });
  const mirror = new Mirror(up, lo);
  mirror.importNew();
  const { appOut, libOut } = lower.manifest.paths;
  // As if the lower store gained appOut only now, while libOut's merged row is gone (Nix
  // deleted a duplicate's row, and it is not restored yet).
  up.db.pragma('foreign_keys = OFF');
  for (const p of [appOut, libOut]) {
    const id = up.idOf(p) as number;
    up.db.prepare('DELETE FROM Refs WHERE referrer = ? OR reference = ?').run(id, id);
    up.db.prepare('DELETE FROM DerivationOutputs WHERE drv = ?').run(id);
    up.db.prepare('DELETE FROM ValidPaths WHERE id = ?').run(id);
  }
  up.db.pragma('foreign_keys = ON');
  const appLowerId = (lo.pathRow(appOut) as { id: number }).id;
  t.true((lo.pathRow(libOut) as { id: number }).id < appLowerId, 'references come first in the lower DB');
  mirror.seeded(appLowerId - 1);
  mirror.importNew();
  t.not(up.idOf(libOut), undefined, 'the referenced path was copied too');
  t.deepEqual(refs(up.db), refs(lo.conn()), 'every reference is there');
  t.is((up.db.pragma('foreign_key_check') as unknown[]).length, 0);
});

/** A LowerDb whose newest id is at most `cap`: the lower store as it was when it had fewer rows. */
class CappedLowerDb extends LowerDb {
  cap = Infinity;
  override maxId(): number { return Math.min(super.maxId(), this.cap); }
}

/** A lock probe that says which of the paths asked about are in `locked` (asked: how often). */
function fakeLocks(locked: Set<string>): { held: HeldLocks; asked: () => number } {
  let asked = 0;
  return { held: (paths) => { asked++; return new Set([...paths()].filter((p) => locked.has(p))); }, asked: () => asked };
}

test('mirror: a new path whose lock a merged-store client holds waits, and so do its referrers, in that import and later ones; all go in once the lock is free', async (t) => {
  const { lower, up } = await overShared(t);
  const lo = new CappedLowerDb(dbFile(lower.root));
  t.teardown(() => lo.close());
  const { appOut, libOut } = lower.manifest.paths;
  const appId = (lo.pathRow(appOut) as { id: number }).id;
  t.true((lo.pathRow(libOut) as { id: number }).id < appId, 'references come first in the lower DB');
  const locked = new Set([libOut]);
  const { held } = fakeLocks(locked);
  const mirror = new Mirror(up, lo);

  // The lower store had up to appOut's id (excluded): libOut waits, the rest goes in.
  lo.cap = appId - 1;
  const first = mirror.importNew(held);
  t.deepEqual(mirror.waitingPaths, [libOut]);
  t.is(up.idOf(libOut), undefined);
  t.is(first.count, appId - 2);
  t.is((up.db.pragma('foreign_key_check') as unknown[]).length, 0);
  // appOut, which refers to libOut, comes in a later import: it waits too.
  lo.cap = Infinity;
  mirror.importNew(held);
  t.deepEqual(mirror.waitingPaths.sort(), [appOut, libOut].sort());
  t.is(up.idOf(appOut), undefined);
  t.is(rows(up.db).size, rows(lo.conn()).size - 2);
  t.false(mirror.lockFreed(held), 'the lock is still held');
  t.deepEqual(mirror.importNew(held), { count: 0, paths: [] }, 'nothing goes in while it is');

  locked.clear();
  t.true(mirror.lockFreed(held));
  const last = mirror.importNew(held);
  t.is(last.count, 2);
  t.deepEqual([...last.paths ?? []].sort(), [appOut, libOut].sort());
  t.deepEqual(mirror.waitingPaths, []);
  t.deepEqual(rows(up.db), rows(lo.conn()));
  t.deepEqual(refs(up.db), refs(lo.conn()));
  t.deepEqual(outputs(up.db), outputs(lo.conn()));
  t.is((up.db.pragma('foreign_key_check') as unknown[]).length, 0);
});

test('mirror: a lock taken while an import copies is seen before its COMMIT: rolled back, and made again without that path (and its referrers)', async (t) => {
  const { lower, up, lo } = await overShared(t);
  const { appOut, libOut } = lower.manifest.paths;
  const locked = new Set<string>();
  let calls = 0;
  // The first look (before the transaction) finds no lock; by the look before the COMMIT, libOut's is held.
  const held: HeldLocks = (paths) => {
    if (++calls === 2) locked.add(libOut);
    return new Set([...paths()].filter((p) => locked.has(p)));
  };
  const mirror = new Mirror(up, lo);
  const r = mirror.importNew(held);
  t.is(calls, 3, 'looked before, before the rolled-back COMMIT, and before the one that went through');
  t.deepEqual(mirror.waitingPaths.sort(), [appOut, libOut].sort());
  t.is(r.count, rows(lo.conn()).size - 2);
  t.deepEqual(r.paths?.length, r.count);
  t.is(up.idOf(libOut), undefined);
  t.is((up.db.pragma('foreign_key_check') as unknown[]).length, 0);
  locked.clear();
  t.is(mirror.importNew(held).count, 2);
  t.deepEqual(rows(up.db), rows(lo.conn()));
});

test('a lower DB connection whose file a Nix client changed reads the new file, not a torn mix of both', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const lo = new LowerDb(dbFile(lower.root));
  t.teardown(() => lo.close());
  const p = lower.manifest.paths;
  const max = lo.maxId();
  t.truthy(lo.pathRow(p.appOut));
  t.true(lo.closure(p.appOut).length > 1); // the pages of both tables and their indexes are cached now
  // A Nix client adds a path and checkpoints its WAL into the DB file as it exits. A snapshot
  // connection that kept its cached pages fails its next read (SQLITE_CORRUPT).
  const added = await lowerAdd(lower.root, `torn-${Date.now()}`);
  t.is(lo.pathRow(added)?.path, added, 'the new row is read');
  t.true(lo.maxId() > max);
  t.is(lo.snapshotMaxId, lo.maxId());
  t.truthy(lo.pathRow(p.appOut), 'old rows still read');
});

test('follower: an import that a writer of the upper DB holds up is retried until it lands', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const up = UpperDb.open(path.join(dir, 'db'), { timeoutMs: 50 });
  const lo = new LowerDb(dbFile(lower.root));
  const md = new Metadata(up, lo, 'mirror', new OverlayStats());
  t.teardown(() => md.close());
  md.importAll();
  const heard: string[] = [];
  md.startFollower(50, (names) => heard.push(...(names ?? ['(too many to list)'])));

  // Nix holds the upper DB's write lock (a long transaction) while the lower store grows.
  const nixSide = new Database(path.join(dir, 'db', 'db.sqlite'));
  t.teardown(() => nixSide.close());
  nixSide.exec('BEGIN IMMEDIATE');
  const added = await lowerAdd(lower.root, `busy-import-${Date.now()}`);
  // Until two of the follower's checks have met the lock (or 10 s, then the assertions say why).
  const until = Date.now() + 10_000;
  while (md.followerState().failing.count < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  t.is(up.idOf(added), undefined, 'not imported while the lock is held');
  const failing = md.followerState().failing;
  t.true(failing.count >= 2 && /locked/.test(failing.message), `status shows the failed checks: ${JSON.stringify(failing)}`);
  nixSide.exec('COMMIT');

  const deadline = Date.now() + 5000;
  while (up.idOf(added) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.not(up.idOf(added), undefined, 'imported once the lock was released, with no further change to the lower DB');
  t.deepEqual(heard, [added.slice('/nix/store/'.length)]);
  t.is(md.followerState().failing.count, 0, 'and no longer once one succeeded');
});

test('lazy: a closure copy that failed is tried again when the lower DB next grows, with no further lookup', async (t) => {
  const { lower, up, lo } = await freshDbs(t);
  const md = new Metadata(up, lo, 'lazy', new OverlayStats());
  t.teardown(() => md.close());
  const target = lower.manifest.paths.appOut;
  // The kernel keeps a lookup's answer, failed copy or not: no later lookup will come.
  up.db.exec("CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.ValidPaths BEGIN SELECT RAISE(ABORT, 'test: the copy fails'); END");
  await t.throwsAsync(md.lowerLookup(target.slice('/nix/store/'.length)) ?? Promise.resolve(), { any: true, message: /the copy fails/ });
  up.db.exec('DROP TRIGGER temp.refuse');
  t.is(up.idOf(target), undefined, 'not copied');
  md.startFollower(50, () => undefined);
  await lowerAdd(lower.root, `retry-growth-${Date.now()}`);
  const deadline = Date.now() + 5000;
  while (up.idOf(target) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.not(up.idOf(target), undefined, 'copied once the lower DB grew');
  t.true(refs(up.db).some((e) => e.startsWith(`${target} -> `)), 'with its references');
});

test('reading the lower DB while a writer has its WAL open leaves nothing behind once the writer closes', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const file = dbFile(lower.root);
  const before = fs.readdirSync(path.dirname(file)).sort();
  // A writer, as Nix is: WAL mode, a committed row still in its WAL.
  const writer = new Database(file);
  writer.pragma('journal_mode = WAL');
  writer.prepare("INSERT INTO ValidPaths (path, hash, registrationTime) VALUES ('/nix/store/00000000000000000000000000000000-w', 'sha256:0', 1)").run();
  t.true(fs.existsSync(`${file}-wal`), 'the writer has a WAL');
  const lo = new LowerDb(file);
  const n = lo.maxId();
  const up = UpperDb.open(path.join(dir, 'db'));
  new Mirror(up, lo).importNew();
  // The daemon's snapshot stays open while the writer (Nix) finishes and closes.
  writer.close();
  lo.close();
  up.close();
  t.deepEqual(fs.readdirSync(path.dirname(file)).sort(), before, 'the writer removed its WAL and shm: no reader held them');
  t.true(n > 0);
});

/**
 * A new upper DB whose connection does not checkpoint (as in lazy mode), a Checkpointer for it
 * whose worker ends 300 ms after its last checkpoint (and with `boundFrames`, if given), and `write(n)`: one transaction of n new
 * rows. Closed after the test.
 */
function checkpointed(t: ExecutionContext, boundFrames?: number): { up: UpperDb; file: string; cp: Checkpointer; write: (rows: number) => void } {
  const dir = tempDir(t);
  const up = UpperDb.open(path.join(dir, 'db'));
  const file = path.join(dir, 'db', 'db.sqlite');
  up.db.pragma('wal_autocheckpoint = 0');
  // The daemon's writes wait for an idle worker's cut in settle(), asynchronously; these are
  // made directly, and wait in SQLite's busy handler instead (a cut can come between two of
  // them when the machine is loaded: the worker idles after 300 ms here).
  up.db.pragma('busy_timeout = 5000');
  const cp = new Checkpointer(file, 300, boundFrames);
  t.teardown(async () => {
    const closing = cp.close();
    up.close();
    await closing;
  });
  const ins = up.db.prepare('INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, 1, 1)');
  let next = 0;
  const write = (rows: number): void => up.db.transaction(() => {
    for (const end = next + rows; next < end; next++) ins.run(`/nix/store/${String(next).padStart(32, '0')}-checkpoint-test-${'x'.repeat(60)}`, `sha256:${next}`);
  })();
  return { up, file, cp, write };
}

/**
 * The WAL header's checkpoint sequence number (bytes 12-15, big-endian): it counts the times a
 * writer started the WAL over.
 */
function walRestarts(dbFile: string): number {
  const b = Buffer.alloc(16);
  const fd = fs.openSync(`${dbFile}-wal`, 'r');
  try { fs.readSync(fd, b, 0, 16, 0); } finally { fs.closeSync(fd); }
  return b.readUInt32BE(12);
}

test('Checkpointer: a worker checkpoints the WAL once 1000 pages are not checkpointed; the writer does not; the worker ends when idle', async (t) => {
  const { up, file, cp, write } = checkpointed(t);
  const fill = (): void => write(30_000);
  const until = async (what: string, ok: () => boolean): Promise<void> => {
    for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 50));
    t.true(ok(), what);
  };
  cp.wrote();
  t.false(cp.running(), 'no worker while the WAL is small');
  fill();
  const before = fs.statSync(file).size;
  t.true(fs.statSync(`${file}-wal`).size > 4096 * 1000, 'the WAL is past the threshold');
  cp.wrote();
  t.true(cp.running(), 'a worker once it is past');
  await until('the DB file took the WAL\'s pages', () => fs.statSync(file).size > before * 4);
  // The WAL file keeps its size after a checkpoint (SQLite reuses it from the start): a small
  // write after it is not a reason for another checkpoint, whether it comes while the worker
  // is still answering (then the answer looks again) or after.
  up.db.prepare('INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, 1, 1)').run(`/nix/store/${'9'.repeat(32)}-small-write`, 'sha256:small');
  t.true(fs.statSync(`${file}-wal`).size > 4096 * 1000, 'the WAL file is still past the threshold');
  cp.wrote();
  await until('the worker ended once idle', () => !cp.running());
  t.is(cp.asked, 1, 'one checkpoint: none for a few pages');
  fill();
  const second = fs.statSync(file).size;
  cp.wrote();
  t.is(cp.asked, 2);
  t.true(cp.running(), 'the next checkpoint starts another');
  await until('and it checkpoints too', () => fs.statSync(file).size > second * 1.5);
});

test('Checkpointer: frames written while a checkpoint ran are asked for again, so the WAL starts over instead of growing', async (t) => {
  const { file, cp, write } = checkpointed(t);
  const other = new Database(file);
  t.teardown(() => other.close());
  write(30_000);
  // As if the worker's checkpoint had run just before the next write: all of the WAL copied,
  // and a reader (a Nix client) that began before it keeps the WAL from starting over, so the
  // write goes after it.
  const reader = new Database(file, { readonly: true });
  t.teardown(() => reader.close());
  reader.exec('BEGIN');
  reader.prepare('SELECT count(*) FROM ValidPaths').get();
  other.pragma('wal_checkpoint(PASSIVE)');
  const before = cp.wal().frames;
  t.true(before > 1000);
  write(10);
  reader.exec('COMMIT');
  t.true(cp.wal().frames > before, 'those few frames went at the end of the WAL');
  cp.wrote();
  t.is(cp.asked, 1, 'a checkpoint for them, though they are few');
  for (let i = 0; i < 200 && cp.running(); i++) await new Promise((r) => setTimeout(r, 50));
  t.false(cp.running(), 'the worker checkpointed and ended');
  write(10);
  t.true(cp.wal().frames < 100, `the WAL started over (${cp.wal().frames} frames)`);
  cp.wrote();
  t.is(cp.asked, 1, 'and asked for nothing');
});

test('Checkpointer: under back-to-back writes, past its bound a write waits for the checkpoint to catch up and starts the WAL over', async (t) => {
  const bound = 2000;
  const { file, cp, write } = checkpointed(t, bound);
  const start = walRestarts(file);
  let most = 0;
  let waited = 0;
  for (let i = 0; i < 60; i++) {
    // As the daemon does before each closure copy; between copies it only turns the event loop.
    const settled = cp.settle();
    if (settled) {
      waited++;
      await settled;
    } else {
      await new Promise(setImmediate);
    }
    const before = cp.wal().frames;
    write(3000);
    most = Math.max(most, cp.wal().frames);
    t.true(cp.wal().frames - before < 1000, 'each write is under 1000 frames');
    cp.wrote();
  }
  t.true(most < bound + 1000, `the WAL stayed under its bound and one write (at most ${most} frames, bound ${bound})`);
  t.true(walRestarts(file) > start, 'the WAL started over');
  t.true(waited > 0, 'some writes waited');
});

test('Checkpointer: a worker that ends when idle cuts the WAL file a burst made large back to nothing', async (t) => {
  const { file, cp, write } = checkpointed(t);
  write(120_000);
  const burst = fs.statSync(`${file}-wal`).size;
  t.true(burst > 32 * 1024 * 1024, `the burst made a WAL of ${burst} bytes`);
  cp.wrote();
  t.true(cp.running());
  let size = burst;
  for (let i = 0; i < 200 && (cp.running() || size > 0); i++) {
    await new Promise((r) => setTimeout(r, 50));
    size = fs.statSync(`${file}-wal`).size;
  }
  t.false(cp.running(), 'the worker ended');
  t.is(size, 0, 'and the WAL file is empty');
});

test('Checkpointer: a reader in the WAL when the idle worker tries to cut it back only delays the cut: it is tried again until it happens', async (t) => {
  const { file, cp, write } = checkpointed(t);
  write(120_000);
  // A Nix client's read transaction, begun before any checkpoint: it reads from the WAL, which
  // a TRUNCATE checkpoint then cannot reset (it waits for nobody).
  const reader = new Database(file);
  t.teardown(() => { if (reader.open) reader.close(); });
  reader.exec('BEGIN');
  reader.prepare('SELECT count(*) FROM ValidPaths').get();
  cp.wrote();
  const alive = setInterval(() => undefined, 100); // the worker is unref'd, as under the daemon
  try {
    await new Promise((r) => setTimeout(r, 1500)); // the checkpoint, and a try or more to cut
    t.true(fs.statSync(`${file}-wal`).size > 0, 'not cut while the reader is in the WAL');
    t.true(cp.running(), 'the worker stays to try again');
    reader.exec('COMMIT');
    reader.close();
    let size = -1;
    for (let i = 0; i < 100 && (cp.running() || size !== 0); i++) {
      await new Promise((r) => setTimeout(r, 50));
      size = fs.statSync(`${file}-wal`).size;
    }
    t.is(size, 0, 'cut once the reader is gone');
    t.false(cp.running(), 'and the worker ended');
  } finally {
    clearInterval(alive);
  }
});

test('Checkpointer: writes too small to ask for a checkpoint get the WAL file cut back once they stop', async (t) => {
  const { file, cp, write } = checkpointed(t);
  write(100);
  cp.wrote();
  t.true(cp.wal().frames > 0 && cp.wal().frames < 1000, `${cp.wal().frames} frames: no checkpoint asked`);
  t.true(fs.statSync(`${file}-wal`).size > 0);
  const alive = setInterval(() => undefined, 100);
  try {
    let size = -1;
    for (let i = 0; i < 100 && (size !== 0 || cp.running()); i++) {
      await new Promise((r) => setTimeout(r, 50));
      size = fs.statSync(`${file}-wal`).size;
    }
    t.is(size, 0, 'the WAL file is empty');
    t.false(cp.running(), 'and the worker that cut it ended');
  } finally {
    clearInterval(alive);
  }
});

test('Checkpointer: reading the WAL\'s frames keeps SQLite\'s locks on -shm, so another process opening the DB does not rebuild the wal-index under it', (t) => {
  const { up, file, cp, write } = checkpointed(t);
  write(3000);
  up.db.pragma('wal_checkpoint(PASSIVE)');
  const before = cp.wal();
  t.true(before.checkpointed > 0 && before.checkpointed === before.frames, `all ${before.frames} frames copied`);
  cp.wal();
  // A Nix client opening the DB: it takes the wal-index over (and rebuilds it from the WAL,
  // with nothing copied) only when no other process holds its lock on -shm.
  const script = `const D = require(${JSON.stringify(require.resolve('better-sqlite3'))}); const db = new D(${JSON.stringify(file)}); db.prepare('SELECT count(*) FROM ValidPaths').get(); db.close();`;
  execFileSync(process.execPath, ['-e', script]);
  t.deepEqual(cp.wal(), before, 'the wal-index is the one the daemon\'s connection made');
});

// Serial: the worker's end must be seen between the idle timer and the worker's exit, which
// another test's synchronous writes on this thread would hide.
test.serial('Checkpointer: a write waits (without blocking the thread) while an idle worker cuts the WAL file back', async (t) => {
  const { file, cp, write } = checkpointed(t);
  write(120_000);
  cp.wrote();
  let settled: Promise<void> | null = null;
  for (const end = Date.now() + 10_000; Date.now() < end && settled === null;) {
    await new Promise(setImmediate);
    settled = cp.settle();
    // Asked first: the worker empties the file well before it ends.
    if (settled === null && fs.statSync(`${file}-wal`).size === 0) break;
  }
  t.not(settled, null, 'settle() answered a promise while the worker was ending');
  // The worker is unref'd: something must keep this process's event loop going, as the FUSE
  // session does the daemon's.
  const alive = setInterval(() => undefined, 100);
  try { await settled; } finally { clearInterval(alive); }
  t.false(cp.running(), 'it resolved once the worker ended');
  t.is(fs.statSync(`${file}-wal`).size, 0, 'with the WAL file cut back');
});

test('pagedValidNames reads a DB\'s valid paths page by page, in order, only those under the store dir', (t) => {
  const db = new Database(':memory:');
  t.teardown(() => db.close());
  db.exec('CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL)');
  const names = Array.from({ length: 10_000 }, (_, i) => `${String(i).padStart(32, '0')}-n${i}`);
  const insert = db.prepare('INSERT INTO ValidPaths (path) VALUES (?)');
  for (const n of [...names].reverse()) insert.run(`/nix/store/${n}`);
  insert.run('/nix/storeX/not-this'); // sorts after the store dir's paths
  insert.run('/another/store/nor-this');
  const page = db.prepare(VALID_PAGE_SQL).pluck();
  let pages = 0;
  const got = [...pagedValidNames('/nix/store', (after) => { pages++; return page.all(after) as string[]; })];
  t.deepEqual(got, names, 'every name once, in order');
  t.is(pages, 3, '10,000 names in pages of 4,096');
});

test('after close, a row restore still queued touches no DB (it would only log that the connection is closed)', async (t) => {
  const { dir, lower, up, lo } = await freshDbs(t);
  const md = new Metadata(up, lo, 'mirror', new OverlayStats());
  md.importAll();
  const logFile = path.join(dir, 'log');
  log.setFile(logFile);
  t.teardown(() => log.setFile(undefined));
  md.close();
  // What a restore queued before the unmount does when it runs after it.
  md.upperRemoved(lower.manifest.paths.appOut.slice('/nix/store/'.length));
  const logged = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
  t.false(/could not restore/.test(logged), logged);
});

/**
 * Makes the lower DB file look rewritten (new times, as a writer's checkpoint into it would)
 * from inside the copies that read it: after a row is inserted into `up`'s ValidPaths, when
 * `when(its id)` says so. `times()`: how often it did; `stop()` removes the hook.
 */
function rewriteLowerDuringInserts(up: UpperDb, file: string, when: (id: number) => boolean): { times(): number; stop(): void } {
  let times = 0;
  up.db.function('lower_rewritten', (id: unknown) => {
    if (when(Number(id))) {
      const at = new Date(Date.now() + ++times * 1000);
      fs.utimesSync(file, at, at);
    }
    return 0;
  });
  up.db.exec('CREATE TEMP TRIGGER rewrite AFTER INSERT ON main.ValidPaths BEGIN SELECT lower_rewritten(NEW.id); END');
  return { times: () => times, stop: () => up.db.exec('DROP TRIGGER temp.rewrite') };
}

/** A fresh lower store, with a new upper DB and a LowerDb over it (the caller closes them). */
async function freshDbs(t: ExecutionContext): Promise<{ dir: string; lower: LowerFixture; file: string; up: UpperDb; lo: LowerDb }> {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const file = dbFile(lower.root);
  return { dir, lower, file, up: UpperDb.open(path.join(dir, 'db')), lo: new LowerDb(file) };
}

test('a row restore waits while a client of the mount holds the path\'s lock, and is made once the lock is free', async (t) => {
  const { lower, up, lo } = await freshDbs(t);
  const md = new Metadata(up, lo, 'mirror', new OverlayStats());
  t.teardown(() => md.close());
  md.importAll();
  const { appOut } = lower.manifest.paths;
  // As Nix deletes a path's row before its files: here a build that deletes a stale upper copy
  // of the path it holds the lock of, then the copy itself (upperRemoved).
  const id = up.idOf(appOut) as number;
  up.db.prepare('DELETE FROM Refs WHERE referrer = ?').run(id);
  up.db.prepare('DELETE FROM ValidPaths WHERE id = ?').run(id);
  const locked = new Set([appOut]);
  md.heldLocks = fakeLocks(locked).held;
  md.upperRemoved(appOut.slice('/nix/store/'.length));
  await new Promise((r) => setTimeout(r, 400));
  t.is(up.idOf(appOut), undefined, 'restored while the lock was held');
  locked.clear();
  for (const until = Date.now() + 3000; up.idOf(appOut) === undefined && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
  t.not(up.idOf(appOut), undefined, 'restored once the lock was free');
  t.deepEqual(refs(up.db), refs(lo.conn()));
});

test('mirror: an import during which the lower DB file changed is not taken as done: rolled back, read again, and after three such reads refused', async (t) => {
  const { file, up, lo } = await freshDbs(t);
  t.teardown(() => { lo.close(); up.close(); });
  const rowsThere = (up.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number);
  // At the first row of each read of the import, in the first `changes` reads. A read again
  // inserts the same ids from the start (the first was rolled back).
  let changes = 0, lastId = Number.MAX_SAFE_INTEGER;
  const rewrite = rewriteLowerDuringInserts(up, file, (id) => {
    const first = id <= lastId;
    lastId = id;
    return first && changes-- > 0;
  });
  const mirror = new Mirror(up, lo);

  changes = Number.MAX_SAFE_INTEGER;
  t.throws(() => mirror.importNew(), { instanceOf: LowerFileChanged });
  t.is(rewrite.times(), 3, 'read three times');
  t.is(mirror.lastLowerId, 0, 'nothing taken as imported');
  t.is(up.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get(), rowsThere, 'nothing committed');

  changes = 1;
  lastId = Number.MAX_SAFE_INTEGER;
  const r = mirror.importNew();
  t.is(rewrite.times(), 4, 'the file changed during the first read only');
  t.is(r.count, lo.conn().prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number, 'the second read imported every row');
  t.is(mirror.lastLowerId, lo.maxId());
});

test('seed: the lower DB copied whole, unless its file changes during every copy (then rows are imported one by one)', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const lo = new LowerDb(dbFile(lower.root));
  t.teardown(() => lo.close());
  const lowerRows = lo.conn().prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number;

  const seeded = seedFromLower(lo, path.join(dir, 'db'));
  t.deepEqual(seeded, { maxId: lo.maxId() });
  const copy = new Database(path.join(dir, 'db', 'db.sqlite'), { readonly: true });
  t.is(copy.prepare('SELECT count(*) FROM ValidPaths').pluck().get(), lowerRows, 'every row');
  copy.close();

  // A lower DB whose file a writer keeps rewriting (its identity differs at every look).
  class Rewritten extends LowerDb {
    private n = 0;
    override fileIdentity(): string { return String(this.n++); }
  }
  const busy = new Rewritten(dbFile(lower.root));
  t.teardown(() => busy.close());
  const r = seedFromLower(busy, path.join(dir, 'db2'));
  t.true('unseeded' in r && /changed during each of 3 copies/.test(r.unseeded), JSON.stringify(r));
  t.false(fs.existsSync(path.join(dir, 'db2', 'db.sqlite')), 'no DB put in place');
  t.deepEqual(fs.readdirSync(path.join(dir, 'db2')), [], 'and no copy left behind');
});

test('mirror: a mount whose first import keeps meeting a changing lower DB file goes on, and the follower imports the rows', async (t) => {
  const { lower, file, up, lo } = await freshDbs(t);
  const md = new Metadata(up, lo, 'mirror', new OverlayStats());
  t.teardown(() => md.close());
  const rewrite = rewriteLowerDuringInserts(up, file, () => true);
  t.is(md.importAll(), 0, 'nothing imported, and no error');
  rewrite.stop();
  const target = lower.manifest.paths.appOut;
  t.is(up.idOf(target), undefined);
  md.startFollower(50, () => undefined);
  const deadline = Date.now() + 5000;
  while (up.idOf(target) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.not(up.idOf(target), undefined, 'imported by the follower');
});

test('closure copy: one during which the lower DB file changed throws a torn read (withBusyRetry tries it again) and copies nothing', async (t) => {
  const { lower, file, up, lo } = await freshDbs(t);
  t.teardown(() => { lo.close(); up.close(); });
  let once = true;
  rewriteLowerDuringInserts(up, file, () => { const now = once; once = false; return now; });
  const target = lower.manifest.paths.appOut;
  const err = t.throws(() => copyClosure(up, lo, [target]), { instanceOf: LowerFileChanged });
  t.true(isTornRead(err));
  t.is(up.idOf(target), undefined, 'nothing copied');
  t.true(await withBusyRetry(() => copyClosure(up, lo, [target])) > 0, 'copied when read again');
  t.not(up.idOf(target), undefined);
});

test('mirror: an import longer than the gaps between a writer\'s checkpoints gets done in smaller transactions', async (t) => {
  const dir = tempDir(t);
  const root = await mirrorRoot(dir, 5000);
  const file = dbFile(path.join(root, 'root'));
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(file);
  t.teardown(() => { lo.close(); up.close(); });
  // A writer that checkpoints into the lower DB file after every 1,500 rows the import
  // inserts (rolled back or not): an import of all 5,000 at once never reads it whole.
  let sinceCheckpoint = 0;
  const rewrite = rewriteLowerDuringInserts(up, file, () => {
    if (++sinceCheckpoint < 1500) return false;
    sinceCheckpoint = 0;
    return true;
  });
  const mirror = new Mirror(up, lo);
  const r = mirror.importNew();
  t.true(rewrite.times() >= 2, `the writer checkpointed during the import (${rewrite.times()} times)`);
  t.is(r.count, 5000, 'every row imported');
  t.is(mirror.lastLowerId, lo.maxId());
  t.is(up.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get(), 5000);
  t.is(r.paths?.length, 5000, 'and listed, across the transactions');
});

test('mirror: a remount whose first import is refused leaves the GC roots as they were, and the follower\'s import syncs them', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const file = dbFile(lower.root);
  const rootsDir = path.join(dir, 'roots');
  const rootCount = (): number => (fs.existsSync(rootsDir) ? fs.readdirSync(rootsDir).length : 0);
  const mount = (): { md: Metadata; up: UpperDb } => {
    const up = UpperDb.open(path.join(dir, 'db'));
    const lo = new LowerDb(file);
    const md = new Metadata(up, lo, 'mirror', new OverlayStats());
    md.roots = new LowerRoots(rootsDir, lo, path.join(dir, 'stamp'));
    md.duplicates = () => new Set();
    return { md, up };
  };
  const first = mount();
  first.md.importAll();
  first.md.syncRoots();
  const rooted = rootCount();
  t.true(rooted > 0, 'the first mount rooted the lower objects');
  first.md.close();

  // The remount's import meets a lower DB file that changes at every read.
  const again = mount();
  t.teardown(() => again.md.close());
  const rewrite = rewriteLowerDuringInserts(again.up, file, () => true);
  // The merged DB has every row already: the import inserts nothing, so make it insert one.
  const added = await lowerAdd(lower.root, `refused-remount-${Date.now()}`);
  t.is(again.md.importAll(), 0, 'refused');
  let released = false;
  again.md.syncRootsInBackground({ release: () => { released = true; } });
  await new Promise((r) => setTimeout(r, 300));
  t.true(released, 'the GC lock is not kept');
  t.is(rootCount(), rooted, 'the roots are as the first mount left them');

  rewrite.stop();
  again.md.startFollower(50, () => undefined);
  const deadline = Date.now() + 5000;
  while (again.up.idOf(added) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.not(again.up.idOf(added), undefined, 'imported by the follower');
  t.is(rootCount(), rooted + 1, 'and rooted, with the others kept');
});

test('mirror: a new lower path the upper layer has too (both stores added it at once) is imported as a duplicate: not rooted, so Nix can collect the upper copy', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const rootsDir = path.join(dir, 'roots');
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(dbFile(lower.root));
  const md = new Metadata(up, lo, 'mirror', new OverlayStats());
  t.teardown(() => md.close());
  md.roots = new LowerRoots(rootsDir, lo, path.join(dir, 'stamp'));
  let upper = new Set<string>();
  md.duplicates = () => upper;
  md.importAll();
  md.syncRoots();
  const both = await lowerAdd(lower.root, `added-by-both-${Date.now()}`);
  const lowerOnly = await lowerAdd(lower.root, `added-by-lower-${Date.now()}`);
  upper = new Set([path.basename(both)]);
  md.startFollower(50, () => undefined);
  const deadline = Date.now() + 5000;
  const rooted = (p: string): boolean => fs.readdirSync(rootsDir).includes(path.basename(p)); // symlinks to /nix/store
  // Both are imported in one go (added before the follower started), then rooted.
  while (!rooted(lowerOnly) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.true(rooted(lowerOnly), 'a new lower-only path is imported and rooted');
  t.not(up.idOf(both), undefined, 'the duplicate is imported');
  t.false(rooted(both), 'but not rooted');
});

test('mirror: a read torn with an error (SQLITE_CORRUPT) is read again, as one whose file changed', async (t) => {
  const { up, lo } = await freshDbs(t);
  t.teardown(() => { lo.close(); up.close(); });
  // SQLite reports a torn page as SQLITE_CORRUPT from the statement that read it: here, the
  // import's first insert, once.
  let thrown = 0;
  up.db.function('torn_page', () => {
    if (thrown++ === 0) throw Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' });
    return 0;
  });
  up.db.exec('CREATE TEMP TRIGGER torn AFTER INSERT ON main.ValidPaths BEGIN SELECT torn_page(); END');
  const mirror = new Mirror(up, lo);
  const r = mirror.importNew();
  t.true(thrown > 1, 'the first read failed, and the import was read again');
  t.is(r.count, lo.conn().prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number, 'every row imported');
});

/** The lower DB's rows, references and derivation outputs of the closure of `top`, as rows()/refs()/outputs() give them. */
function lowerClosure(file: string, top: string): { rows: Map<string, Omit<Row, 'id'>>; refs: string[]; outputs: string[] } {
  const db = new Database(file, { readonly: true });
  try {
    db.exec(`CREATE TEMP TABLE c AS WITH RECURSIVE closure(id) AS (SELECT id FROM ValidPaths WHERE path = '${top}'
      UNION SELECT r.reference FROM Refs r JOIN closure ON r.referrer = closure.id) SELECT id FROM closure`);
    const inClosure = (p: string): boolean => (db.prepare('SELECT 1 FROM c JOIN ValidPaths v ON v.id = c.id WHERE v.path = ?').get(p) !== undefined);
    const r = rows(db);
    for (const p of [...r.keys()]) if (!inClosure(p)) r.delete(p);
    return {
      rows: r,
      refs: refs(db).filter((e) => inClosure(e.split(' -> ')[0])),
      outputs: outputs(db).filter((o) => inClosure(o.split(' ')[0])),
    };
  } finally {
    db.close();
  }
}

test.serial('lazy: a closure copy whose lower DB file a writer rewrites more often than a whole copy takes still copies the exact closure, in pieces', async (t) => {
  const dir = tempDir(t);
  const root = await mirrorRoot(dir, 5000);
  const file = dbFile(path.join(root, 'root'));
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(file);
  const stats = new OverlayStats();
  const traced: string[] = [];
  stats.trace = (kind, _path, detail) => traced.push(`${kind} ${detail}`);
  const md = new Metadata(up, lo, 'lazy', stats);
  t.teardown(() => md.close());
  // The largest id: an output whose closure is 3,314 rows, so first tried in one transaction.
  const top = lo.conn().prepare('SELECT path FROM ValidPaths ORDER BY id DESC LIMIT 1').pluck().get() as string;
  const want = lowerClosure(file, top);
  t.true(want.rows.size > 3000, `a big closure (${want.rows.size} rows)`);
  // A writer checkpointing into the lower DB file after every 1,500 rows a copy inserts
  // (rolled back or not): no copy of the whole closure is ever read whole. Before, the lookup
  // failed after 4 such tries and was answered with no rows.
  let sinceCheckpoint = 0;
  const rewrite = rewriteLowerDuringInserts(up, file, () => {
    if (++sinceCheckpoint < 1500) return false;
    sinceCheckpoint = 0;
    return true;
  });
  await md.lowerLookup(top.slice('/nix/store/'.length));
  rewrite.stop();
  t.true(rewrite.times() >= 2, `the writer checkpointed during the copy (${rewrite.times()} times)`);
  t.deepEqual(rows(up.db), want.rows, 'exactly the closure\'s rows');
  t.deepEqual(refs(up.db), want.refs, 'and references');
  t.deepEqual(outputs(up.db), want.outputs, 'and derivation outputs');
  t.deepEqual(up.db.pragma('foreign_key_check'), []);
  t.is(stats.counters.closuresInPieces, 1);
  t.true(stats.counters.tornReads >= 1);
  t.regex(traced.join('\n'), /closure \d+ rows in \d+ transactions, \d+ torn reads read again/);
});

// Serial: making the lower DB holds the thread for seconds on a loaded machine, and the
// concurrent tests time their waits.
test.serial('closure copy in pieces: a closure larger than one transaction takes goes in pieces, each committed with every reference of its rows', async (t) => {
  const dir = tempDir(t);
  const root = await mirrorRoot(dir, 8_000);
  const file = dbFile(path.join(root, 'root'));
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(file);
  t.teardown(() => { lo.close(); up.close(); });
  const top = lo.conn().prepare('SELECT path FROM ValidPaths ORDER BY id DESC LIMIT 1').pluck().get() as string;
  const want = lowerClosure(file, top);
  const wholeRows = 4_000; // below the default, so that a lower DB quick to make has such a closure
  t.true(want.rows.size > wholeRows, `larger than one transaction copies (${want.rows.size} rows)`);
  // After each commit: every row the merged DB has has as many references as in the lower DB.
  const check = new Database(path.join(dir, 'db', 'db.sqlite'), { readonly: true });
  t.teardown(() => check.close());
  check.exec(`ATTACH DATABASE '${lo.uri()}' AS lower`);
  const short = check.prepare(`SELECT count(*) FROM main.ValidPaths u JOIN lower.ValidPaths l ON l.path = u.path
    WHERE (SELECT count(*) FROM main.Refs r WHERE r.referrer = u.id) != (SELECT count(*) FROM lower.Refs r WHERE r.referrer = l.id)`).pluck();
  const commits: number[] = [];
  let topBefore = false;
  let turns = 0;
  const ticker = setInterval(() => turns++, 0);
  const r = await copyClosureInPieces(up, lo, [top], {
    wrote: () => {
      commits.push(short.get() as number);
      if (up.idOf(top) !== undefined && (up.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number) < want.rows.size) topBefore = true;
    },
  }, wholeRows);
  clearInterval(ticker);
  t.is(r.rows, want.rows.size);
  t.true(r.transactions > 1 && commits.length === r.transactions, `${r.transactions} transactions`);
  t.deepEqual(commits, commits.map(() => 0), 'no row without its references at any commit');
  t.false(topBefore, 'the path asked for got its row last');
  t.true(turns > 0, 'timers ran between the pieces');
  t.deepEqual(rows(up.db), want.rows);
  t.deepEqual(refs(up.db), want.refs);
  t.deepEqual(outputs(up.db), want.outputs);
  t.deepEqual(await copyClosureInPieces(up, lo, [top]), { rows: 0, transactions: 1, torn: 0, stopped: false }, 'nothing left to copy');
});

test('lazy: a closure copy that keeps failing is tried again ever less often, not at every change of the lower DB', async (t) => {
  const { lower, file, up, lo } = await freshDbs(t);
  const md = new Metadata(up, lo, 'lazy', new OverlayStats());
  t.teardown(() => md.close());
  const target = lower.manifest.paths.appOut;
  let tries = 0;
  up.db.function('refuse', () => { tries++; return 0; });
  up.db.exec("CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.ValidPaths BEGIN SELECT refuse(); SELECT RAISE(ABORT, 'test: the copy fails'); END");
  await t.throwsAsync(md.lowerLookup(target.slice('/nix/store/'.length)) ?? Promise.resolve(), { any: true, message: /the copy fails/ });
  t.is(tries, 1);
  md.startFollower(20, () => undefined);
  // A lower store that a writer changes every 60 ms, 20 times.
  const writer = new Database(file);
  for (let i = 0; i < 20; i++) {
    writer.prepare('INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, 1, 1)')
      .run(`/nix/store/${'a'.repeat(32)}-grow-${i}`, `sha256:${'0'.repeat(52)}`);
    writer.pragma('wal_checkpoint(TRUNCATE)');
    await new Promise((r) => setTimeout(r, 60));
  }
  writer.close();
  t.true(tries <= 3, `tried ${tries} times in 1.2 s (before: once at every change, 20)`);
  up.db.exec('DROP TRIGGER temp.refuse');
  const deadline = Date.now() + 6000;
  while (up.idOf(target) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.not(up.idOf(target), undefined, 'copied at a later try, with no further lookup or change');
});

test('mirror: the lower store\'s GC of its newest path is not taken for a replaced DB (no rescan); a DB made afresh with other ids is', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const up = UpperDb.open(path.join(dir, 'db'));
  const lo = new LowerDb(dbFile(lower.root));
  t.teardown(() => { up.close(); lo.close(); });
  const added = await lowerAdd(lower.root, 'newest');
  const mirror = new Mirror(up, lo);
  mirror.importNew();
  t.false(mirror.renumbered(), 'the DB imported from');

  // The lower store's own GC deletes the path the last import ended on.
  const del = await run('nix-store', ['--store', lower.root, '--delete', added], { env: nixEnv() });
  t.is(del.code, 0, del.stderr);
  lo.reopen();
  t.is(lo.pathOfId(mirror.lastLowerId), null, 'precondition: the row the import ended on is gone');
  t.false(mirror.renumbered(), 'a deletion is not a replaced DB');

  // The same store made afresh, a new path first: every id names another path.
  const next = path.join(dir, 'lower-v2');
  fs.mkdirSync(path.join(next, 'nix/store'), { recursive: true });
  await lowerAdd(next, 'renumbered-first');
  await check('bash', [path.join(REPO, 'scripts/make-lower-store.sh'), next, path.join(dir, 'manifest-v2.json')]);
  fs.copyFileSync(dbFile(next), `${dbFile(lower.root)}.tmp`);
  fs.renameSync(`${dbFile(lower.root)}.tmp`, dbFile(lower.root));
  lo.reopen();
  t.true(mirror.renumbered(), 'a DB made afresh');
  mirror.rewind();
  t.false(mirror.renumbered(), 'rewound: nothing to compare until the next import');
});

test('rowDifferences: signatures the merged row adds are its own; one of the lower row\'s it lacks is a difference, which repair restores beside its own', (t) => {
  const row = (sigs: string | null): PathRow => ({
    id: 1, path: '/nix/store/00000000000000000000000000000000-x', hash: 'sha256:00', registrationTime: 1, deriver: null, narSize: 1, ultimate: 0, sigs, ca: null,
  });
  t.deepEqual(rowDifferences(row('local:a'), [], row(null), []), [], 'a signature only the merged row has');
  t.deepEqual(rowDifferences(row('lower:b local:a'), [], row('lower:b'), []), [], 'the lower row\'s signature and one more');
  t.deepEqual(rowDifferences(row(''), [], row(null), []), [], 'none and NULL are alike');
  t.deepEqual(rowDifferences(row('local:a'), [], row('lower:b'), []), [{ field: 'signatures', upper: ['local:a'], lower: ['lower:b'] }]);
  t.is(mergedSignatures(row('local:a'), row('lower:b')), 'lower:b local:a');
  t.is(mergedSignatures(row('lower:b'), row('lower:b')), 'lower:b');
  t.is(mergedSignatures(row(null), row('')), null);
});
