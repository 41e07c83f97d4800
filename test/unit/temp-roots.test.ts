import test from 'ava';
import type { ExecutionContext } from 'ava';
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { takeGcLockExclusive } from '../../src/metadata/gc-lock';
import { GcRootsServer, liveTempRoots } from '../../src/metadata/temp-roots';
import { tempDir } from '../helpers/mount';
import { nixOk } from '../helpers/nix';

// Nix 2.8's temp-roots protocol (libstore/gc.cc) as optimise follows it, against real files,
// real locks and the real Nix client.

/** Holds flock(LOCK_EX) on `file` in a child, as a live Nix client holds its temp roots file. */
async function holdLock(t: ExecutionContext, file: string): Promise<ChildProcessWithoutNullStreams> {
  const holder = spawn('flock', ['--exclusive', file, 'sh', '-c', 'echo locked; read _']);
  t.teardown(() => { holder.kill('SIGKILL'); });
  await new Promise<void>((resolve) => holder.stdout.on('data', (d: Buffer) => { if (d.toString().includes('locked')) resolve(); }));
  return holder;
}

test('temp roots: the files of live clients are read, those of dead ones are skipped and left in place', async (t) => {
  const state = tempDir(t);
  const dir = path.join(state, 'temproots');
  fs.mkdirSync(dir);
  const a = '/nix/store/0000000000000000000000000000000a-a.drv';
  const b = '/nix/store/0000000000000000000000000000000b-b';
  fs.writeFileSync(path.join(dir, '111'), `${a}\0${b}\0${a}\0/nix/store/00000000000000000000000000000`); // the last one half written
  fs.writeFileSync(path.join(dir, '222'), `${b}\0`);
  fs.writeFileSync(path.join(dir, '.keep'), '');
  await holdLock(t, path.join(dir, '111'));
  const roots = await liveTempRoots(state);
  t.deepEqual(roots, [{ pid: 111, path: a }, { pid: 111, path: b }, { pid: 111, path: a }]);
  t.true(fs.existsSync(path.join(dir, '222')), 'a dead client\'s file is Nix\'s GC\'s to remove');
  t.deepEqual(await liveTempRoots(path.join(state, 'none')), [], 'no temproots dir: no roots');
});

test('GC roots socket: a Nix 2.8 client that adds a path while the GC lock is held exclusively sends its root, is answered and goes on', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'root');
  const state = path.join(root, 'nix/var/nix');
  fs.writeFileSync(path.join(dir, 'first.txt'), 'first\n');
  await nixOk('nix-store', ['--store', root, '--add', path.join(dir, 'first.txt')]); // makes the store
  const r = await takeGcLockExclusive(path.join(state, 'gc.lock'), 5);
  if (r.lock === null) return t.fail(r.why);
  const lock = r.lock;
  t.teardown(() => lock.release());
  const server = await GcRootsServer.listen(state);
  t.is(fs.statSync(server.socketPath).mode & 0o777, 0o666);
  fs.writeFileSync(path.join(dir, 'during.txt'), `during ${Date.now()}\n`);
  const added = (await nixOk('nix-store', ['--store', root, '--add', path.join(dir, 'during.txt')])).trim();
  t.true(server.roots.some((x) => x.pid === null && x.path === added), `the root came to the socket: ${JSON.stringify(server.roots)}`);
  lock.release();
  await lock.gone;
  await server.close();
  t.false(fs.existsSync(server.socketPath), 'the socket file goes with the server');
  const again = await takeGcLockExclusive(path.join(state, 'gc.lock'), 0);
  t.not(again.lock, null, 'the lock is free once released');
  again.lock?.release();
});
