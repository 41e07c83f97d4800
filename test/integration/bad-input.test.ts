import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { processAlive } from '../../src/mount/records';
import { CLI, cli, run } from '../helpers/exec';
import { freshLower, sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';

// Every refused mount: exit code 2, exactly one line on stderr naming the problem, nothing
// mounted and nothing created (the upper, work and merged dirs did not exist before).

interface Case { lower: string; upper: string; root: string; work: string }

function paths(dir: string, lower: string): Case {
  return { lower, upper: path.join(dir, 'upper'), root: path.join(dir, 'merged'), work: path.join(dir, 'work') };
}

const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');

function args(c: Case): string[] {
  return ['mount', '--lower', c.lower, '--upper', c.upper, '--root', c.root, '--work', c.work];
}

async function mounts(): Promise<string> {
  return fs.promises.readFile('/proc/self/mountinfo', 'utf8');
}

async function refused(t: Parameters<typeof tempDir>[0], c: Case, pattern: RegExp, prefix: string[] = [], alreadyMounted = false): Promise<void> {
  const mountsBefore = (await mounts()).split('\n').filter((l) => l.includes(path.join(c.root, 'nix/store'))).length;
  const existed = [c.upper, c.root, c.work].filter((p) => fs.existsSync(p));
  const r = prefix.length ? await run(prefix[0], [...prefix.slice(1), process.execPath, CLI, ...args(c)]) : await cli(args(c));
  t.is(r.code, 2, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.trim().split('\n');
  t.is(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  t.regex(lines[0], pattern);
  t.regex(lines[0], /^local-overlay: error: /);
  for (const p of [c.upper, c.root, c.work]) {
    if (!existed.includes(p)) t.false(fs.existsSync(p), `${p} was created`);
  }
  const mountsAfter = (await mounts()).split('\n').filter((l) => l.includes(path.join(c.root, 'nix/store'))).length;
  t.is(mountsAfter, mountsBefore, 'a refused mount changed the mount table');
  t.is(mountsAfter, alreadyMounted ? 1 : 0);
}

test('missing lower root', async (t) => {
  const dir = tempDir(t);
  await refused(t, paths(dir, path.join(dir, 'no-such-lower')), /lower root .*no-such-lower does not exist/);
});

test('lower root without a Nix DB', async (t) => {
  const dir = tempDir(t);
  const lower = path.join(dir, 'bare');
  fs.mkdirSync(path.join(lower, 'nix/store'), { recursive: true });
  await refused(t, paths(dir, lower), /has no Nix database/);
});

test('lower DB with another schema version', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  fs.writeFileSync(path.join(lower.root, 'nix/var/nix/db/schema'), '11');
  await refused(t, paths(dir, lower.root), /schema version 11; local-overlay supports version 10/);
});

test('upper dir inside the lower root', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const c = paths(dir, lower.root);
  c.upper = path.join(lower.root, 'upper');
  await refused(t, c, /upper dir .* is inside the lower root/);
});

test('non-empty mountpoint', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const c = paths(dir, lower.root);
  fs.mkdirSync(path.join(c.root, 'nix/store'), { recursive: true });
  fs.writeFileSync(path.join(c.root, 'nix/store/stray'), 'x');
  await refused(t, c, /mount point .* is not empty/);
});

test('busy mountpoint: mounting the same merged root twice', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  await refused(t, { lower: lower.root, upper: m.upper, root: m.root, work: m.work }, new RegExp(`already mounted: local-overlay daemon ${m.pid} serves it`), [], true);
  const st = await cli(['status', m.root, '--json']);
  t.is(st.code, 0, `the running mount's records survive a refused mount: ${st.stderr}`);
  t.is((JSON.parse(st.stdout) as { pid: number }).pid, m.pid);
});

test('a daemon killed with SIGKILL: mount names the stale mount, unmount clears it, mount works again', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  process.kill(m.pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 300));
  await refused(t, { lower: lower.root, upper: m.upper, root: m.root, work: m.work }, /no daemon serves it \(stale\): run `local-overlay unmount/, [], true);
  const u = await cli(['unmount', m.root]);
  t.is(u.code, 0, u.stderr);
  t.regex(u.stdout, /no daemon was serving it/);
  const again = await mountMerged(t, lower.root, { dir });
  t.true(fs.existsSync(path.join(again.store, rel(lower.manifest.paths.appOut))));
});

test('a mount removed from outside (fusermount -u): the daemon notices, cleans up and exits', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const u = await run('fusermount', ['-u', m.store]);
  t.is(u.code, 0, u.stderr);
  const deadline = Date.now() + 10_000;
  let alive = true;
  while (alive && Date.now() < deadline) {
    alive = processAlive(m.pid);
    if (alive) await new Promise((r) => setTimeout(r, 200));
  }
  t.false(alive, 'the daemon exited');
  t.false(fs.existsSync(path.join(m.root, 'nix/var/local-overlay/daemon.json')), 'its record is gone');
  const st = await cli(['status', m.root]);
  t.is(st.code, 3, 'status: not mounted');
});

test('a daemon that does not exit: unmount gives up after --timeout, says where its threads wait and where its log is', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  process.kill(m.pid, 'SIGSTOP');
  t.teardown(() => { try { process.kill(m.pid, 'SIGCONT'); } catch { /* gone */ } });
  const u = await cli(['unmount', '--timeout', '1', m.root]);
  t.not(u.code, 0);
  t.regex(u.stderr, new RegExp(`daemon ${m.pid} did not exit within 1 s; its \\d+ threads: \\d+ do_signal_stop \\(node\\), \\d+ do_signal_stop \\(lo-fuse\\).*; its log: ${m.root}/nix/var/log/local-overlay.log`));
  // Running again, the daemon acts on the SIGTERM that unmount sent.
  process.kill(m.pid, 'SIGCONT');
  const deadline = Date.now() + 10_000;
  while (processAlive(m.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.false(processAlive(m.pid), 'the daemon exited once it ran again');
  t.is((await cli(['status', m.root])).code, 3, 'status: not mounted');
});

test('upper dir already used by another running mount', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const c = paths(dir, lower.root);
  c.upper = m.upper;
  c.root = path.join(dir, 'second');
  c.work = path.join(dir, 'work2');
  await refused(t, c, /upper dir .* is in use by the mount at .*merged/);
});

test('missing /dev/fuse', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const fake = path.join(dir, 'not-a-device');
  fs.writeFileSync(fake, '');
  const c = paths(dir, lower.root);
  await refused(t, c, /\/dev\/fuse is missing/, ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', `mount --bind ${fake} /dev/fuse && exec "$@"`, 'sh']);
});

test('missing libfuse.so.2', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const lib = (await run('sh', ['-c', 'ldconfig -p | sed -n "s/.*libfuse.so.2 .*=> //p" | head -n1'])).stdout.trim();
  t.truthy(lib, 'libfuse.so.2 is not installed on this machine (apt-get install libfuse2)');
  const empty = path.join(dir, 'empty.so');
  fs.writeFileSync(empty, '');
  const c = paths(dir, lower.root);
  await refused(t, c, /libfuse\.so\.2 cannot be loaded/, ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', `mount --bind ${empty} ${fs.realpathSync(lib)} && exec "$@"`, 'sh']);
});

test('usage errors exit 2 with help', async (t) => {
  const r = await cli(['mount', '--lower', '/x']);
  t.is(r.code, 2);
  t.regex(r.stderr, /Missing required arguments?: upper, root/);
  const u = await cli(['unmount', path.join(tempDir(t), 'nothing')]);
  t.is(u.code, 3, 'unmount of something not mounted is exit 3');
  t.regex(u.stderr, /is not mounted/);
});

test('remounting a merged root over another lower root is refused, naming both and what to do', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  await m.unmount();
  const other = await freshLower(dir);
  const c = { lower: other.root, upper: m.upper, root: m.root, work: m.work };
  await refused(t, c, new RegExp(`merged root ${m.root} was made over the lower root ${lower.root} \\(recorded in ${m.root}/nix/var/local-overlay/config\\.json\\), not ${other.root}: .* with a new --root, or restore ${lower.root}`));
  // The same lower root through another path (a symlink) is the same lower root.
  const link = path.join(dir, 'lower-link');
  fs.symlinkSync(lower.root, link);
  const again = await mountMerged(t, link, { dir });
  t.true(fs.existsSync(path.join(again.store, rel(lower.manifest.paths.appOut))));
});

test('remounting a merged root with another upper dir is refused, naming both and what to do; a moved upper dir mounts once config.json is removed', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  await m.unmount();
  const typo = path.join(dir, 'upper-typo');
  const c = { lower: lower.root, upper: typo, root: m.root, work: m.work };
  await refused(t, c, new RegExp(`merged root ${m.root} was made with the upper dir ${m.upper} \\(recorded in ${m.root}/nix/var/local-overlay/config\\.json\\), not ${typo}: .* Mount with --upper ${m.upper}, or a new --root; if you moved the upper dir to ${typo}, remove ${m.root}/nix/var/local-overlay/config\\.json first`));
  const moved = path.join(dir, 'upper-moved');
  fs.renameSync(m.upper, moved);
  fs.rmSync(path.join(m.root, 'nix/var/local-overlay/config.json'));
  const again = await mountMerged(t, lower.root, { dir, upper: moved });
  t.true(fs.existsSync(path.join(again.store, rel(lower.manifest.paths.appOut))));
});

test('numeric options out of range or not numbers exit 2, naming the option and its range', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const c = paths(dir, lower.root);
  for (const [opt, value, range] of [
    ['--follow-interval', 'abc', 'milliseconds from 10 to 3600000'], ['--follow-interval', '1e10', 'milliseconds from 10 to 3600000'],
    ['--follow-interval', '-5', 'milliseconds from 10 to 3600000'], ['--negative-timeout', 'abc', 'seconds from 0 to 86400'],
    ['--negative-timeout', '-1', 'seconds from 0 to 86400'], ['--attr-timeout', 'abc', 'seconds from 0 to 86400'],
    ['--poll-us', 'abc', 'microseconds from 0 to 1000000'], ['--poll-us', '2.5', 'microseconds from 0 to 1000000'],
  ]) {
    const r = await cli([...args(c), `${opt}=${value}`]);
    t.is(r.code, 2, `${opt} ${value}: ${r.stderr}`);
    t.regex(r.stderr, new RegExp(`local-overlay: error: ${opt} must be .*${range}`), `${opt} ${value}`);
    for (const p of [c.upper, c.root, c.work]) t.false(fs.existsSync(p), `${opt} ${value}: ${p} was created`);
  }
  const u = await cli(['unmount', c.root, '--timeout', 'abc']);
  t.is(u.code, 2, u.stderr);
  t.regex(u.stderr, /--timeout must be a number of seconds from 0\.1 to 86400/);
});

test('a lower DB that is not SQLite, and a merged root that is a regular file, are refused before anything is made', async (t) => {
  const dir = tempDir(t);
  const lower = await freshLower(dir);
  const db = path.join(lower.root, 'nix/var/nix/db/db.sqlite');
  fs.writeFileSync(db, 'garbage, not a database at all\n');
  await refused(t, paths(dir, lower.root), new RegExp(`the lower Nix database ${db} is not a SQLite database`));

  const good = await sharedLower();
  const c = paths(dir, good.root);
  fs.writeFileSync(c.root, 'a file');
  await refused(t, c, new RegExp(`merged root ${c.root} is not a directory`));
  const d = paths(path.join(dir, 'sub'), good.root);
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.mkdirSync(d.root);
  fs.writeFileSync(path.join(d.root, 'nix'), 'a file');
  await refused(t, d, new RegExp(`cannot be made: ${d.root}/nix is not a directory`));
});

test('a store dir given for the merged or the lower root is refused, naming the root meant', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const c = paths(dir, lower.root);
  c.root = path.join(dir, 'merged/nix/store');
  await refused(t, c, new RegExp(`merged root ${c.root} is a store dir: .*\\(did you mean --root ${dir}/merged\\?\\)`));
  await refused(t, paths(dir, path.join(lower.root, 'nix/store')), new RegExp(`has no store directory .*\\(did you mean --lower ${lower.root}\\?\\)`));
});

test('a work dir on another filesystem than the upper dir is refused before anything is made', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const c = paths(dir, lower.root);
  c.work = path.join('/dev/shm', `lo-test-work-${process.pid}-${Date.now()}`);
  t.teardown(() => fs.rmSync(c.work, { recursive: true, force: true }));
  t.not(fs.statSync('/dev/shm').dev, fs.statSync(dir).dev, '/dev/shm is another filesystem here');
  await refused(t, c, /work dir .* must be on the same filesystem as the upper dir/);
});

test('a work dir outside the bind mount the upper dir is on (one filesystem, two mounts: rename fails with EXDEV) is refused before anything is made', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const src = path.join(dir, 'bind-src');
  const bound = path.join(dir, 'bound');
  fs.mkdirSync(src);
  fs.mkdirSync(bound);
  const b = await run('mount', ['--bind', src, bound]);
  t.is(b.code, 0, b.stderr);
  t.teardown(async () => { await run('umount', ['-l', bound]); });
  const c = paths(dir, lower.root);
  c.upper = path.join(bound, 'upper');
  c.work = path.join(dir, 'work-outside');
  t.is(fs.statSync(bound).dev, fs.statSync(dir).dev, 'one filesystem');
  await refused(t, c, /work dir .* must be on the same filesystem as the upper dir .*, and on the same mount of it/);
  // The work dir on the same bind mount is fine.
  const ok = paths(dir, lower.root);
  ok.upper = path.join(bound, 'upper');
  ok.work = path.join(bound, 'work');
  const m = await cli(['mount', '--lower', ok.lower, '--upper', ok.upper, '--work', ok.work, '--root', ok.root]);
  t.is(m.code, 0, m.stderr);
  t.is((await cli(['unmount', ok.root])).code, 0);
});

test('an upper or work dir inside the store dir of another merged root (hidden by its mount) is refused', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const other = await mountMerged(t, lower.root, { dir: path.join(dir, 'other') });
  await other.unmount();
  const c = paths(dir, lower.root);
  c.upper = path.join(other.store, 'upperX');
  await refused(t, c, new RegExp(`upper dir ${c.upper} is inside the store dir of the merged root ${other.root}`));
  t.deepEqual(fs.readdirSync(other.store), ['.links'], 'the other root\'s mount point holds only its guard');
});

test('an upper dir on a read-only filesystem is refused before anything is made', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const ro = path.join(dir, 'ro');
  fs.mkdirSync(path.join(ro));
  const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', ro]);
  t.is(m.code, 0, m.stderr);
  t.teardown(async () => { await run('umount', [ro]); });
  for (const d of ['upper', 'work']) fs.mkdirSync(path.join(ro, d));
  t.is((await run('mount', ['-o', 'remount,ro', ro])).code, 0);
  const c = paths(dir, lower.root);
  c.upper = path.join(ro, 'upper');
  c.work = path.join(ro, 'work');
  await refused(t, c, new RegExp(`upper dir ${c.upper} is on a read-only filesystem`));
});

test('a merged root whose filesystem is too small for its DB: mount fails naming the merged DB and the full filesystem', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const small = path.join(dir, 'small');
  fs.mkdirSync(small);
  t.is((await run('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', small])).code, 0);
  t.teardown(async () => { await run('umount', ['-l', small]); });
  const c = paths(dir, lower.root);
  c.root = path.join(small, 'm');
  const r = await cli(args(c));
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, new RegExp(`database or disk is full \\(the merged DB in ${c.root}/nix/var/nix/db: its filesystem has no space left\\)`));
  t.not((await run('mountpoint', ['-q', path.join(c.root, 'nix/store')])).code, 0, 'nothing mounted');
});
