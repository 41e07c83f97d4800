// src/mount/output-locks.ts: the flock(2) locks held on a mount, from /proc/locks (a file
// written here, and the real one with a lock held by a `flock` child), the probe the mirror
// asks, and the mount's device from a mountinfo written here.
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { flockedInodes, outputLockProbe } from '../../src/mount/output-locks';
import { mountDevice } from '../../src/mount/records';
import { tempDir } from '../helpers/mount';

const LOCKS = [
  '1: FLOCK  ADVISORY  WRITE 2014 00:27:30834928 0 EOF',
  '1: -> FLOCK  ADVISORY  WRITE 2015 00:27:30834930 0 EOF', // a waiter holds nothing
  '2: POSIX  ADVISORY  READ 8511 00:27:2171201 128 128',
  '3: FLOCK  ADVISORY  WRITE 77 fe:00:15417464 0 EOF',
  '4: FLOCK  ADVISORY  READ 78 00:27:12 0 EOF',
  '5: FLOCK  ADVISORY  WRITE 79 01:27:14 0 EOF',
  '',
].join('\n');

function locksFile(t: Parameters<typeof tempDir>[0], text = LOCKS): string {
  const f = path.join(tempDir(t), 'locks');
  fs.writeFileSync(f, text);
  return f;
}

test('flockedInodes: the inodes of the flock locks held on one device (hex in /proc/locks); waiters, POSIX locks and other devices are not', (t) => {
  const f = locksFile(t);
  t.deepEqual([...flockedInodes([0, 39], f)].sort((a, b) => a - b), [12, 30834928]);
  t.deepEqual([...flockedInodes([254, 0], f)], [15417464]);
  t.deepEqual([...flockedInodes([0, 40], f)], []);
  t.deepEqual([...flockedInodes([0, 39], path.join(path.dirname(f), 'absent'))], [], 'no file: no locks');
});

test('flockedInodes on the real /proc/locks: a flock another process holds is listed by its file\'s device and inode until released', async (t) => {
  const file = path.join(tempDir(t), 'x.lock');
  fs.writeFileSync(file, '');
  const st = fs.statSync(file, { bigint: true });
  // glibc's encoding of st_dev (major/minor).
  const dev: [number, number] = [Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn)), Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn))];
  const ino = Number(st.ino);
  t.false(flockedInodes(dev).has(ino));
  const child = spawn('flock', ['--exclusive', file, 'sh', '-c', 'echo locked; read _'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(() => { child.stdin.end(); });
  await new Promise<void>((r) => child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('locked')) r(); }));
  t.true(flockedInodes(dev).has(ino), 'held');
  child.stdin.end();
  await exited;
  t.false(flockedInodes(dev).has(ino), 'released');
});

test('outputLockProbe: the store paths whose lock file is one a lock is held on; a stale lock file, or none, holds nothing; no lock on the mount: the paths are not even listed', (t) => {
  const inos = new Map([['aaa-x.lock', 30834928], ['bbb-y.lock', 99], ['ccc-z.lock', 12]]);
  const probe = outputLockProbe([0, 39], '/nix/store', (name) => inos.get(name) ?? null, locksFile(t));
  const paths = ['/nix/store/aaa-x', '/nix/store/bbb-y', '/nix/store/ccc-z', '/nix/store/ddd-w', '/elsewhere/aaa-x'];
  t.deepEqual([...probe(() => paths)].sort(), ['/nix/store/aaa-x', '/nix/store/ccc-z']);
  const idle = outputLockProbe([0, 40], '/nix/store', () => { throw new Error('asked'); }, locksFile(t));
  t.deepEqual([...idle(() => { throw new Error('listed'); })], []);
});

test('mountDevice: the device of the mount on top at a dir, from mountinfo (decimal major:minor; escaped names)', (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'a b/nix/store'), { recursive: true });
  const info = path.join(dir, 'mountinfo');
  const at = `${fs.realpathSync(dir).replaceAll(' ', '\\040')}/a\\040b/nix/store`;
  fs.writeFileSync(info, [
    `41 27 0:38 / ${at} rw,nosuid,nodev,relatime - fuse.local-overlay local-overlay rw,user_id=0`,
    `42 41 0:39 / ${at} rw,nosuid,nodev,relatime - fuse.local-overlay local-overlay rw,user_id=0`,
    `43 27 0:40 / ${at}x rw - tmpfs tmpfs rw`, ''].join('\n'));
  t.deepEqual(mountDevice(path.join(dir, 'a b/nix/store'), info), [0, 39]);
  t.is(mountDevice(path.join(dir, 'a b/nix'), info), null);
});
