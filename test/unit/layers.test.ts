// The layer module (TopLevelIndex) and the overlay operations (Overlay), called directly over
// temp upper/lower/work dirs: no mount. The lower dir is the oracle: every test that tries to
// change it compares its whole tree (with times) before and after.
import test, { ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Layer, LayerDirs, TopLevelIndex, TopLevelSink, TopReason } from '../../src/layers/layers';
import { ROOT_INO } from '../../src/layers/inodes';
import { Attr, Overlay } from '../../src/overlay/overlay';
import { E } from '../../src/util/errno';
import { check } from '../helpers/exec';
import { tempDir } from '../helpers/mount';
import { treeLines } from '../helpers/tree';

const { O_RDONLY, O_WRONLY, O_RDWR, O_TRUNC, O_APPEND, O_CREAT, R_OK, W_OK } = fs.constants;
const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A deterministic store object name for `label`. */
function nm(label: string): string {
  const digest = createHash('sha256').update(label).digest();
  let hash = '';
  for (let i = 0; i < 32; i++) hash += NIX32[digest[i] & 31];
  return `${hash}-${label}`;
}

// Top-level names of the layout.
const LF = nm('lower-file');          // lower only: a file
const LD = nm('lower-dir');           // lower only: a dir with a, sub/b, link -> a, empty/
const BOTH = nm('both-file');         // in both layers
const BOTHDIR = nm('both-dir');       // in both layers
const WH1 = nm('whiteout-dotfile');   // lower object hidden by upper .wh.NAME
const WH2 = nm('whiteout-chardev');   // lower object hidden by an upper char device 0/0
const WHX = nm('whiteout-and-object'); // lower object; upper has .wh.NAME and NAME
const UO = nm('upper-only');          // upper only: a dir with `file`
const UF = nm('upper-file');          // upper only: a file
const CD = nm('chardev-1-3');         // upper only: a char device 1/3 (not a whiteout)
const LOWER_LOCK = `${nm('lower-locked')}.lock`;
const UPPER_LOCK = `${nm('upper-locked')}.lock`;
const LOWER_BOOKKEEPING = ['.links', LOWER_LOCK, `${nm('chrooted')}.drv.chroot`, `${nm('checked')}.check`, '.tmp-link-1-2', 'not-a-store-path', 'add-1-0'];

interface Layout { dirs: LayerDirs; upper: string; lower: string; work: string }

async function layout(t: ExecutionContext): Promise<Layout> {
  const base = tempDir(t, 'lo-layers-');
  const upper = path.join(base, 'upper'), lower = path.join(base, 'lower'), work = path.join(base, 'work');
  for (const d of [upper, lower, work]) await fs.promises.mkdir(d);
  const w = (p: string, content: string): Promise<void> => fs.promises.writeFile(p, content);

  await w(path.join(lower, LF), 'lower file\n');
  await fs.promises.mkdir(path.join(lower, LD, 'sub'), { recursive: true });
  await fs.promises.mkdir(path.join(lower, LD, 'empty'));
  await w(path.join(lower, LD, 'a'), 'A');
  await w(path.join(lower, LD, 'sub/b'), 'B');
  await fs.promises.symlink('a', path.join(lower, LD, 'link'));
  await w(path.join(lower, BOTH), 'lower copy, longer than the upper one\n');
  await fs.promises.mkdir(path.join(lower, BOTHDIR));
  await w(path.join(lower, BOTHDIR, 'x'), 'lower x');
  for (const n of [WH1, WH2, WHX]) await w(path.join(lower, n), `lower ${n}`);
  await fs.promises.mkdir(path.join(lower, '.links'));
  await w(path.join(lower, '.links', 'abc'), 'pooled');
  await w(path.join(lower, LOWER_LOCK), '');
  await fs.promises.mkdir(path.join(lower, `${nm('chrooted')}.drv.chroot`));
  await w(path.join(lower, `${nm('checked')}.check`), '');
  await w(path.join(lower, '.tmp-link-1-2'), '');
  await w(path.join(lower, 'not-a-store-path'), '');
  await fs.promises.mkdir(path.join(lower, 'add-1-0'));
  // Store objects are read-only and have mtime 1, as Nix leaves them.
  for (const n of [LF, LD, `${LD}/a`, `${LD}/sub/b`, `${LD}/sub`, `${LD}/empty`]) await fs.promises.utimes(path.join(lower, n), 1, 1);
  await check('chmod', ['-R', 'a-w', path.join(lower, LD), path.join(lower, LF)]);

  await w(path.join(upper, BOTH), 'upper copy\n');
  await fs.promises.mkdir(path.join(upper, BOTHDIR));
  await w(path.join(upper, BOTHDIR, 'y'), 'upper y');
  await w(path.join(upper, `.wh.${WH1}`), '');
  await check('mknod', [path.join(upper, WH2), 'c', '0', '0']);
  await w(path.join(upper, `.wh.${WHX}`), '');
  await w(path.join(upper, WHX), 'an upper object under a whiteout');
  await fs.promises.mkdir(path.join(upper, UO));
  await w(path.join(upper, UO, 'file'), 'upper file\n');
  await w(path.join(upper, UF), 'top-level upper file\n');
  await check('mknod', [path.join(upper, CD), 'c', '1', '3']);
  await fs.promises.mkdir(path.join(upper, '.links'));
  await w(path.join(upper, UPPER_LOCK), '');
  return { dirs: { upperDir: upper, lowerDir: lower, workDir: work }, upper, lower, work };
}

const snapshot = (dir: string): Promise<string[]> => treeLines(dir, { times: true });
const attr = (t: ExecutionContext, r: Attr | number, what: string): Attr => {
  if (typeof r === 'number') throw new Error(`${what}: errno ${r}`);
  t.pass();
  return r;
};

// ---- TopLevelIndex ----------------------------------------------------------------------------

test('index: each top-level name resolves wholly to one layer', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  const cases: Array<[string, Layer | null, TopReason]> = [
    [UO, Layer.Upper, 'upper-object'], [UF, Layer.Upper, 'upper-object'], [CD, Layer.Upper, 'upper-object'],
    [BOTH, Layer.Upper, 'upper-object'], [BOTHDIR, Layer.Upper, 'upper-object'],
    [LF, Layer.Lower, 'lower-object'], [LD, Layer.Lower, 'lower-object'],
    [WH1, null, 'whiteout'], [WH2, null, 'whiteout'], [WHX, null, 'whiteout'],
    [nm('absent'), null, 'absent'],
  ];
  for (const [name, layer, reason] of cases) {
    t.is(ix.resolve(name), layer, `resolve ${name}`);
    t.is(ix.reason(name), reason, `reason ${name}`);
  }
  t.is(ix.resolve(''), null, 'the empty name');
  t.is(ix.upperKind(WH1), 'whiteout');
  t.is(ix.upperKind(WH2), 'whiteout');
  t.is(ix.upperKind(CD), 'object', 'a char device that is not 0/0 is an ordinary upper entry');
  t.is(ix.upperKind(`.wh.${WH1}`), undefined, 'the .wh. file is not an entry of its own');
  t.true(ix.lowerHas(BOTH) && ix.lowerHas(WH1), 'lowerHas ignores the upper layer');
});

test('index: lower bookkeeping names are hidden; in the upper layer they are ordinary entries', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  for (const n of LOWER_BOOKKEEPING) {
    t.false(ix.lowerHas(n), `lowerHas ${n}`);
    if (n !== '.links') t.is(ix.resolve(n), null, `resolve ${n}`);
    if (n !== '.links') t.is(ix.reason(n), 'lower-bookkeeping', `reason ${n}`);
  }
  t.is(ix.resolve('.links'), Layer.Upper, 'the merged .links is the upper one');
  t.is(ix.resolve(UPPER_LOCK), Layer.Upper, 'an upper lock file');
});

/** A LowerRegistry over a set of valid names, recording what it was asked. */
function registry(valid: Set<string>): { has(n: string): boolean; sortedNames(): string[]; asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    has: (n) => { asked.push(n); return valid.has(n); },
    sortedNames: () => [...valid].sort(),
  };
}

test('index: lower names that look like bookkeeping are objects when the lower DB says so (registry)', async (t) => {
  const l = await layout(t);
  const cargo = nm('Cargo.lock');
  await fs.promises.writeFile(path.join(l.lower, cargo), 'a store object\n');
  const ix = new TopLevelIndex(l.dirs, 1000);
  t.is(ix.resolve(cargo), null, 'without a registry a .lock name is bookkeeping');
  const reg = registry(new Set([cargo, LF, LD, BOTH, BOTHDIR, WH1, WH2, WHX]));
  ix.registry = reg;
  ix.refresh();
  t.is(ix.resolve(cargo), Layer.Lower, 'valid in the lower DB: a lower object');
  t.is(ix.reason(cargo), 'lower-object');
  t.is(ix.resolve(LOWER_LOCK), null, 'a lock file the lower DB does not know stays hidden');
  t.is(ix.reason(LOWER_LOCK), 'lower-bookkeeping');
  t.true(ix.listRoot().includes(cargo));
  t.false(ix.listRoot().includes(LOWER_LOCK));
  const absent = `${nm('never-there')}.lock`;
  t.is(ix.resolve(absent), null);
  t.false(reg.asked.includes(absent), 'names the lower dir does not have are not asked about (Nix looks up a .lock for every path it adds)');
});

// Timing: the lower store grows with synchronous calls, so no other test's work on this
// worker's event loop can come between the first answer and the check of the cached one.
test('index: a lower entry the lower DB does not list is not shown (lookup, listing, reason) until it is registered', async (t) => {
  const l = await layout(t);
  const partial = nm('build-in-progress');
  await fs.promises.mkdir(path.join(l.lower, partial, 'bin'), { recursive: true });
  const valid = new Set([LF, LD, BOTH, BOTHDIR, WH1, WH2, WHX]);
  const ix = new TopLevelIndex(l.dirs, 300);
  ix.registry = registry(valid);
  t.is(ix.resolve(partial), null, 'an unregistered lower dir does not resolve');
  t.is(ix.reason(partial), 'lower-unregistered');
  t.false(ix.listRoot().includes(partial), 'nor is it listed');
  t.deepEqual(ix.listRoot().slice().sort(), [UO, UF, CD, BOTH, BOTHDIR, '.links', UPPER_LOCK, LF, LD].sort(), 'registered lower objects are');
  valid.add(partial); // the lower store registers it
  t.is(ix.resolve(partial), null, 'the miss is cached for negativeTtlMs');
  t.is(ix.reason(partial), 'lower-unregistered');
  ix.forgetLower(partial); // what the follower does for a new lower row
  t.is(ix.resolve(partial), Layer.Lower, 'registered: a lower object');
  t.true(ix.listRoot().includes(partial));
  const later = nm('registered-later');
  await fs.promises.writeFile(path.join(l.lower, later), '');
  t.is(ix.resolve(later), null);
  valid.add(later);
  await sleep(400);
  t.is(ix.resolve(later), Layer.Lower, 'without the follower, after negativeTtlMs');
});

test('index: listRoot matches the lower dir against the registry in bytewise order', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  // Names around the edges of the order: upper/lower case, digits, the characters Nix allows.
  const extra = ['aaaa', 'AAAA', 'zz+y', 'zz-y', 'zz.y', 'zz_y', 'zz?y', 'zz=y', 'Zz', '00', '0-9'].map((s) => nm(s));
  for (const n of extra) await fs.promises.writeFile(path.join(l.lower, n), '');
  const registered = new Set([LF, BOTH, WH1, ...extra.filter((_, i) => i % 2 === 0), nm('in-the-db-only')]);
  const reg = registry(registered);
  ix.registry = reg;
  const lowerShown = ix.listRoot().filter((n) => !ix.upperKind(n));
  t.deepEqual(lowerShown.sort(), [LF, ...extra.filter((_, i) => i % 2 === 0)].sort());
  for (const n of lowerShown) t.is(ix.resolve(n), Layer.Lower);
  t.deepEqual(reg.asked, [], 'a listed name is known registered: `ls -l` after it asks the DB nothing');
});

test('index: listRoot remembers the lower names it shows unless a fast path answers their lookups', async (t) => {
  const l = await layout(t);
  const sink = (answering: boolean): TopLevelSink => ({ set: () => undefined, delete: () => undefined, rebuild: (fill) => fill(), answering: () => answering });
  for (const answering of [false, true]) {
    const ix = new TopLevelIndex(l.dirs, 1000);
    const reg = registry(new Set([LF]));
    ix.registry = reg;
    ix.attach(sink(answering));
    t.true(ix.listRoot().includes(LF));
    t.is(ix.resolve(LF), Layer.Lower);
    t.deepEqual(reg.asked, answering ? [LF] : [], answering ? 'with a fast path on, a lookup asks as before' : 'with one off (--no-fast-path, tracing), not at all');
  }
});

test('index: a negative lower answer expires after negativeTtlMs; a positive one stays until forgotten or refreshed', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 500);
  const grown = nm('grown-later');
  t.false(ix.lowerHas(grown));
  fs.writeFileSync(path.join(l.lower, grown), 'new in the lower store');
  t.false(ix.lowerHas(grown), 'the negative answer is cached');
  t.is(ix.resolve(grown), null);
  await sleep(1200); // ttl + the cache's 100 ms resolution, with slack
  t.true(ix.lowerHas(grown), 'the negative answer expired');
  t.is(ix.resolve(grown), Layer.Lower);

  await fs.promises.rm(path.join(l.lower, grown));
  t.true(ix.lowerHas(grown), 'a positive answer is kept (store objects are not removed from a lower store)');
  ix.forgetLower(grown);
  t.false(ix.lowerHas(grown), 'forgetLower drops it');

  const again = nm('grown-again');
  t.false(ix.lowerHas(again));
  fs.writeFileSync(path.join(l.lower, again), '');
  t.false(ix.lowerHas(again), 'cached negative');
  ix.refresh();
  t.true(ix.lowerHas(again), 'refresh forgets cached lower answers');
});

test('index: a long negativeTtlMs keeps the negative answer', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 60_000);
  const grown = nm('grown-slowly');
  t.false(ix.lowerHas(grown));
  await fs.promises.writeFile(path.join(l.lower, grown), '');
  await sleep(400);
  t.false(ix.lowerHas(grown), 'still the cached negative answer');
  ix.forgetLower(grown);
  t.true(ix.lowerHas(grown));
});

// lru-cache reads ttl 0 as "never expires": a miss must then not be cached at all.
test('index: negativeTtlMs 0 caches no negative answers', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 0);
  const grown = nm('grown-uncached');
  t.false(ix.lowerHas(grown));
  fs.writeFileSync(path.join(l.lower, grown), '');
  await sleep(200);
  t.true(ix.lowerHas(grown), 'with no negative caching the new lower object shows at once');
});

test('index: upperAdded, upperRemoved and clearWhiteout', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  const added = nm('added');
  ix.upperAdded(added);
  t.is(ix.resolve(added), Layer.Upper);
  ix.upperRemoved(added);
  t.is(ix.resolve(added), null, 'gone again');
  ix.upperRemoved(BOTH);
  t.is(ix.resolve(BOTH), Layer.Lower, 'removing the upper copy shows the lower object');

  ix.clearWhiteout(WH1);
  t.false(fs.existsSync(path.join(l.upper, `.wh.${WH1}`)), 'the .wh. file is removed from the upper dir');
  t.is(ix.resolve(WH1), Layer.Lower, 'the lower object shows once the whiteout is cleared');
  ix.clearWhiteout(WH2);
  t.false(fs.existsSync(path.join(l.upper, WH2)), 'the char device is removed from the upper dir');
  t.is(ix.resolve(WH2), Layer.Lower);

  ix.clearWhiteout(UO);
  ix.clearWhiteout(CD);
  t.true(fs.existsSync(path.join(l.upper, UO, 'file')), 'clearWhiteout leaves an object alone');
  t.true(fs.lstatSync(path.join(l.upper, CD)).isCharacterDevice(), 'clearWhiteout leaves a non-whiteout device alone');
  t.is(ix.resolve(UO), Layer.Upper);
});

test('index: removing an upper object asks the lower store again, even within negativeTtlMs', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 60_000);
  const name = nm('upper-then-lower');
  t.false(ix.lowerHas(name), 'looked up before it existed anywhere');
  ix.upperAdded(name);
  fs.writeFileSync(path.join(l.lower, name), 'the lower store gained it too');
  t.is(ix.resolve(name), Layer.Upper);
  ix.upperRemoved(name);
  t.is(ix.resolve(name), Layer.Lower, 'the lower copy shows at once, not after the cached miss expires');
});

test('index: listRoot is the union of both layers, once each, without whiteouts or lower bookkeeping', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  const names = ix.listRoot();
  t.is(new Set(names).size, names.length, `no duplicates: ${names.join(' ')}`);
  t.deepEqual(names.slice().sort(), [UO, UF, CD, BOTH, BOTHDIR, '.links', UPPER_LOCK, LF, LD].sort());
  ix.upperRemoved(BOTH);
  ix.upperAdded(nm('new'));
  t.deepEqual(ix.listRoot().slice().sort(), [UO, UF, CD, BOTH, BOTHDIR, '.links', UPPER_LOCK, LF, LD, nm('new')].sort(), 'follows upperAdded/upperRemoved');
  const entries = new Map(ix.upperEntries());
  t.is(entries.get(WH1), 'whiteout');
  t.is(entries.get(UO), 'object');
});

test('index: the upper dir is read at start and on refresh only', async (t) => {
  const l = await layout(t);
  const ix = new TopLevelIndex(l.dirs, 1000);
  const behind = nm('behind-the-index');
  await fs.promises.writeFile(path.join(l.upper, behind), '');
  await fs.promises.rm(path.join(l.upper, UF));
  t.is(ix.resolve(behind), null, 'not seen before refresh');
  t.is(ix.resolve(UF), Layer.Upper, 'still seen before refresh');
  ix.refresh();
  t.is(ix.resolve(behind), Layer.Upper);
  t.is(ix.resolve(UF), null);
});

// ---- Overlay ------------------------------------------------------------------------------

function overlay(l: Layout): { ov: Overlay; refused: string[]; removed: string[]; added: string[] } {
  const ov = new Overlay(l.dirs, { negativeTtlMs: 1000 });
  const refused: string[] = [], removed: string[] = [], added: string[] = [];
  ov.hooks = {
    lowerWriteRefused: (n) => refused.push(n),
    upperRemoved: (n) => removed.push(n),
    upperAdded: (n) => added.push(n),
  };
  return { ov, refused, removed, added };
}

test('overlay: every change to a lower object is EROFS and changes nothing in either layer', async (t) => {
  const l = await layout(t);
  const { ov, refused } = overlay(l);
  const lowerBefore = await snapshot(l.lower), upperBefore = await snapshot(l.upper);
  const errnos: Array<[string, number]> = [];
  const at = (what: string, r: number): void => { errnos.push([what, r < 0 ? -r : r]); };

  for (const f of [`/${LF}`, `/${LD}/a`, `/${LD}/sub/b`]) {
    for (const flags of [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_APPEND, O_WRONLY | O_CREAT]) at(`open ${f} ${flags}`, ov.open(f, flags));
    at(`truncate ${f}`, ov.truncate(f, 0));
    at(`chmod ${f}`, ov.chmod(f, 0o777));
    at(`chown ${f}`, ov.chown(f, 1, 1));
    at(`utimens ${f}`, ov.utimens(f, 5000, 5000));
    at(`utimens ${f} mtime only`, ov.utimens(f, undefined, 5000));
    at(`unlink ${f}`, ov.unlink(f));
    at(`access W_OK ${f}`, ov.access(f, W_OK));
  }
  const fd = ov.open(`/${LF}`, O_RDONLY);
  t.true(fd >= 0, 'a lower file opens read-only');
  const appendFd = ov.open(`/${LF}`, O_RDONLY | O_APPEND);
  t.true(appendFd >= 0, 'and read-only with O_APPEND, which writes nothing (a read-only filesystem allows it)');
  t.is(ov.release(appendFd), 0);
  at('ftruncate of a read-only lower fd', ov.ftruncate(`/${LF}`, fd, 0));
  t.is(ov.release(fd), 0);
  for (const d of [`/${LD}`, `/${LD}/sub`, `/${LD}/empty`]) {
    at(`rmdir ${d}`, ov.rmdir(d));
    at(`chmod ${d}`, ov.chmod(d, 0o700));
    // Nix's optimiser's toggle (owner write added, nothing else): answered as done, nothing changes.
    const mode = fs.lstatSync(path.join(l.lower, d)).mode & 0o7777;
    t.is(ov.chmod(d, mode | 0o200), 0, `u+w on ${d}`);
    t.is(fs.lstatSync(path.join(l.lower, d)).mode & 0o7777, mode, `u+w on ${d} changes nothing`);
    at(`mkdir in ${d}`, ov.mkdir(`${d}/new`, 0o755));
    at(`create in ${d}`, ov.create(`${d}/new`, 0o644));
    at(`symlink in ${d}`, ov.symlink('x', `${d}/new`));
    at(`mknod in ${d}`, ov.mknod(`${d}/new`));
    at(`link into ${d}`, ov.link(`/${UO}/file`, `${d}/new`));
    at(`rename into ${d}`, ov.rename(`/${UO}/file`, `${d}/new`));
  }
  at('chown of a lower symlink', ov.chown(`/${LD}/link`, 1, 1));
  at('utimens of a lower symlink', ov.utimens(`/${LD}/link`, 1, 1));
  at('unlink of a lower symlink', ov.unlink(`/${LD}/link`));
  at('rename from a lower object to the top level', ov.rename(`/${LD}/a`, `/${nm('target')}`));
  at('rename from a lower object into an upper one', ov.rename(`/${LD}/a`, `/${UO}/a`));
  at('rename within a lower object', ov.rename(`/${LD}/a`, `/${LD}/a2`));
  at('rename of a top-level lower object', ov.rename(`/${LF}`, `/${nm('target')}`));
  at('rename of a top-level lower dir', ov.rename(`/${LD}`, `/${nm('target')}`));
  at('rename of an upper file over a top-level lower object', ov.rename(`/${UF}`, `/${LF}`));
  at('rename of an upper file over a file in a lower object', ov.rename(`/${UF}`, `/${LD}/a`));

  for (const [what, errno] of errnos) t.is(errno, E.EROFS, what);
  const accessChecks = errnos.filter(([what]) => what.startsWith('access')).length;
  t.is(refused.length, errnos.length - accessChecks, 'the refusal hook heard every refused change (access is not a change)');
  t.true(refused.every((n) => n === LF || n === LD), `refused top-level names: ${[...new Set(refused)].join(' ')}`);
  t.deepEqual(await snapshot(l.lower), lowerBefore, 'the lower dir is unchanged');
  t.deepEqual(await snapshot(l.upper), upperBefore, 'the upper dir is unchanged');
  t.is(ov.access(`/${LF}`, R_OK), 0, 'R_OK on a lower file');
});

test('overlay: reads of lower objects come from the lower dir', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  const fd = ov.open(`/${LD}/sub/b`, O_RDONLY);
  t.true(fd >= 0);
  const buf = Buffer.alloc(16);
  t.is(ov.read(fd, buf, 16, 0), 1);
  t.is(buf.toString('utf8', 0, 1), 'B');
  t.is(ov.release(fd), 0);
  t.deepEqual(ov.readdir(`/${LD}`), ['.', '..', ...fs.readdirSync(path.join(l.lower, LD))]);
  t.is(ov.readlink(`/${LD}/link`), 'a');
  const a = attr(t, ov.getattr(`/${LF}`), 'getattr lower file');
  const st = fs.lstatSync(path.join(l.lower, LF));
  t.deepEqual([a.mode, a.size, a.mtime, a.uid, a.nlink], [st.mode, st.size, 1000, st.uid, st.nlink]);
});

test('overlay: new top-level names that are visible already are EEXIST', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  const upperBefore = await snapshot(l.upper);
  for (const n of [LF, LD, BOTH, UO, UF]) {
    t.is(ov.mkdir(`/${n}`, 0o755), E.EEXIST, `mkdir ${n}`);
    t.is(ov.create(`/${n}`, 0o644, O_RDWR | O_CREAT), -E.EEXIST, `create ${n}`);
    t.is(ov.symlink('x', `/${n}`), E.EEXIST, `symlink ${n}`);
    t.is(ov.link(`/${UO}/file`, `/${n}`), E.EEXIST, `link to ${n}`);
  }
  t.deepEqual(await snapshot(l.upper), upperBefore);
});

test('overlay: hard links from lower files are EPERM (ENOSPC into .links); a .tmp-link-* rename over a lower object is EMLINK', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  t.is(ov.link(`/${LF}`, `/${nm('copy')}`), E.EPERM, 'link of a top-level lower file');
  t.is(ov.link(`/${LD}/a`, `/${UO}/a`), E.EPERM, 'link of a file inside a lower object');
  t.is(ov.link(`/${LF}`, '/.links/0abc'), E.ENOSPC, 'link into .links (nix-store --optimise skips on ENOSPC)');
  const tmp = '/.tmp-link-42-7';
  const fd = ov.create(tmp, 0o644, O_RDWR | O_CREAT);
  t.true(fd >= 0);
  ov.release(fd);
  t.is(ov.rename(tmp, `/${LF}`), E.EMLINK, 'a .tmp-link over a top-level lower object');
  t.is(ov.rename(tmp, `/${LD}/a`), E.EMLINK, 'a .tmp-link over a file in a lower object');
  t.true(fs.existsSync(path.join(l.upper, tmp)), 'the .tmp-link is still there');
  t.false(fs.existsSync(path.join(l.upper, nm('copy'))));
  t.false(fs.existsSync(path.join(l.upper, UO, 'a')));
  t.is(ov.link(`/${UO}/file`, `/${nm('upper-link')}`), 0, 'a link within the upper layer');
  t.is(fs.statSync(path.join(l.upper, UO, 'file')).nlink, 2);
});

test('overlay: absent, whited-out, bookkeeping and dot-dot paths are ENOENT', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  for (const p of [`/${nm('absent')}`, `/${WH1}`, `/${WH2}`, `/${WHX}`, `/.wh.${WH1}`, `/${LOWER_LOCK}`, '/not-a-store-path', '/add-1-0',
    `/${UO}/../${LF}`, `/${UO}/./file`, `/${LD}/..`, `/${WH1}/x`, `/${nm('absent')}/x`]) {
    t.is(ov.getattr(p), E.ENOENT, `getattr ${p}`);
  }
  t.is(ov.readdir(`/${nm('absent')}`), E.ENOENT);
  t.is(ov.readdir(`/${WH2}`), E.ENOENT);
  t.is(ov.open(`/${WH1}`, O_RDONLY), -E.ENOENT);
  t.is(ov.mkdir(`/${nm('absent')}/x`, 0o755), E.ENOENT);
  t.is(ov.create(`/${WH1}/x`, 0o644), -E.ENOENT);
  t.is(ov.readlink(`/${nm('absent')}`), E.ENOENT);
});

test('overlay: names that merely start with dots (`..x`, `.x`) are ordinary names', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  for (const name of ['..x', '.x', '...']) {
    const p = `/${UO}/${name}`;
    const fd = ov.create(p, 0o644);
    t.true(fd >= 0, `create ${p}: ${fd}`);
    t.is(ov.release(fd), 0);
    t.not(typeof ov.getattr(p), 'number', `getattr ${p}`);
    t.true(fs.existsSync(path.join(l.upper, UO, name)), `${name} is in the upper dir`);
  }
});

test('overlay: names over 255 bytes are ENAMETOOLONG, counted in bytes', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  for (const n of ['n'.repeat(256), 'é'.repeat(128), '\u{1F600}'.repeat(64)]) {
    t.is(Buffer.byteLength(n), 256);
    for (const dir of ['', `/${UO}`, `/${LD}`]) t.is(ov.getattr(`${dir}/${n}`), E.ENAMETOOLONG, `getattr of a ${n.length}-unit name in ${dir || '/'}`);
    t.is(ov.mkdir(`/${n}`, 0o755), E.ENAMETOOLONG, 'mkdir');
    t.is(ov.create(`/${UO}/${n}`, 0o644), -E.ENAMETOOLONG, 'create');
    t.is(ov.symlink('x', `/${n}`), E.ENAMETOOLONG, 'symlink');
    t.is(ov.rename(`/${UF}`, `/${n}`), E.ENAMETOOLONG, 'rename');
  }
  const max = `/${UO}/${'é'.repeat(127)}x`;
  t.is(Buffer.byteLength(max) - UO.length - 2, 255);
  const fd = ov.create(max, 0o644, O_RDWR | O_CREAT);
  t.true(fd >= 0, '255 bytes are fine');
  ov.release(fd);
  t.is(attr(t, ov.getattr(max), 'getattr 255').size, 0);
});

test('overlay: libfuse\'s .fuse_hidden names live in the work dir, never in the store', async (t) => {
  const l = await layout(t);
  const { ov, removed } = overlay(l);
  const hidden = path.join(l.work, 'hidden');

  // libfuse hides a file unlinked while open by renaming it in its own dir.
  const tmp = nm('open-then-unlinked');
  const fd = ov.create(`/${tmp}`, 0o644, O_RDWR | O_CREAT);
  t.true(fd >= 0);
  t.is(ov.write(fd, Buffer.from('hidden data'), 11, 0), 11);
  const h1 = '/.fuse_hidden0000000100000001';
  t.is(ov.rename(`/${tmp}`, h1), 0, 'a top-level upper file hidden');
  t.true(fs.existsSync(path.join(hidden, '.fuse_hidden0000000100000001')), 'moved to the work dir');
  t.false(fs.existsSync(path.join(l.upper, '.fuse_hidden0000000100000001')), 'not in the upper dir');
  t.is(ov.index.upperKind('.fuse_hidden0000000100000001'), undefined, 'not in the index');
  t.is(ov.index.resolve(tmp), null, 'its old name left the index');
  t.deepEqual(removed, [tmp], 'upperRemoved heard it');
  t.is(attr(t, ov.getattr(h1), 'getattr hidden').size, 11);
  t.is(attr(t, ov.fgetattr(h1, fd), 'fgetattr hidden').size, 11);
  ov.release(fd);

  const h2 = `/${UO}/.fuse_hidden0000000200000002`;
  t.is(ov.rename(`/${UO}/file`, h2), 0);
  t.false(fs.existsSync(path.join(l.upper, UO, 'file')));
  t.deepEqual(fs.readdirSync(path.join(l.upper, UO)), [], 'nothing hidden in the upper object');
  t.is(attr(t, ov.getattr(h2), 'getattr nested hidden').size, 'upper file\n'.length);

  const listed = ov.readdir('/');
  t.true(Array.isArray(listed) && !listed.some((n) => n.startsWith('.fuse_hidden')), 'the root never lists hidden names');
  t.deepEqual(fs.readdirSync(l.upper).filter((n) => n.startsWith('.fuse_hidden')), []);
  t.deepEqual(fs.readdirSync(hidden).sort(), ['.fuse_hidden0000000100000001', '.fuse_hidden0000000200000002']);

  for (const h of [h1, h2]) t.is(ov.unlink(h), 0, `release-time unlink of ${h}`);
  t.deepEqual(fs.readdirSync(hidden), [], 'the work dir is empty again');
  t.deepEqual(removed, [tmp], 'unlinking hidden names does not touch the index');
});

test('overlay: only libfuse\'s exact hidden names, renamed to in the root or an upper object, go to the work dir', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  const hidden = path.join(l.work, 'hidden');
  // libfuse only renames to its names: making one would share the work dir's single namespace.
  t.is(-ov.create(`/${UO}/.fuse_hidden0000000500000005`, 0o644, O_RDWR | O_CREAT), E.EPERM, 'create of an exact hidden name');
  t.is(ov.mkdir('/.fuse_hidden0000000600000006', 0o755), E.EPERM, 'mkdir of an exact hidden name at the top');
  // Any other such name is an ordinary name, in its own dir.
  for (const d of [UO, BOTHDIR]) {
    const fd = ov.create(`/${d}/.fuse_hiddenUSER`, 0o644, O_RDWR | O_CREAT);
    t.true(fd >= 0, `create .fuse_hiddenUSER in ${d}`);
    t.is(ov.write(fd, Buffer.from(d), d.length, 0), d.length);
    ov.release(fd);
  }
  t.is(fs.readFileSync(path.join(l.upper, UO, '.fuse_hiddenUSER'), 'utf8'), UO, 'in its own dir, not shared');
  t.is(fs.readFileSync(path.join(l.upper, BOTHDIR, '.fuse_hiddenUSER'), 'utf8'), BOTHDIR);
  t.deepEqual(fs.readdirSync(hidden), [], 'nothing went to the work dir');
  // Inside a lower object every name is the object's own, and read-only.
  fs.writeFileSync(path.join(l.lower, LD, '.fuse_hidden0000000700000007'), 'lower');
  fs.writeFileSync(path.join(l.lower, LD, '.fuse_hiddenLOWER'), 'lower too');
  t.is(attr(t, ov.getattr(`/${LD}/.fuse_hidden0000000700000007`), 'a lower file with an exact hidden name').size, 5);
  t.is(attr(t, ov.getattr(`/${LD}/.fuse_hiddenLOWER`), 'a lower file with another such name').size, 9);
  t.is(-ov.create(`/${LD}/.fuse_hidden0000000800000008`, 0o644, O_RDWR | O_CREAT), E.EROFS, 'create in a lower object');
  t.is(ov.mkdir(`/${LD}/sub/.fuse_hiddenDIR`, 0o755), E.EROFS, 'mkdir in a lower object');
  t.is(ov.rename(`/${LD}/a`, `/${LD}/.fuse_hidden0000000900000009`), E.EROFS, 'libfuse hiding an open lower file');
  t.deepEqual(fs.readdirSync(hidden), []);
});

test('overlay: no top-level .wh.* name can be made through the mount (it would become a whiteout)', async (t) => {
  const l = await layout(t);
  const { ov, refused } = overlay(l);
  const wh = `/.wh.${LF}`;
  t.is(-ov.create(wh, 0o644, O_RDWR | O_CREAT), E.EPERM, 'create');
  t.is(ov.mkdir(wh, 0o755), E.EPERM, 'mkdir');
  t.is(ov.symlink('x', wh), E.EPERM, 'symlink');
  t.is(ov.link(`/${UF}`, wh), E.EPERM, 'link');
  t.is(ov.rename(`/${UF}`, wh), E.EPERM, 'rename');
  t.is(ov.rename(`/${UF}`, '/.wh.mynotes'), E.EPERM, 'rename to any .wh. name');
  t.deepEqual(refused, [], 'not a refusal of a lower change');
  t.false(fs.existsSync(path.join(l.upper, `.wh.${LF}`)));
  ov.refresh();
  t.is(ov.index.resolve(LF), Layer.Lower, 'the lower object still shows');
  t.is(ov.mknod(`/.wh.${LF}`), E.EPERM, 'mknod');
  t.is(ov.mknod(`/${nm('fifo')}`), E.EPERM, 'a special file at the top (a NAR holds none)');
  t.is(ov.mknod(`/${UO}/fifo`), E.EPERM, 'a special file in an upper object');
  t.is(ov.mknod(`/${LF}`), E.EEXIST, 'a name the lower store shows');
  // Inside an upper object, .wh.* is an ordinary name.
  t.is(ov.mkdir(`/${UO}/.wh.x`, 0o755), 0);
});

test('overlay: a name that was not valid UTF-8 (U+FFFD after decoding) is EILSEQ, never a near-miss file', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  fs.writeFileSync(path.join(l.upper, UO, 'bad\uFFFD-name'), 'another file');
  t.is(ov.getattr(`/${UO}/bad\uFFFD-name`), E.EILSEQ, 'lookup');
  t.is(-ov.create(`/${UO}/bad\uFFFD-new`, 0o644, O_RDWR | O_CREAT), E.EILSEQ, 'create');
  t.is(ov.mkdir('/bad\uFFFD-top', 0o755), E.EILSEQ, 'mkdir at the top');
  t.is(ov.rename(`/${UF}`, `/${UO}/x\uFFFD`), E.EILSEQ, 'rename');
  t.false(fs.existsSync(path.join(l.upper, 'bad\uFFFD-top')));
});

test('overlay: upper objects change in place and keep the index and hooks current', async (t) => {
  const l = await layout(t);
  const { ov, removed, added } = overlay(l);
  const n = nm('new-object');
  t.is(ov.mkdir(`/${n}`, 0o750), 0);
  t.deepEqual(added, [n]);
  t.is(ov.index.resolve(n), Layer.Upper);
  t.is(fs.statSync(path.join(l.upper, n)).mode & 0o777, 0o750);
  const fd = ov.create(`/${n}/f`, 0o640, O_RDWR | O_CREAT);
  t.true(fd >= 0);
  t.is(ov.write(fd, Buffer.from('0123456789'), 10, 0), 10);
  t.is(ov.ftruncate(`/${n}/f`, fd, 4), 0);
  t.is(ov.fsync(fd, false), 0);
  t.is(ov.fsync(fd, true), 0);
  const buf = Buffer.alloc(10);
  t.is(ov.read(fd, buf, 10, 0), 4);
  t.is(ov.release(fd), 0);
  t.is(fs.readFileSync(path.join(l.upper, n, 'f'), 'utf8'), '0123');
  t.deepEqual(added, [n], 'entries below the top level are not top-level additions');

  t.is(ov.truncate(`/${n}/f`, 100), 0);
  t.is(fs.statSync(path.join(l.upper, n, 'f')).size, 100);
  t.is(ov.chmod(`/${n}/f`, 0o444), 0);
  t.is(ov.chown(`/${n}/f`, 1234, 5678), 0);
  const st = fs.statSync(path.join(l.upper, n, 'f'));
  t.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o444, 1234, 5678]);
  t.is(ov.utimens(`/${n}/f`, 1000, 1000), 0);
  t.is(ov.utimens(`/${n}/f`, 7_000_000, undefined), 0, 'atime only');
  t.deepEqual([fs.statSync(path.join(l.upper, n, 'f')).atimeMs, fs.statSync(path.join(l.upper, n, 'f')).mtimeMs], [7_000_000, 1000], 'mtime kept');
  t.is(ov.utimens(`/${n}/f`, undefined, 9_000_000), 0, 'mtime only');
  t.deepEqual([fs.statSync(path.join(l.upper, n, 'f')).atimeMs, fs.statSync(path.join(l.upper, n, 'f')).mtimeMs], [7_000_000, 9_000_000], 'atime kept');

  t.is(ov.symlink('f', `/${n}/l`), 0);
  t.is(ov.readlink(`/${n}/l`), 'f');
  t.is(ov.utimens(`/${n}/l`, 1000, 1000), 0);
  t.is(fs.lstatSync(path.join(l.upper, n, 'l')).mtimeMs, 1000, 'utimens of a symlink changes the link');
  t.is(fs.statSync(path.join(l.upper, n, 'f')).mtimeMs, 9_000_000, 'and not its target');

  const m = nm('renamed-object');
  t.is(ov.rename(`/${n}`, `/${m}`), 0);
  t.deepEqual(removed, [n]);
  t.deepEqual(added, [n, m]);
  t.is(ov.index.resolve(n), null);
  t.is(ov.index.resolve(m), Layer.Upper);
  t.is(ov.rmdir(`/${m}`), E.ENOTEMPTY);
  for (const f of ['f', 'l']) t.is(ov.unlink(`/${m}/${f}`), 0);
  t.is(ov.rmdir(`/${m}`), 0);
  t.deepEqual(removed, [n, m]);
  t.false(fs.existsSync(path.join(l.upper, m)));
  t.is(ov.getattr(`/${m}`), E.ENOENT);
});

test('overlay: removing the upper copy of an object in both layers shows the lower copy again', async (t) => {
  const l = await layout(t);
  const { ov, removed } = overlay(l);
  t.is(attr(t, ov.getattr(`/${BOTH}`), 'upper copy').size, 'upper copy\n'.length);
  t.is(ov.unlink(`/${BOTH}`), 0);
  t.is(attr(t, ov.getattr(`/${BOTH}`), 'lower copy').size, fs.statSync(path.join(l.lower, BOTH)).size);
  t.is(ov.rmdir(`/${BOTHDIR}`), E.ENOTEMPTY);
  t.is(ov.unlink(`/${BOTHDIR}/y`), 0);
  t.is(ov.rmdir(`/${BOTHDIR}`), 0);
  t.deepEqual(ov.readdir(`/${BOTHDIR}`), ['.', '..', 'x'], 'the lower dir shows');
  t.deepEqual(removed, [BOTH, BOTHDIR]);
  t.false(fs.existsSync(path.join(l.upper, BOTH)) || fs.existsSync(path.join(l.upper, BOTHDIR)), 'the upper copies are gone');
  t.true(fs.existsSync(path.join(l.lower, BOTH)) && fs.existsSync(path.join(l.lower, BOTHDIR, 'x')), 'the lower copies stay');
  t.is(ov.unlink(`/${BOTH}`), E.EROFS, 'the lower copy itself is read-only');
});

test('overlay: creating an object with a whited-out name replaces the whiteout', async (t) => {
  const l = await layout(t);
  const { ov, added } = overlay(l);
  t.is(ov.mkdir(`/${WH1}`, 0o755), 0);
  t.false(fs.existsSync(path.join(l.upper, `.wh.${WH1}`)), 'the .wh. file is gone');
  t.true(fs.statSync(path.join(l.upper, WH1)).isDirectory());
  t.deepEqual(ov.readdir(`/${WH1}`), ['.', '..'], 'the new dir, not the lower object');
  const fd = ov.create(`/${WH2}`, 0o644, O_RDWR | O_CREAT | O_TRUNC);
  t.true(fd >= 0);
  ov.release(fd);
  t.true(fs.lstatSync(path.join(l.upper, WH2)).isFile(), 'the char device whiteout was replaced by a file');
  t.deepEqual(added, [WH1, WH2]);
  const root = ov.readdir('/');
  t.true(Array.isArray(root) && root.filter((n) => n === WH1 || n === WH2).length === 2);
  t.is(ov.unlink(`/${WH2}`), 0);
  t.is(attr(t, ov.getattr(`/${WH2}`), 'lower again').size, fs.statSync(path.join(l.lower, WH2)).size, 'no whiteout is left: the lower object shows');
  const s = nm('symlink-over-whiteout');
  await fs.promises.writeFile(path.join(l.lower, s), '');
  await fs.promises.writeFile(path.join(l.upper, `.wh.${s}`), '');
  ov.refresh();
  t.is(ov.symlink('target', `/${s}`), 0, 'symlink over a whiteout');
  t.false(fs.existsSync(path.join(l.upper, `.wh.${s}`)));
  t.is(ov.readlink(`/${s}`), 'target');
});

test('overlay: a whiteout stays when what was to replace it cannot be made', async (t) => {
  const l = await layout(t);
  const { ov, added } = overlay(l);
  const tooLong = 'x'.repeat(5000); // a symlink target over PATH_MAX: the symlink fails
  for (const n of [WH1, WH2]) {
    t.is(ov.symlink(tooLong, `/${n}`), E.ENAMETOOLONG, `symlink over the whiteout of ${n}`);
    t.is(ov.getattr(`/${n}`), E.ENOENT, `${n} stays hidden`);
    t.is(ov.index.reason(n), 'whiteout');
  }
  t.true(fs.existsSync(path.join(l.upper, `.wh.${WH2}`)), 'the char device gave way to a .wh. file (Node has no mknod)');
  ov.refresh();
  for (const n of [WH1, WH2]) t.is(ov.getattr(`/${n}`), E.ENOENT, `${n} hidden after the upper dir is read again`);
  t.deepEqual(added, []);
});

test('overlay: the root, statfs and inode numbers', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  const root = attr(t, ov.getattr('/'), 'root');
  t.is(root.ino, ROOT_INO);
  t.true((root.mode & 0o170000) === 0o040000, 'the root is a dir');
  t.deepEqual(ov.readdir('/'), ['.', '..', ...ov.index.listRoot()]);
  const sfs = ov.statfs();
  if (typeof sfs === 'number') return t.fail(`statfs: errno ${sfs}`);
  t.is(sfs.namemax, 255);
  t.true(sfs.bsize > 0 && sfs.blocks > 0 && sfs.blocks < 2 ** 32 && sfs.bavail <= sfs.bfree && sfs.bfree <= sfs.blocks);
  const paths = [`/${LF}`, `/${LD}`, `/${LD}/a`, `/${LD}/sub/b`, `/${UO}`, `/${UO}/file`, `/${UF}`, `/${BOTH}`];
  const inos = paths.map((p) => attr(t, ov.getattr(p), p).ino);
  t.is(new Set(inos).size, inos.length, 'unique across both layers');
  t.false(inos.includes(ROOT_INO));
  t.deepEqual(paths.map((p) => attr(t, ov.getattr(p), p).ino), inos, 'stable');
  t.is(ov.link(`/${UO}/file`, `/${UO}/file2`), 0);
  t.is(attr(t, ov.getattr(`/${UO}/file2`), 'link').ino, inos[5], 'hard links share the number');
});

test('overlay: lowerLookupPending asks the hook for top-level lower objects only', async (t) => {
  const l = await layout(t);
  const { ov } = overlay(l);
  const asked: string[] = [];
  ov.hooks.lowerLookup = (name) => { asked.push(name); return Promise.resolve(); };
  for (const p of ['/', `/${LD}/a`, `/${UO}`, `/${BOTH}`, `/${WH1}`, `/${nm('absent')}`, `/${LOWER_LOCK}`]) t.is(ov.lowerLookupPending(p), null, p);
  t.deepEqual(asked, []);
  const pending = ov.lowerLookupPending(`/${LF}`);
  t.not(pending, null);
  await pending;
  t.true(ov.lowerLookupPending(`/${LD}`) !== null);
  t.deepEqual(asked, [LF, LD]);
});
