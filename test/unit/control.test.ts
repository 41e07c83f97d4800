// src/mount/control.ts controlRequest: a daemon that dies (SIGKILL, crash) after accepting a
// request closes its end of the control socket without an answer. The client must say so at
// once, not wait out its timeout (`sync` waits up to 600 s, `refresh` 15 s).
import test from 'ava';
import * as net from 'node:net';
import * as path from 'node:path';
import { controlRequest } from '../../src/mount/control';
import { tempDir } from '../helpers/mount';

test('controlRequest fails at once when the daemon closes the connection without answering', async (t) => {
  const sock = path.join(tempDir(t), 'control.sock');
  // Reads the request, then goes away as a killed daemon does: the connection closes, no reply.
  const server = net.createServer((c) => c.once('data', () => c.destroy()));
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const started = Date.now();
  const err = await t.throwsAsync(controlRequest(sock, { cmd: 'sync', paths: [] }, 20_000));
  t.true(Date.now() - started < 5000, `took ${Date.now() - started} ms: waited for the timeout`);
  t.regex(err?.message ?? '', /closed the connection without answering/);
});

test('controlRequest still returns an answer followed by the daemon closing the connection', async (t) => {
  const sock = path.join(tempDir(t), 'control.sock');
  const server = net.createServer((c) => c.once('data', () => c.end(JSON.stringify({ ok: true, n: 1 }) + '\n')));
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  t.deepEqual(await controlRequest(sock, { cmd: 'status' }, 20_000), { ok: true, n: 1 });
});
