import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { processAlive } from '../../src/mount/records';
import { check, CLI, cli } from '../helpers/exec';
import { sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';

// libfuse 2 ends its loop by cancelling its workers. A worker cancelled inside libuv's signal
// handler took libuv's signal lock with it, and the daemon then waited for that lock forever
// after an unmount (native-notes/README.md, "Signals"). So no thread that libfuse or the fast
// path starts may take an asynchronous signal: they are all blocked there, and the kernel
// gives them to Node's own threads.

const ASYNC_SIGNALS = ['SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGALRM', 'SIGTERM', 'SIGCHLD', 'SIGCONT', 'SIGWINCH'] as const;

interface DaemonThread { tid: number; name: string; blocked: bigint }

async function threads(pid: number): Promise<DaemonThread[]> {
  const out: DaemonThread[] = [];
  for (const tid of await fs.promises.readdir(`/proc/${pid}/task`)) {
    // A thread may end between the listing and the read (a worker thread of the daemon's).
    const status = await fs.promises.readFile(`/proc/${pid}/task/${tid}/status`, 'utf8').catch(() => null);
    if (status === null) continue;
    const name = /^Name:\s+(.*)$/m.exec(status)?.[1] ?? '';
    const blocked = BigInt('0x' + (/^SigBlk:\s+([0-9a-f]+)$/m.exec(status)?.[1] ?? '0'));
    out.push({ tid: Number(tid), name, blocked });
  }
  return out;
}

const isBlocked = (mask: bigint, sig: (typeof ASYNC_SIGNALS)[number]): boolean => ((mask >> BigInt(os.constants.signals[sig] - 1)) & 1n) === 1n;

test('libfuse\'s threads and the watchdog take no asynchronous signal; Node\'s main thread does; the daemon exits after unmount', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { dir: tempDir(t) });
  // Requests in parallel, so that libfuse starts workers and the watchdog wakes.
  const objects = (await fs.promises.readdir(m.store)).slice(0, 20);
  await Promise.all(objects.map((o) => fs.promises.lstat(`${m.store}/${o}`)));
  const all = await threads(m.pid);
  const ours = all.filter((th) => th.name === 'lo-fuse' || th.name === 'lo-watchdog');
  t.true(ours.some((th) => th.name === 'lo-fuse'), `a thread named lo-fuse (libfuse's loop); the daemon's threads: ${all.map((th) => th.name).join(', ')}`);
  t.true(ours.some((th) => th.name === 'lo-watchdog'), `a thread named lo-watchdog; the daemon's threads: ${all.map((th) => th.name).join(', ')}`);
  for (const th of ours) {
    const open = ASYNC_SIGNALS.filter((sig) => !isBlocked(th.blocked, sig));
    t.deepEqual(open, [], `${th.name} thread ${th.tid} (SigBlk ${th.blocked.toString(16)}) takes ${open.join(', ')}`);
  }
  const main = all.find((th) => th.tid === m.pid);
  t.false(main !== undefined && isBlocked(main.blocked, 'SIGTERM'), 'the main thread takes SIGTERM');
  await m.unmount();
  t.false(processAlive(m.pid), 'the daemon is gone');
});

test('the daemon keeps no descriptor its caller left open: a pipe `mount` inherited reaches EOF once mount returns', async (t) => {
  const lower = await sharedLower();
  const dir = tempDir(t);
  const root = path.join(dir, 'merged');
  t.teardown(async () => { await cli(['unmount', root]); });
  // As a CI runner or a shell's job control does: `mount` runs with the write end of a pipe
  // open (not close-on-exec), and the reader waits for EOF to know the step has finished.
  const out = await check('python3', ['-c', `
import json, os, select, subprocess, sys
r, w = os.pipe()
os.dup2(w, 100)  # low numbers (4-9) came out close-on-exec in Node here, 100 does not
os.close(w)
m = subprocess.run(sys.argv[1:], pass_fds=[100], capture_output=True, text=True)
os.close(100)
eof = bool(select.select([r], [], [], 5)[0]) and os.read(r, 1) == b''
print(json.dumps({'code': m.returncode, 'stderr': m.stderr, 'eof': eof}))
`, process.execPath, CLI, 'mount', '--lower', lower.root, '--upper', path.join(dir, 'upper'), '--root', root]);
  const r = JSON.parse(out) as { code: number; stderr: string; eof: boolean };
  t.is(r.code, 0, r.stderr);
  t.true(r.eof, 'the pipe reached EOF: the daemon did not keep its write end');
});
