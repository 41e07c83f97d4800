import test, { ExecutionContext } from 'ava';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stuckWhere } from '../../src/mount/records';
import { processAlive } from '../../src/mount/records';
import { check, cli, run } from '../helpers/exec';
import { freshLower, lowerAdd, Manifest } from '../helpers/fixture';
import { nix } from '../helpers/nix';
import { mountMerged, tempDir } from '../helpers/mount';

// One worker at a time reads requests from the device (native/fastpath.c, "the reader"). These
// tests stop the lower layer in the middle of a request and check that the rest of the store
// goes on answering: a lower dir on FUSE (slow by its filesystem type) hands the role over before
// each call on it; a lower dir on kernel OverlayFS over that FUSE mount counts as local, so the
// stuck call keeps the role until the watchdog takes it. The lower's FUSE server is
// fuse-overlayfs, stopped with SIGSTOP: every call on it waits until SIGCONT.

interface Status { fastPath: Record<string, number | boolean> | null }

async function counter(root: string, name: string): Promise<number> {
  const r = await cli(['status', root, '--json']);
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
  return Number((JSON.parse(r.stdout) as Status).fastPath?.[name] ?? 0);
}

async function mounted(dir: string): Promise<boolean> {
  const text = await fs.promises.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === dir);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The kernel stacks of `pid`'s threads that wait outside the usual idle places (diagnosis). */
function kernelStacks(pid: number): string {
  const out: string[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stack = fs.readFileSync(`/proc/${pid}/task/${tid}/stack`, 'utf8').split('\n').map((l) => l.replace(/^\[<0>\] /, '').replace(/\+0x.*$/, '')).filter((l) => l !== '');
      if (stack.length > 0 && !/futex|epoll/.test(stack[0])) out.push(`${tid}: ${stack.slice(0, 8).join(' < ')}`);
    } catch { /* gone */ }
  }
  return out.join(' | ');
}

/** Rejects with `what` if `p` takes longer than `ms`. */
async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(what)), ms); });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A copy of the shared lower store one of whose dirs (`served`: the store dir, or the DB dir) is
 * served by fuse-overlayfs (in front of the real one, which moves to `dir/real`), either
 * directly (bind mount) or through a kernel OverlayFS mount. `fuseOptions` go to
 * fuse-overlayfs. Returns the lower root and fuse-overlayfs's pid; everything is unmounted when
 * the test ends.
 */
async function lowerOnFuse(t: ExecutionContext, dir: string, via: 'bind' | 'overlay', served = 'nix/store', fuseOptions: string[] = []): Promise<{ root: string; servedDir: string; serverPid: number; manifest: Manifest }> {
  const which = await run('sh', ['-c', 'command -v fuse-overlayfs']);
  if (which.code !== 0) throw new Error('fuse-overlayfs is missing (apt-get install fuse-overlayfs, or make system-packages): it serves the stoppable lower layer');
  const lower = await freshLower(dir);
  const servedDir = path.join(lower.root, served);
  const real = path.join(dir, 'real');
  await fs.promises.rename(servedDir, real);
  await fs.promises.mkdir(servedDir);
  const fuseDir = path.join(dir, 'fuse');
  for (const d of [fuseDir, path.join(dir, 'fo-upper'), path.join(dir, 'fo-work'), path.join(dir, 'empty')]) await fs.promises.mkdir(d);
  const opts = [`lowerdir=${real}`, `upperdir=${dir}/fo-upper`, `workdir=${dir}/fo-work`, ...fuseOptions];
  const server = spawn('fuse-overlayfs', ['-f', '-o', opts.join(','), fuseDir], { stdio: 'ignore' });
  t.teardown(async () => {
    for (const d of [servedDir, fuseDir]) {
      if (await mounted(d)) await run('umount', ['-l', d]);
    }
    server.kill('SIGCONT');
    server.kill('SIGTERM');
  });
  for (let i = 0; !(await mounted(fuseDir)); i++) {
    if (i > 100 || server.exitCode !== null) throw new Error(`fuse-overlayfs did not mount ${fuseDir}`);
    await sleep(50);
  }
  if (via === 'bind') {
    await check('mount', ['--bind', fuseDir, servedDir]);
  } else {
    const r = await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${fuseDir}:${dir}/empty`, servedDir]);
    if (r.code !== 0) throw new Error(`kernel OverlayFS is needed for this test (mount -t overlay failed: ${r.stderr.trim()})`);
  }
  if (server.pid === undefined) throw new Error('fuse-overlayfs has no pid');
  return { root: lower.root, servedDir, serverPid: server.pid, manifest: lower.manifest };
}

/** A process expected to wait on a stopped layer: its exit code once it ends, and its output so far. Killed when the test ends. */
function waiting(t: ExecutionContext, cmd: string, args: string[]): { child: ChildProcess; done: Promise<number | null>; out: () => string } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
  const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  t.teardown(() => { child.kill('SIGKILL'); });
  return { child, done, out: () => out };
}

/** For a timeout: an error saying where the daemon's threads and this process's wait (kernel wait channels, names, stacks). */
function stuckError(what: string, daemonPid: number): (err: unknown) => never {
  return (err) => { throw new Error(`${what}; the daemon: ${stuckWhere(daemonPid)}; this process: ${stuckWhere(process.pid)}; ${kernelStacks(process.pid)}`, { cause: err }); };
}

/** Stops `pid` (SIGSTOP) until the function returned, or the end of the test, continues it. */
function stopUntilResumed(t: ExecutionContext, pid: number): () => void {
  process.kill(pid, 'SIGSTOP');
  let stopped = true;
  const resume = (): void => {
    if (stopped) process.kill(pid, 'SIGCONT');
    stopped = false;
  };
  t.teardown(resume);
  return resume;
}

/**
 * Stops the lower layer while a read of a lower file waits on it, then checks that a change in
 * an upper object and a read of it are answered while that read still waits, and that the
 * waiting read completes with the right bytes once the lower layer runs again.
 */
async function stuckLowerDoesNotStopTheStore(t: ExecutionContext, via: 'bind' | 'overlay', counterName: string): Promise<void> {
  const dir = tempDir(t);
  const lower = await lowerOnFuse(t, dir, via);
  const m = await mountMerged(t, lower.root);
  const obj = path.join(m.store, '00000000000000000000000000000r01-reader-upper');
  await fs.promises.mkdir(obj);
  const objName = lower.manifest.paths.dirObject.replace(/^\/nix\/store\//, '');
  const lowerObj = path.join(m.store, objName);
  await fs.promises.readdir(lowerObj);
  const before = await counter(m.root, counterName);

  const resume = stopUntilResumed(t, lower.serverPid);

  const file = 'share/doc/sample/deep/er/nested.txt';
  const reader = waiting(t, 'cat', [path.join(lowerObj, file)]);
  await sleep(500);
  t.is(reader.child.exitCode, null, 'the lower read waits while the lower layer is stopped');

  const probe = path.join(obj, 'probe');
  await within(5000, 'a write to an upper object waited for the stuck lower read: the reader role was not passed on', fs.promises.writeFile(probe, 'answered\n'))
    .catch(stuckError('the write timed out', m.pid));
  t.is(await within(5000, 'a read of an upper file waited for the stuck lower read', fs.promises.readFile(probe, 'utf8')).catch(stuckError('the read timed out', m.pid)), 'answered\n');
  t.is(reader.child.exitCode, null, 'and the lower read still waits');

  resume();
  t.is(await within(10_000, 'the lower read did not finish after the lower layer resumed', reader.done), 0);
  t.is(reader.out(), await fs.promises.readFile(path.join(dir, 'real', objName, file), 'utf8'));
  t.true(await counter(m.root, counterName) > before, `status counts the ${counterName}`);
}

test('a lower layer on FUSE that stops answering holds up only the requests for it (the reader role is handed over first)', async (t) => {
  await stuckLowerDoesNotStopTheStore(t, 'bind', 'handoffs');
});

test('a call on a local-looking lower layer that hangs holds up only its own request (the watchdog takes the reader role)', async (t) => {
  await stuckLowerDoesNotStopTheStore(t, 'overlay', 'stalls');
});

// The kernel serializes lookups in one directory unless the server allows them at once
// (FUSE_PARALLEL_DIROPS; native/fastpath.c, INIT). Every store object is looked up in the store
// root, so without it one lookup of a lower object that waits on a stopped lower layer holds up
// the first lookup of every other object, upper ones included.
test('a lookup in the store root that waits on a stopped lower layer holds up no other lookup there', async (t) => {
  const dir = tempDir(t);
  const lower = await lowerOnFuse(t, dir, 'bind');
  const m = await mountMerged(t, lower.root);
  // An upper object the kernel has not looked up yet: made beside the mount, then refreshed.
  const upperName = '00000000000000000000000000000r03-reader-root';
  await fs.promises.mkdir(path.join(m.upper, upperName));
  await fs.promises.writeFile(path.join(m.upper, upperName, 'probe'), 'answered\n');
  t.is((await cli(['refresh', m.root])).code, 0);
  const lowerName = lower.manifest.paths.singleFile.replace(/^\/nix\/store\//, '');

  const resume = stopUntilResumed(t, lower.serverPid);
  // The first lookup of a lower object: the daemon's lstat of it waits on the stopped layer.
  const looker = waiting(t, 'stat', ['-c', '%s', path.join(m.store, lowerName)]);
  await sleep(500);
  t.is(looker.child.exitCode, null, 'the lookup of the lower object waits while the lower layer is stopped');

  t.is(await within(5000, 'the first lookup of an upper object waited for a lookup of a lower one', fs.promises.readFile(path.join(m.store, upperName, 'probe'), 'utf8'))
    .catch(stuckError('the lookup of an upper object timed out', m.pid)), 'answered\n');
  t.is(looker.child.exitCode, null, 'and the lower lookup still waits');
  resume();
  t.is(await within(10_000, 'the lower lookup did not finish after the lower layer resumed', looker.done), 0);
});

// An ordinary exit waits for threads that wait on a layer (libuv's pool joins its threads,
// libfuse's loop its workers); the daemon sets itself a deadline once it has unmounted
// (native/fastpath.c, "the exit deadline").
test('unmount finishes, and the daemon exits, while a lower layer that stopped answering still holds requests', async (t) => {
  const dir = tempDir(t);
  const lower = await lowerOnFuse(t, dir, 'bind', 'nix/store', ['timeout=0']); // every stat asks the server
  const m = await mountMerged(t, lower.root);
  const objName = lower.manifest.paths.dirObject.replace(/^\/nix\/store\//, '');
  stopUntilResumed(t, lower.serverPid);
  const reader = waiting(t, 'cat', [path.join(m.store, objName, 'share/doc/sample/deep/er/nested.txt')]);
  // status's health check leaves one more call waiting, in libuv's pool.
  const s = await cli(['status', m.root]);
  t.regex(s.stdout, /UNHEALTHY \(lower store unreadable: no answer for/, s.stdout);
  await sleep(500);
  t.is(reader.child.exitCode, null, 'the lower read waits while the lower layer is stopped');

  const u = await cli(['unmount', m.root, '--timeout', '15']);
  t.is(u.code, 0, `unmount: ${u.stderr}`);
  t.false(await mounted(m.store), 'the store is no longer mounted');
  t.false(processAlive(m.pid), `the daemon ${m.pid} has exited`);
  const log = await fs.promises.readFile(path.join(m.root, 'nix/var/log/local-overlay.log'), 'utf8');
  t.regex(log, /exiting with \d+ file system calls unanswered/, 'the log says what it did not wait for');
});

// The lower DB may sit on the same shared filesystem as the lower store. The daemon's one JS
// thread answers every request the fast path leaves to it (with --no-fast-path, all of them), so
// nothing that runs on it periodically may wait on the lower DB: not the follower's check for
// changes, nor the watcher of the lower store dir. fuse-overlayfs with timeout=0 revalidates
// every stat with its server, as an NFS client does once its attribute cache expires.
for (const metadata of ['lazy', 'mirror'] as const) {
  test(`a lower DB that stops answering holds up no request for the upper layer (${metadata} mode, every request answered in JS)`, async (t) => {
    const dir = tempDir(t);
    const lower = await lowerOnFuse(t, dir, 'bind', 'nix/var/nix/db', ['timeout=0']);
    const m = await mountMerged(t, lower.root, { metadata, extra: ['--no-fast-path', '--follow-interval', '100'] });
    const obj = path.join(m.store, `00000000000000000000000000000r02-db-stopped-${metadata}`);
    await fs.promises.mkdir(obj);

    const resume = stopUntilResumed(t, lower.serverPid);
    await sleep(1000); // ten of the follower's checks for changes

    const probe = path.join(obj, 'probe');
    await within(5000, 'a write to an upper object waited for the stopped lower DB', fs.promises.writeFile(probe, 'answered\n'))
      .catch(stuckError('the write timed out', m.pid));
    t.is(await within(5000, 'a read of an upper file waited for the stopped lower DB', fs.promises.readFile(probe, 'utf8')).catch(stuckError('the read timed out', m.pid)), 'answered\n');
    // status answers, and says what waits.
    const s = await cli(['status', m.root, '--json']);
    t.is(s.code, 1, `status exits 1 for a mount whose lower DB does not answer: ${s.stdout}${s.stderr}`);
    const report = JSON.parse(s.stdout) as { healthy: boolean; health: { problems: string[] }; follower: { checkWaitingMs: number } };
    t.false(report.healthy);
    t.true(report.health.problems.some((p) => /^lower DB unreadable: no answer for \d/.test(p)), report.health.problems.join('; '));
    t.true(report.follower.checkWaitingMs > 500, `the follower's check waits (${report.follower.checkWaitingMs} ms)`);

    // Once it answers again, the follower goes on: a path added to the lower store is valid.
    resume();
    const added = await lowerAdd(lower.root, 'after-resume');
    const deadline = Date.now() + 10_000;
    let valid = false;
    while (!valid && Date.now() < deadline) {
      // In lazy mode the first lookup copies its row; in mirror mode the follower does.
      if (metadata === 'lazy') await fs.promises.lstat(path.join(m.store, path.basename(added))).catch(() => undefined);
      valid = (await nix('nix-store', ['--store', m.root, '--check-validity', added])).code === 0;
      if (!valid) await sleep(100);
    }
    t.true(valid, `${added}, added to the lower store after its DB answered again, became valid in the merged store`);
  });
}
