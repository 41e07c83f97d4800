import test from 'ava';
import { ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { processAlive } from '../../src/mount/records';
import { cli, CLI, run } from '../helpers/exec';
import { sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';

// The daemon's own files and the records unmount and status act on. The daemon runs with
// umask 0 (the filesystem must create exactly the modes FUSE passes): its own files must not
// inherit that, and a record must never be enough to make the CLI signal a process.

const mode = (p: string): string => (fs.statSync(p).mode & 0o7777).toString(8);

const fusectlMounted = (): boolean => fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(' /sys/fs/fuse/connections ');

async function waitGone(pid: number, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (processAlive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  return !processAlive(pid);
}

test('the daemon\'s own files and dirs get sane modes despite its umask 0; files made through the mount keep theirs', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const runDir = path.join(dir, 'run/local-overlay');
  const m = await mountMerged(t, lower.root, { dir, env: { LOCAL_OVERLAY_RUN_DIR: runDir } });
  const v = path.join(m.root, 'nix/var');
  const want: Record<string, string> = {
    'local-overlay': '755', 'local-overlay/daemon.json': '644', 'local-overlay/config.json': '644',
    'local-overlay/control.sock': '600', 'log/local-overlay.log': '644', 'nix/db': '755', 'nix/db/schema': '644',
    'nix/db/db.sqlite': '644', 'nix/gc.lock': '600',
  };
  const stamp = path.join(v, 'local-overlay/gc-roots.stamp');
  const end = Date.now() + 10_000;
  while (!fs.existsSync(stamp) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  want['local-overlay/gc-roots.stamp'] = '644';
  for (const [f, m0] of Object.entries(want)) t.is(mode(path.join(v, f)), m0, f);
  t.is(mode(runDir), '755', 'the registry dir');
  for (const f of fs.readdirSync(runDir)) t.is(mode(path.join(runDir, f)), '644', `registry entry ${f}`);
  t.deepEqual(fs.readdirSync(path.join(v, 'local-overlay')).filter((n) => n.startsWith('.')), [], 'no private bind dir left');
  // The filesystem still creates exactly what it is asked for (the kernel applied our umask).
  const old = process.umask(0o002);
  try {
    fs.closeSync(fs.openSync(path.join(m.store, '00000000000000000000000000000000-file'), 'wx', 0o666));
    await fs.promises.mkdir(path.join(m.store, '00000000000000000000000000000001-dir'), { mode: 0o777 });
  } finally {
    process.umask(old);
  }
  t.is(mode(path.join(m.upper, '00000000000000000000000000000000-file')), '664');
  t.is(mode(path.join(m.upper, '00000000000000000000000000000001-dir')), '775');
});

test('unmount never signals a process daemon.json names unless it is this root\'s daemon', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => { sleeper.kill('SIGKILL'); });
  const pid = sleeper.pid!;
  const recFile = path.join(m.root, 'nix/var/local-overlay/daemon.json');
  const rec = JSON.parse(fs.readFileSync(recFile, 'utf8')) as { pid: number };
  fs.writeFileSync(recFile, JSON.stringify({ ...rec, pid }));

  // The daemon still answers on its control socket: unmount finds it there, and stops it.
  const u = await cli(['unmount', m.root]);
  t.is(u.code, 0, u.stderr);
  t.true(await waitGone(m.pid), 'the real daemon exited');
  t.true(processAlive(pid), 'the process daemon.json named is alive');

  // A record left behind that names a live process, nothing mounted: not mounted, nothing signalled.
  fs.writeFileSync(recFile, JSON.stringify({ ...rec, pid }));
  const again = await cli(['unmount', m.root]);
  t.is(again.code, 3, again.stderr);
  await new Promise((r) => setTimeout(r, 200));
  t.true(processAlive(pid), 'the process daemon.json named is alive');
  t.is((await cli(['status', m.root])).code, 3, 'status: not mounted');
});

test('a daemon killed with SIGKILL: status lists its mount as not answering (exit 1, saying to unmount); unmount removes its leftovers', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  process.kill(m.pid, 'SIGKILL');
  t.true(await waitGone(m.pid));
  const state = path.join(m.root, 'nix/var/local-overlay');

  const one = await cli(['status', m.root]);
  t.is(one.code, 1, one.stderr);
  t.regex(one.stdout, new RegExp(`${m.store} +NOT ANSWERING`));
  t.regex(one.stdout, new RegExp(`its daemon, pid ${m.pid}, is not running.*run \`local-overlay unmount ${m.root}\``));
  const all = await cli(['status', '--json']);
  t.is(all.code, 1, all.stderr);
  const entry = (JSON.parse(all.stdout) as { root: string; answering?: boolean; healthy: boolean }[]).find((s) => s.root === m.root);
  t.like(entry, { answering: false, healthy: false }, 'status without a root lists the stale mount');

  const u = await cli(['unmount', m.store]);
  t.is(u.code, 0, u.stderr);
  t.deepEqual(fs.readdirSync(state).filter((n) => n === 'daemon.json' || n === 'control.sock'), [], 'leftovers removed');
  t.is((await cli(['status', m.root])).code, 3, 'status: not mounted');
});

test('status, trace and unmount take the store dir, or any path inside the merged root, as naming the root', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  for (const p of [m.store, path.join(m.store, path.basename(lower.manifest.paths.appOut), 'bin'), path.join(m.root, 'nix/var/nix/db')]) {
    const s = await cli(['status', p, '--json']);
    t.is(s.code, 0, `${p}: ${s.stderr}`);
    t.is((JSON.parse(s.stdout) as { root: string }).root, m.root);
  }
  const tr = await cli(['trace', m.store, 'off']);
  t.is(tr.code, 0, tr.stderr);
  const u = await cli(['unmount', m.store]);
  t.is(u.code, 0, u.stderr);
  t.true(await waitGone(m.pid), 'the daemon exited');
});

test('mount --metadata lazy warns on its stderr what plain Nix cannot do on the merged store (add or build what the lower store has, collect garbage) and what to use', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const root = path.join(dir, 'merged');
  const r = await cli(['mount', '--lower', lower.root, '--upper', path.join(dir, 'upper'), '--root', root, '--metadata', 'lazy']);
  t.teardown(async () => { await cli(['unmount', root]); });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /^local-overlay: warning: lazy metadata: plain Nix asks its DB before the filesystem.*adding or building a path the lower store has fails with EROFS.*its GC would delete lower objects\. For plain Nix use --metadata mirror, or copy first with `local-overlay sync`/m);
  t.regex(r.stdout, /^mounted /);
});

test('unmount names the processes that still use the store, which lose it', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const user = spawn('sleep', ['60'], { cwd: m.store, stdio: 'ignore' });
  t.teardown(() => { user.kill('SIGKILL'); });
  await new Promise((r) => user.once('spawn', r));
  const r = await cli(['unmount', m.root]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`1 process still uses ${m.store} and loses it now: ${user.pid} \\(sleep\\)`));
});

test('a merged root reached through a symlinked dir: the mount stays up, and status and unmount find it by either path', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  await fs.promises.mkdir(path.join(dir, 'real'));
  await fs.promises.symlink('real', path.join(dir, 'link'));
  const m = await mountMerged(t, lower.root, { dir: path.join(dir, 'link') });
  // The daemon's watchdog looks for its mount every 2 s; it took the symlinked path for gone.
  await new Promise((r) => setTimeout(r, 3000));
  t.true(processAlive(m.pid), 'the daemon still runs');
  t.true((await fs.promises.readdir(m.store)).length > 0, 'and serves the store');
  for (const root of [m.root, path.join(dir, 'real', 'merged')]) {
    const s = await cli(['status', root]);
    t.is(s.code, 0, `status ${root}: ${s.stdout}${s.stderr}`);
  }
  const u = await cli(['unmount', m.root]);
  t.is(u.code, 0, u.stderr);
  t.true(await waitGone(m.pid), 'unmount through the symlinked path stops the daemon');
});

test('unmount is not held up by a client that keeps the control socket open', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const idle = net.connect(path.join(m.root, 'nix/var/local-overlay/control.sock'));
  idle.on('error', () => undefined); // the daemon ends it
  t.teardown(() => { idle.destroy(); });
  await new Promise((r) => idle.once('connect', r));
  const u = await cli(['unmount', m.root, '--timeout', '5']);
  t.is(u.code, 0, `${u.stdout}${u.stderr}`);
  t.true(await waitGone(m.pid, 1000), 'the daemon exited');
});

test('unmount, mount and status name a process that uses the root and keeps a mount of it in a mount namespace of its own; others there are not told to restart', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  // What a nix-daemon run as root does at start (Nix 2.8 unshares a mount namespace), where
  // mounts are private: it keeps the mount it saw. One holder works in the root (as a
  // `nix-daemon --store ROOT` names it); the other has nothing to do with it.
  const ns = (pid: number | string): string => { try { return fs.readlinkSync(`/proc/${pid}/ns/mnt`); } catch { return ''; } };
  const hold = async (cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<ChildProcess> => {
    const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '600'], { stdio: 'ignore', cwd, env });
    t.teardown(() => { holder.kill('SIGKILL'); });
    for (let i = 0; i < 100 && (ns(holder.pid!) === ns('self') || !fs.readFileSync(`/proc/${holder.pid!}/comm`, 'utf8').startsWith('sleep')); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    t.not(ns(holder.pid!), ns('self'), 'unshare made a mount namespace of its own');
    return holder;
  };
  const user = await hold(path.join(m.root, 'nix/var'));
  // A root whose name starts with this one's is another root.
  const bystander = await hold('/', { ...process.env, ANOTHER_ROOT: `${m.root}-other` });
  const none = await cli(['status', m.root, '--json']);
  t.is((JSON.parse(none.stdout) as { staleMount?: string }).staleMount, undefined, 'the same mount is not an earlier one');
  const u = await cli(['unmount', m.root]);
  t.is(u.code, 0, u.stderr);
  t.regex(u.stderr, new RegExp(`warning: a process that uses ${m.root} sees this mount from a mount namespace of its own: ${user.pid!} \\(sleep\\)\\. It loses it now`));
  t.notRegex(u.stderr, new RegExp(`${bystander.pid!}`), 'not the bystander');
  const again = await mountMerged(t, lower.root, { dir: m.dir });
  t.regex(again.mountStderr, new RegExp(`warning: a process that uses ${again.root} sees an earlier mount of ${again.store}, dead since it was unmounted, in a mount namespace of its own: ${user.pid!} \\(sleep\\)\\. Restart it .*; 1 other there shows no use of it`));
  const s = await cli(['status', again.root]);
  t.regex(s.stdout, new RegExp(`warning +a process that uses .* sees an earlier mount .*${user.pid!} \\(sleep\\)`));
  // From inside the stale namespace the daemon's view still decides; kernel threads are no one's.
  const inside = await run('nsenter', ['-t', String(user.pid!), '-m', '--', process.execPath, CLI, 'status', again.root]);
  t.regex(inside.stdout, new RegExp(`warning +a process that uses .* sees an earlier mount .*: ${user.pid!} \\(sleep\\)\\.`), inside.stdout + inside.stderr);
  user.kill('SIGKILL');
  await new Promise((r) => user.once('exit', r));
  const only = await cli(['status', again.root, '--json']);
  t.regex((JSON.parse(only.stdout) as { staleMount?: string }).staleMount ?? '', new RegExp(`^a process sees an earlier, dead mount .* \\(${bystander.pid!} \\(sleep\\)\\); nothing shows it uses`), 'the bystander alone: no restart demanded of it');
  bystander.kill('SIGKILL');
  await new Promise((r) => bystander.once('exit', r));
  const after = await cli(['status', again.root, '--json']);
  t.is((JSON.parse(after.stdout) as { staleMount?: string }).staleMount, undefined, 'gone with the processes');
});

test('unmount leaves alone a mount at the store dir that is not local-overlay\'s', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  await m.unmount();
  const other = tempDir(t, 'lo-bind-');
  const bind = await run('mount', ['--bind', other, m.store]);
  t.is(bind.code, 0, bind.stderr);
  t.teardown(async () => { await run('umount', [m.store]); });
  const r = await cli(['unmount', m.root]);
  t.not(r.code, 0, r.stdout);
  t.regex(r.stderr, /is a (ext4|xfs|tmpfs|btrfs|\S+) mount, not a local-overlay one: not unmounted/);
  t.true((await run('mountpoint', ['-q', m.store])).code === 0, 'the bind mount is still there');
});

test('unmount --force frees a mount whose daemon does not answer: the waiting request fails, the daemon is killed, the mount detached; the root mounts again', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  const object = path.basename(Object.values(lower.manifest.paths)[0]!);
  const fusectlBefore = fusectlMounted();
  // A stopped daemon answers nothing, as one whose threads wait on each other; a client's lookup waits with it.
  process.kill(m.pid, 'SIGSTOP');
  t.teardown(() => { try { process.kill(m.pid, 'SIGKILL'); } catch { /* gone */ } });
  const waiting = run('stat', ['-c', '%s', `${m.store}/${object}`], { timeoutMs: 60_000 });
  let settled = false;
  void waiting.then(() => { settled = true; });

  const st = await cli(['status', m.root]);
  t.is(st.code, 1, st.stdout);
  t.regex(st.stdout, new RegExp(`${m.store} +pid ${m.pid} +NOT ANSWERING\\n +lower +${lower.root} `));
  t.regex(st.stdout, /does not answer its control socket .*its \d+ threads: .*`local-overlay unmount --force /);

  const plain = await cli(['unmount', '--timeout', '0.5', m.root]);
  t.is(plain.code, 1, plain.stdout);
  t.regex(plain.stderr, new RegExp(`daemon ${m.pid} did not exit within 0.5 s; .*\`unmount --force\` aborts`));
  t.false(settled, 'the lookup still waits');

  const forced = await cli(['unmount', '--force', '--timeout', '0.5', m.root]);
  t.is(forced.code, 0, forced.stderr);
  t.regex(forced.stdout, new RegExp(`unmounted ${m.store} \\(forced: aborted FUSE connection \\d+, killed daemon ${m.pid}(, detached the mount)?\\)`));
  const lookup = await waiting;
  t.not(lookup.code, 0, 'the waiting lookup fails');
  t.regex(lookup.stderr, /connection abort|not connected/i);
  t.true(await waitGone(m.pid));
  t.not((await run('mountpoint', ['-q', m.store])).code, 0, 'the mount is detached');
  t.is((await cli(['status', m.root])).code, 3, 'status: not mounted');
  const json = await cli(['status', m.root, '--json']);
  t.is(json.code, 3);
  t.deepEqual(JSON.parse(json.stdout), { root: m.root, mounted: false }, 'status --json answers scripts too');
  t.is(fusectlMounted(), fusectlBefore, 'fusectl is unmounted again when unmount mounted it');

  const again = await mountMerged(t, lower.root, { dir });
  const listed = await fs.promises.readdir(again.store);
  t.true(listed.includes(object), 'the root mounts again and serves the lower objects');
});

test('a remount without --metadata keeps the mode the root was mounted with; --metadata switches it', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { metadata: 'lazy' });
  await m.unmount();
  const base = ['--lower', lower.root, '--upper', m.upper, '--root', m.root, '--work', m.work];
  for (const [extra, mode] of [[[], 'lazy'], [['--metadata', 'mirror'], 'mirror'], [[], 'mirror']] as const) {
    const r = await cli(['mount', ...base, ...extra]);
    t.is(r.code, 0, r.stderr);
    t.teardown(() => cli(['unmount', m.root]).then(() => undefined));
    t.regex(r.stdout, new RegExp(`metadata ${mode}\\b`), `${extra.join(' ') || 'no --metadata'}: ${r.stdout}`);
    const u = await cli(['unmount', m.root]);
    t.is(u.code, 0, u.stderr);
  }
});

test('a state dir removed under a running mount: status and unmount find the daemon by its command line', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const state = path.join(m.root, 'nix/var/local-overlay');
  fs.renameSync(state, `${state}.gone`);
  const s = await cli(['status', m.root]);
  t.is(s.code, 1, s.stdout);
  t.regex(s.stdout, new RegExp(`its daemon, pid ${m.pid}, runs, but its daemon.json is gone .*\`local-overlay unmount ${m.root}\` stops it`));
  const u = await cli(['unmount', m.root]);
  t.is(u.code, 0, u.stderr);
  t.is(u.stdout.trim(), `unmounted ${m.store}`, 'the daemon was found and stopped, not the mount detached behind it');
  t.true(await waitGone(m.pid));
});

test('what a killed daemon left in its work dir\'s hidden dir is deleted by the next mount', async (t) => {
  const dir = tempDir(t);
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir });
  process.kill(m.pid, 'SIGKILL');
  t.true(await waitGone(m.pid));
  // As optimise leaves an upper copy it moved out of the store through the mount, when the daemon dies before its rm.
  const left = path.join(m.work, 'hidden', '.fuse_hidden0123456789abcdef');
  fs.mkdirSync(path.join(left, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(left, 'sub', 'f'), 'x'.repeat(4096));
  fs.chmodSync(path.join(left, 'sub'), 0o555);
  t.is((await cli(['unmount', m.root])).code, 0);
  await mountMerged(t, lower.root, { dir });
  const end = Date.now() + 10_000;
  const gone = (): boolean => !fs.existsSync(left) && fs.readdirSync(path.join(m.work, 'trash')).length === 0;
  while (!gone() && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.true(gone(), `still there: ${fs.existsSync(left) ? left : fs.readdirSync(path.join(m.work, 'trash')).join(', ')}`);
});

test('the daemon keeps none of its caller\'s environment but what it needs: a store path named there would be a Nix runtime root for as long as it is mounted', async (t) => {
  const lower = await sharedLower();
  const pinned = '/nix/store/00000000000000000000000000000000-pinned-by-the-environment';
  const m = await mountMerged(t, lower.root, { env: { SHELL_VAR: pinned, LC_ALL: 'C', LOCAL_OVERLAY_TEST_MARK: '1' } });
  t.true(m.pid > 0, 'the daemon\'s pid is known');
  const env = fs.readFileSync(`/proc/${m.pid}/environ`, 'utf8').split('\0').filter((e) => e !== '');
  const names = env.map((e) => e.slice(0, e.indexOf('=')));
  t.false(env.some((e) => e.includes(pinned)), `the daemon's environment names the store path: ${names.join(' ')}`);
  t.true(names.includes('PATH'), 'PATH is kept: the daemon runs sh, flock and fusermount');
  t.true(names.includes('LC_ALL') && names.includes('LOCAL_OVERLAY_TEST_MARK'), `locale and local-overlay's own settings are kept: ${names.join(' ')}`);
});
