import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { processAlive } from '../../src/mount/records';
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
