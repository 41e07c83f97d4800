import test from 'ava';
import Database = require('better-sqlite3');
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { check, cli } from '../helpers/exec';
import { freshLower, lowerAdd, sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';
import { derivation, nix, nixOk, requireBuildUsers } from '../helpers/nix';
import { lowerRootDigest, treeLines } from '../helpers/tree';

// Real Nix 2.8 drives merged roots over the shared lower store built by
// scripts/make-lower-store.sh. Oracle: the same Nix queries on a private copy of the lower
// store (querying the shared one would let Nix write beside its DB).

const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');

async function oracle(t: Parameters<typeof tempDir>[0]): Promise<string> {
  return (await freshLower(tempDir(t))).root;
}

test('post-init: lower paths are visible, absent from the upper dir, and agree with the lower store', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const copy = await oracle(t);
  const p = lower.manifest.paths;

  for (const role of ['appOut', 'libOut', 'singleFile', 'dirObject', 'textFile', 'appDrv']) {
    t.deepEqual(await treeLines(path.join(m.store, rel(p[role]))).catch(() => null) ?? await fs.promises.readFile(path.join(m.store, rel(p[role])), 'utf8'),
      await treeLines(path.join(lower.root, 'nix/store', rel(p[role]))).catch(() => null) ?? await fs.promises.readFile(path.join(lower.root, 'nix/store', rel(p[role])), 'utf8'),
      `${role} differs between merged and lower`);
    t.false(fs.existsSync(path.join(m.upper, rel(p[role]))), `${role} must not be in the upper dir`);
  }
  t.is(await fs.promises.readFile(path.join(m.store, rel(p.singleFile)), 'utf8'), lower.manifest.contents.singleFile);

  for (const q of [['--requisites', p.appOut], ['--referrers', p.libOut], ['--deriver', p.appOut], ['--outputs', p.appDrv], ['--references', p.appOut], ['--referrers-closure', p.textFile]]) {
    const merged = await nixOk('nix-store', ['--store', m.root, '--query', ...q]);
    const expected = await nixOk('nix-store', ['--store', copy, '--query', ...q]);
    t.deepEqual(merged.trim().split('\n').sort(), expected.trim().split('\n').sort(), `nix-store --query ${q[0]}`);
  }
  await nixOk('nix-store', ['--store', m.root, '--verify-path', p.appOut]);
  const info = JSON.parse(await nixOk('nix', ['path-info', '--store', m.root, '--json', '--recursive', p.appOut])) as object[];
  const want = JSON.parse(await nixOk('nix', ['path-info', '--store', copy, '--json', '--recursive', p.appOut])) as object[];
  t.deepEqual(info, want, 'nix path-info --json (NAR hash, size, references, signatures, deriver)');

  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('build: only the new output is built, into the upper dir; lower inputs are used in place', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths;
  const drv = await derivation(m.dir, 'merged-build-test', { app: p.appOut, single: p.singleFile },
    'read line < ${single}; echo "$line" > $out; echo ${single} ${app} >> $out; for f in ${app}/*; do echo $f >> $out; done');
  const lowerNames = new Set((await fs.promises.readdir(m.lowerStore)).filter((n) => /^[0-9a-z]{32}-/.test(n)));
  const upperBefore = new Set(await fs.promises.readdir(m.upper));

  const r = await nix('nix-build', ['--store', m.root, '--no-out-link', ...drv]);
  t.is(r.code, 0, r.stderr);
  const out = r.stdout.trim();
  t.regex(out, /^\/nix\/store\/[0-9a-z]{32}-merged-build-test$/);
  t.regex(r.stderr, /building '.*merged-build-test\.drv'/);
  t.notRegex(r.stderr, /lower-(lib|app)-1\.0\.drv/, 'a lower derivation was rebuilt');

  const upperAfter = await fs.promises.readdir(m.upper);
  t.true(upperAfter.includes(rel(out)), 'the new output is in the upper dir');
  for (const name of upperAfter) t.false(lowerNames.has(name), `lower object ${name} was copied into the upper dir`);
  const added = upperAfter.filter((n) => !upperBefore.has(n) && /^[0-9a-z]{32}-/.test(n) && !n.endsWith('.lock'));
  t.deepEqual(added.filter((n) => !n.endsWith('.drv')).sort(), [rel(out)], 'only the new output was added');

  const content = await fs.promises.readFile(path.join(m.store, rel(out)), 'utf8');
  t.true(content.startsWith(lower.manifest.contents.singleFile), 'the single-file input was readable in the sandbox');
  t.true(content.includes(`${p.appOut}/bin`), 'the lower directory input was readable in the sandbox');
  const st = await fs.promises.lstat(path.join(m.upper, rel(out)));
  t.is(st.mtimeMs, 1000, 'Nix canonicalised the output mtime to 1 through the mount');

  await nixOk('nix-store', ['--store', m.root, '--verify-path', out]);
  const refs = (await nixOk('nix-store', ['--store', m.root, '--query', '--references', out])).trim().split('\n').sort();
  t.deepEqual(refs, [p.appOut, p.singleFile].sort());

  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('build users: Nix as a multi-user install runs it (build-users-group = nixbld) makes the store dir its own and builds, its builder writing through the mount', async (t) => {
  await requireBuildUsers();
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths;
  // The builder runs as a build user and writes a dir, files (one executable) and a symlink;
  // Nix then checks that the build user owns each of them before it takes the output.
  const drv = await derivation(m.dir, 'build-users-test', { single: p.singleFile },
    'PATH=/usr/bin; mkdir -p $out/bin $out/share; read line < ${single}; echo "$line" > $out/share/x; echo "#!/bin/sh" > $out/bin/run; chmod +x $out/bin/run; ln -s ../share/x $out/bin/link; id -u > $out/share/uid');
  const settings = ['build-users-group = nixbld', 'sandbox-paths = /bin/sh=/bin/sh /lib /lib64 /usr/lib /usr/bin'];

  const r = await nix('nix-build', ['--store', m.root, '--no-out-link', ...drv], { settings });
  t.is(r.code, 0, r.stderr);
  const out = r.stdout.trim();
  const uid = Number((await fs.promises.readFile(path.join(m.store, rel(out), 'share/uid'), 'utf8')).trim());
  t.not(uid, 0, 'the builder ran as a build user, not as root');
  const store = await fs.promises.stat(m.store);
  const nixbld = Number((await nixGroup()).split(':')[2]);
  t.deepEqual([store.uid, store.gid, store.mode & 0o7777], [0, nixbld, 0o1775], 'Nix made the store dir root:nixbld 1775 through the mount');
  for (const f of ['', 'bin', 'bin/run', 'bin/link', 'share/x']) {
    const st = await fs.promises.lstat(path.join(m.upper, rel(out), f));
    t.deepEqual([st.uid, st.gid], [0, 0], `${f || 'the output'}: Nix gave it back to root`);
  }
  t.is(await fs.promises.readFile(path.join(m.store, rel(out), 'share/x'), 'utf8'), lower.manifest.contents.singleFile.split('\n')[0] + '\n');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', out]);
});

async function nixGroup(): Promise<string> {
  return (await fs.promises.readFile('/etc/group', 'utf8')).split('\n').find((l) => l.startsWith('nixbld:')) ?? '';
}

test('redundant add: adding content the lower store has writes nothing to the upper dir', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths;
  const src = path.join(m.dir, rel(p.singleFile).slice(33));
  await fs.promises.writeFile(src, lower.manifest.contents.singleFile);
  await nixOk('nix-store', ['--store', m.root, '--query', '--hash', p.singleFile]); // Nix's first open creates .links
  const upperBefore = await treeLines(m.upper);
  const added = (await nixOk('nix-store', ['--store', m.root, '--add', src])).trim();
  t.is(added, p.singleFile, 'the same content gives the lower store path');
  t.deepEqual(await treeLines(m.upper), upperBefore, 'the upper dir changed');
});

test('verify: nix-store --verify --check-contents passes on the merged root', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const r = await nix('nix-store', ['--store', m.root, '--verify', '--check-contents']);
  t.is(r.code, 0, r.stderr);
  t.notRegex(r.stderr, /was modified|disappeared|error/);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('live lower growth: a path added to the lower store is visible and valid within 5 s', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir });
  const added = await lowerAdd(lower.root, `grown-${Date.now()}`);
  const deadline = Date.now() + 5000;
  let visible = false, valid = false;
  while (Date.now() < deadline && !(visible && valid)) {
    visible = fs.existsSync(path.join(m.store, rel(added)));
    valid = (await nix('nix-store', ['--store', m.root, '--check-validity', added])).code === 0;
    if (!(visible && valid)) await new Promise((r) => setTimeout(r, 200));
  }
  t.true(visible, 'the new lower path shows in the merged dir');
  t.true(valid, 'the new lower path is valid in the merged DB');
  t.false(fs.existsSync(path.join(m.upper, rel(added))));
});

/**
 * A file of `size` bytes the test's name makes unique, and its store path as `nix-store --add`
 * gives it (added to a scratch store: the path depends only on the name and the contents).
 */
async function addable(dir: string, name: string, size: number): Promise<{ src: string; content: Buffer; out: string }> {
  const content = Buffer.alloc(size);
  for (let i = 0; i < size; i++) content[i] = (i * 7 + name.length) & 0xff;
  content.write(name);
  const src = path.join(dir, name);
  await fs.promises.writeFile(src, content);
  const out = (await nixOk('nix-store', ['--store', path.join(dir, 'scratch'), '--add', src])).trim();
  return { src, content, out };
}

test('a partial upper object without a row (an add killed halfway) is set aside once the lower store gains the path while mounted; a duplicate with its own row stays', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const x = await addable(dir, `partial-${Date.now()}`, 1 << 20);
  // What a client killed while it restored X leaves (Nix 2.8 restores into the final path): its
  // first bytes, written through the mount, and no row.
  await fs.promises.writeFile(path.join(m.store, rel(x.out)), x.content.subarray(0, 100_000));
  t.not((await nix('nix-store', ['--store', m.root, '--check-validity', x.out])).code, 0, 'the partial copy is not valid');
  // Looked at since: the kernel keeps its attributes (attr_timeout, 60 s).
  const size = async (): Promise<string> => (await check('stat', ['-c', '%s', path.join(m.store, rel(x.out))])).trim();
  t.is(await size(), '100000');
  // A duplicate: added through the mount (its own row), then to the lower store too.
  const d = await addable(dir, `duplicate-${Date.now()}`, 1000);
  t.is((await nixOk('nix-store', ['--store', m.root, '--add', d.src])).trim(), d.out);

  await nixOk('nix-store', ['--store', lower.root, '--add', x.src]);
  await nixOk('nix-store', ['--store', lower.root, '--add', d.src]);
  const r = await cli(['refresh', m.root]); // the follower has imported the new rows once it returns
  t.is(r.code, 0, r.stderr);

  const v = await nix('nix-store', ['--store', m.root, '--verify-path', x.out]);
  t.is(v.code, 0, `the merged root serves X as valid with other contents: ${v.stderr}`);
  t.is(await size(), String(1 << 20), 'the kernel was told: the size is the lower copy\'s');
  t.true((await fs.promises.readFile(path.join(m.store, rel(x.out)))).equals(x.content), 'the merged X is not the lower copy');
  t.false(fs.existsSync(path.join(m.upper, rel(x.out))), 'the partial upper copy is still in the upper dir');
  t.true(fs.existsSync(path.join(m.upper, rel(d.out))), 'the duplicate\'s upper copy (with its row) was dropped');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', d.out]);
});

test('a rowless upper object whose lock a merged-store client holds is left alone, its lower row held back until the lock is free', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const x = await addable(dir, `locked-${Date.now()}`, 100_000);
  // A client adding X: it holds X.lock through the mount and has written part of X.
  // flock(1) holds the lock itself (-o: not its child), in a process group of its own.
  const holder = spawn('flock', ['-o', path.join(m.store, `${rel(x.out)}.lock`), 'sleep', '600'], { stdio: 'ignore', detached: true });
  const exited = new Promise((res) => holder.once('exit', res));
  const kill = async (): Promise<void> => {
    try { process.kill(-holder.pid!, 'SIGKILL'); } catch { /* gone */ }
    await exited;
  };
  t.teardown(kill);
  await untilLocked(path.join(m.store, `${rel(x.out)}.lock`));
  await fs.promises.writeFile(path.join(m.store, rel(x.out)), x.content.subarray(0, 1000));

  await nixOk('nix-store', ['--store', lower.root, '--add', x.src]);
  t.is((await cli(['refresh', m.root])).code, 0);
  t.not((await nix('nix-store', ['--store', m.root, '--check-validity', x.out])).code, 0, 'valid while a client held its lock');
  t.is((await fs.promises.readFile(path.join(m.upper, rel(x.out)))).length, 1000, 'the upper copy being written was touched');

  // The client dies: what it wrote is a leftover, and the lower copy goes in.
  await kill();
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await new Promise((res) => setTimeout(res, 100))) {
    if ((await nix('nix-store', ['--store', m.root, '--check-validity', x.out])).code === 0) break;
  }
  await nixOk('nix-store', ['--store', m.root, '--verify-path', x.out]);
  t.true((await fs.promises.readFile(path.join(m.store, rel(x.out)))).equals(x.content));
  t.false(fs.existsSync(path.join(m.upper, rel(x.out))));
});

/** Resolves once /proc/locks lists a flock on `file` (a path through the mount; polled, at most `ms`). */
async function untilLocked(file: string, ms = 10_000): Promise<void> {
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    const st = await fs.promises.stat(file).catch(() => null);
    if (st === null) continue;
    const id = `${hex((st.dev >> 8) & 0xfff)}:${hex((st.dev & 0xff) | ((st.dev >> 12) & 0xfff00))}:${st.ino}`;
    if ((await fs.promises.readFile('/proc/locks', 'latin1')).split('\n').some((l) => l.includes(' FLOCK ') && l.includes(` ${id} `))) return;
  }
  throw new Error(`no flock on ${file} after ${ms} ms`);
}

/** Resolves once `dir` has an entry ending in `suffix` (polled every 50 ms, at most `ms`). */
async function untilEntry(dir: string, suffix: string, ms = 60_000): Promise<string> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    const hit = (await fs.promises.readdir(dir)).find((n) => n.endsWith(suffix));
    if (hit !== undefined) return hit;
  }
  throw new Error(`no entry ending in ${suffix} in ${dir} after ${ms} ms`);
}

test('same output built at once by the lower store and a merged client: its row waits for the client\'s lock, the build succeeds, the path is valid once', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'm') });
  const name = `same-output-${Date.now()}`;
  // One derivation built in both stores; its builder waits for /gate/go, a dir of each build's own.
  const drv = await derivation(dir, name, {}, 'while [ ! -e /gate/go ]; do /usr/bin/sleep 0.1; done; echo built > $out');
  const gate = (which: string): string => {
    const g = path.join(dir, `gate-${which}`);
    fs.mkdirSync(g, { recursive: true });
    return g;
  };
  const build = (root: string, g: string): ReturnType<typeof nix> => nix('nix-build', ['--store', root, '--no-out-link',
    '--option', 'extra-sandbox-paths', `/usr/bin/sleep /gate=${g}`, ...drv]);

  // The merged client locks the output (<root>/nix/store/X.lock, through the mount), finds it
  // invalid and starts its builder (the chroot dir shows that it did).
  const merged = build(m.root, gate('merged'));
  await untilEntry(m.upper, `-${name}.drv.chroot`);
  // Meanwhile the lower store builds and registers the same output.
  const lowerBuild = build(lower.root, gate('lower'));
  await untilEntry(path.join(lower.root, 'nix/store'), `-${name}.drv.chroot`);
  await fs.promises.writeFile(path.join(dir, 'gate-lower/go'), '');
  const l = await lowerBuild;
  t.is(l.code, 0, l.stderr);
  const out = l.stdout.trim();
  t.regex(out, new RegExp(`^/nix/store/[0-9a-z]{32}-${name}$`));
  t.true(fs.existsSync(path.join(m.upper, `${rel(out)}.lock`)), 'the merged client holds the output\'s lock file');

  // The follower has looked at the lower DB once refresh returns: the row waits for the lock.
  const r = await cli(['refresh', m.root]);
  t.is(r.code, 0, r.stderr);
  const validWhileLocked = (await nix('nix-store', ['--store', m.root, '--check-validity', out])).code === 0;
  const s = JSON.parse((await cli(['status', m.root, '--json'])).stdout) as { follower: { waitingForLocks?: number } };

  await fs.promises.writeFile(path.join(dir, 'gate-merged/go'), '');
  const b = await merged;
  t.is(b.code, 0, `the merged build: ${b.stderr}`);
  t.is(b.stdout.trim(), out);
  t.false(validWhileLocked, 'valid in the merged DB while a merged client held its lock');
  t.is(s.follower.waitingForLocks, 1, 'status counted the path held back');
  await nixOk('nix-store', ['--store', m.root, '--verify-path', out]);
  t.is(fs.readFileSync(path.join(m.store, rel(out)), 'utf8'), 'built\n');
  const db = new Database(path.join(m.root, 'nix/var/nix/db/db.sqlite'), { readonly: true });
  t.teardown(() => db.close());
  t.is(db.prepare('SELECT count(*) FROM ValidPaths WHERE path = ?').pluck().get(out), 1, 'one row');
  const left = (await fs.promises.readdir(m.upper)).filter((n) => n.includes(name) && !n.endsWith('.drv') && n !== rel(out));
  t.deepEqual(left, [], 'Nix left its lock file or chroot behind');
  // Once the lock is gone the follower lets the row go (the merged DB has the client's own).
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await new Promise((res) => setTimeout(res, 100))) {
    if ((JSON.parse((await cli(['status', m.root, '--json'])).stdout) as typeof s).follower.waitingForLocks === 0) break;
  }
  t.is((JSON.parse((await cli(['status', m.root, '--json'])).stdout) as typeof s).follower.waitingForLocks, 0, 'nothing held back once the lock is free');
});

test('lazy metadata: a lookup whose closure copy brings the row of a partial upper object without one sets that object aside', async (t) => {
  const lower = await sharedLower();
  const dir = tempDir(t);
  const p = lower.manifest.paths;
  // A partial copy of singleFile (which appOut refers to) that an add killed halfway left, no row.
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(upper);
  const full = await fs.promises.readFile(path.join(lower.root, p.singleFile));
  await fs.promises.writeFile(path.join(upper, rel(p.singleFile)), full.subarray(0, Math.floor(full.length / 2)));
  const m = await mountMerged(t, lower.root, { metadata: 'lazy', dir, upper });
  await fs.promises.lstat(path.join(m.store, rel(p.appOut))); // copies appOut's closure
  const v = await nix('nix-store', ['--store', m.root, '--verify-path', p.singleFile]);
  t.is(v.code, 0, `the merged root serves singleFile as valid with other contents: ${v.stderr}`);
  t.true((await fs.promises.readFile(path.join(m.store, rel(p.singleFile)))).equals(full));
  t.false(fs.existsSync(path.join(m.upper, rel(p.singleFile))), 'the partial upper copy is still in the upper dir');
});

test('lazy metadata: sync, mounted (through the daemon) or not, sets aside a partial upper object without a row that the copy makes valid', async (t) => {
  const lower = await sharedLower();
  const p = lower.manifest.paths;
  const full = await fs.promises.readFile(path.join(lower.root, p.singleFile));
  const partial = (upper: string): Promise<void> => fs.promises.writeFile(path.join(upper, rel(p.singleFile)), full.subarray(0, Math.floor(full.length / 2)));
  for (const mounted of [true, false]) {
    const dir = tempDir(t);
    const upper = path.join(dir, 'upper');
    fs.mkdirSync(upper);
    // Mounted: left before the mount (in lazy mode the lower store's name cannot be written
    // through it). Not mounted: left after a mount made the root.
    if (mounted) await partial(upper);
    let m = await mountMerged(t, lower.root, { metadata: 'lazy', dir, upper });
    if (!mounted) {
      await m.unmount();
      await partial(upper);
    }
    const r = await cli(['sync', '--root', m.root, p.appOut]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /^copied \d+ rows into the upper DB$/m);
    if (!mounted) {
      t.regex(r.stderr, new RegExp(`removed the upper copy of ${p.singleFile}: it had no row`));
      m = await mountMerged(t, lower.root, { metadata: 'lazy', dir, upper });
    }
    const v = await nix('nix-store', ['--store', m.root, '--verify-path', p.singleFile]);
    t.is(v.code, 0, `${mounted ? 'mounted' : 'unmounted'}: the merged root serves singleFile as valid with other contents: ${v.stderr}`);
    t.true((await fs.promises.readFile(path.join(m.store, rel(p.singleFile)))).equals(full));
    t.false(fs.existsSync(path.join(upper, rel(p.singleFile))), 'the partial upper copy is still in the upper dir');
  }
});

test('lazy metadata: sync through the daemon makes the kernel forget a miss of any path of the closures it copies, not only of the paths named', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  // The follower would tell the kernel too (it reports every new lower name): it waits an hour.
  const m = await mountMerged(t, lower.root, { metadata: 'lazy', dir, extra: ['--follow-interval', '3600000', '--negative-timeout', '60'] });
  const expr = path.join(dir, 'closure.nix');
  await fs.promises.writeFile(expr, `rec {
  member = derivation { name = "sync-member"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo member > $out" ]; };
  top = derivation { name = "sync-top"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo \${member} > $out" ]; };
}
`);
  const memberDrv = (await nixOk('nix-instantiate', ['--store', lower.root, expr, '-A', 'member'])).trim();
  const member = (await nixOk('nix-store', ['--store', lower.root, '--query', '--outputs', memberDrv])).trim();
  // Looked up before the lower store has it: the kernel keeps the miss for --negative-timeout.
  await t.throwsAsync(fs.promises.lstat(path.join(m.store, rel(member))), { code: 'ENOENT' });
  const top = (await nixOk('nix-build', ['--store', lower.root, '--no-out-link', expr, '-A', 'top'])).trim();
  const r = await cli(['sync', '--root', m.root, top]);
  t.is(r.code, 0, r.stderr);
  t.is((await nix('nix-store', ['--store', m.root, '--check-validity', member])).code, 0, 'the member is valid in the merged DB after sync');
  const st = await fs.promises.lstat(path.join(m.store, rel(member))).catch((err: NodeJS.ErrnoException) => err.code);
  t.not(st, 'ENOENT', 'the member of the synced closure still looks missing: the kernel kept the miss');
});

test('lazy metadata: the first lookup of a lower object copies its closure into the upper DB', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { metadata: 'lazy' });
  const p = lower.manifest.paths;
  t.not((await nix('nix-store', ['--store', m.root, '--check-validity', p.appOut])).code, 0, 'not valid before any lookup');
  await fs.promises.lstat(path.join(m.store, rel(p.appOut)));
  for (const q of [p.appOut, p.libOut, p.singleFile, p.textFile]) {
    t.is((await nix('nix-store', ['--store', m.root, '--check-validity', q])).code, 0, `${q} valid after the lookup`);
  }
  t.not((await nix('nix-store', ['--store', m.root, '--check-validity', p.dirObject])).code, 0, 'objects outside the closure stay unknown');
});
