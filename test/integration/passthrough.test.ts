import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { check, cli } from '../helpers/exec';
import { sharedLower } from '../helpers/fixture';
import { mountMerged } from '../helpers/mount';
import { PASSTHROUGH_MIN_BYTES } from '../../src/mount/config';

// FUSE passthrough (native/fastpath.c, "the channel"): the kernel reads lower files of at least
// PASSTHROUGH_MIN_BYTES itself.
// What must hold: the bytes, mmap and attributes are the lower file's; every open of a file
// gets the same mode while another is open (the kernel fails a mismatch with EIO), whoever
// answers the open (native code or JS); upper files never take part; --no-passthrough and a
// kernel without it read through the daemon as before.

interface Counters { [k: string]: number | boolean }
async function fastPath(root: string): Promise<Counters> {
  const r = await cli(['status', root, '--json']);
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
  const s = JSON.parse(r.stdout) as { fastPath: Counters | null };
  if (s.fastPath === null) throw new Error('status has no fastPath');
  return s.fastPath;
}
const num = (c: Counters, k: string): number => Number(c[k] ?? 0);
const rel = (storePath: string): string => storePath.replace(/^\/nix\/store\//, '');
const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

/** Every regular file below `dir` (relative, sorted) with its size. */
async function files(dir: string): Promise<{ name: string; size: number }[]> {
  const lines = (await check('find', [dir, '-type', 'f', '-printf', '%s %P\n'])).trim().split('\n').filter((l) => l !== '');
  return lines.map((l) => ({ size: Number(l.slice(0, l.indexOf(' '))), name: l.slice(l.indexOf(' ') + 1) })).sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * A process that opens `file`, reads it, then waits: `next()` makes it read the file again
 * through the same descriptor and answers both digests. Killed when the test ends.
 */
function holder(t: ExecutionContext, file: string): { ready: Promise<string>; next: () => Promise<string> } {
  const py = spawn('python3', ['-u', '-c', `
import hashlib, sys
f = open(sys.argv[1], 'rb')
print(hashlib.sha256(f.read()).hexdigest(), flush=True)
sys.stdin.readline()
f.seek(0)
print(hashlib.sha256(f.read()).hexdigest(), flush=True)
`, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { py.kill('SIGKILL'); });
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let err = '';
  py.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  let buf = '';
  py.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(line); else lines.push(line);
    }
  });
  const line = (): Promise<string> => new Promise((resolve, reject) => {
    const l = lines.shift();
    if (l !== undefined) return resolve(l);
    waiters.push(resolve);
    py.on('exit', (code) => reject(new Error(`holder exited (${String(code)}): ${err}`)));
  });
  return { ready: line(), next: () => { py.stdin.write('\n'); return line(); } };
}

test('passthrough: lower files read, mmap and stat as in the lower dir, concurrent opens share it, upper files stay with the daemon', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const name = rel(lower.manifest.paths.dirObject);
  const merged = path.join(m.store, name);
  const list = await files(merged);
  const bigOnes = list.filter((f) => f.size >= PASSTHROUGH_MIN_BYTES);
  t.true(list.length > bigOnes.length && bigOnes.length >= 1, 'the object has files below and above the threshold');
  const before = await fastPath(m.root);
  for (const f of bigOnes) {
    t.is(sha(await fs.promises.readFile(path.join(merged, f.name))), sha(await fs.promises.readFile(path.join(m.lowerStore, name, f.name))), `${f.name}: same bytes`);
  }
  const after = await fastPath(m.root);
  t.is(num(after, 'passthrough') - num(before, 'passthrough'), bigOnes.length, 'every lower file above the threshold was opened with passthrough');
  t.is(num(after, 'read'), num(before, 'read'), 'no READ reached the daemon');
  for (const f of list.filter((x) => x.size < PASSTHROUGH_MIN_BYTES)) {
    t.is(sha(await fs.promises.readFile(path.join(merged, f.name))), sha(await fs.promises.readFile(path.join(m.lowerStore, name, f.name))), `${f.name}: same bytes`);
  }
  t.is(num(await fastPath(m.root), 'passthrough'), num(after, 'passthrough'), 'smaller files are read through the daemon');

  // Two descriptors at once, mmap, and the attributes of an open file.
  const big = bigOnes[0]!.name;
  const out = await check('python3', ['-c', `
import hashlib, mmap, os, sys
p = sys.argv[1]
a = open(p, 'rb'); b = open(p, 'rb')
m = mmap.mmap(a.fileno(), 0, prot=mmap.PROT_READ) if os.fstat(a.fileno()).st_size else b''
st, fst = os.stat(p), os.fstat(b.fileno())
print(hashlib.sha256(b.read()).hexdigest(), hashlib.sha256(m[:]).hexdigest(), st.st_ino == fst.st_ino and st.st_size == fst.st_size)
`, path.join(merged, big)]);
  const want = sha(await fs.promises.readFile(path.join(m.lowerStore, name, big)));
  t.is(out.trim(), `${want} ${want} True`, 'read, mmap and fstat agree while two descriptors are open');

  // Upper files: written and read through the daemon, never passthrough.
  const up = path.join(m.store, '0000000000000000000000000000001a-passthrough-upper');
  await fs.promises.mkdir(up);
  await fs.promises.writeFile(path.join(up, 'f'), 'upper bytes\n');
  const p0 = num(await fastPath(m.root), 'passthrough');
  t.is(await fs.promises.readFile(path.join(up, 'f'), 'utf8'), 'upper bytes\n');
  await fs.promises.appendFile(path.join(up, 'f'), 'more\n');
  t.is(await fs.promises.readFile(path.join(up, 'f'), 'utf8'), 'upper bytes\nmore\n');
  t.is(num(await fastPath(m.root), 'passthrough'), p0, 'upper files are not opened with passthrough');
});

test('passthrough: a file held open keeps its mode when JS answers the next open (tracing on); --no-passthrough reads through the daemon', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root);
  const name = rel(lower.manifest.paths.dirObject);
  const file = (await files(path.join(m.store, name))).find((f) => f.size >= PASSTHROUGH_MIN_BYTES)!.name;
  const want = sha(await fs.promises.readFile(path.join(m.lowerStore, name, file)));

  const held = holder(t, path.join(m.store, name, file));
  t.is(await held.ready, want, 'the held descriptor reads the lower bytes');
  const on = await cli(['trace', m.root, 'on', '--file', path.join(m.dir, 'trace.log')]);
  t.is(on.code, 0, on.stderr);
  t.false((await fastPath(m.root)).on, 'the fast path is off: JS answers opens');
  const p0 = num(await fastPath(m.root), 'passthrough');
  // A second open of the same file, answered by JS, while the first is still open.
  t.is(sha(await fs.promises.readFile(path.join(m.store, name, file))), want, 'a JS-answered open of the held file reads it');
  t.true(num(await fastPath(m.root), 'passthrough') > p0, 'and got passthrough too');
  t.is(await held.next(), want, 'the held descriptor still reads');
  t.is((await cli(['trace', m.root, 'off'])).code, 0);

  const plain = await mountMerged(t, lower.root, { extra: ['--no-passthrough'] });
  const r0 = num(await fastPath(plain.root), 'read');
  t.is(sha(await fs.promises.readFile(path.join(plain.store, name, file))), want);
  const c = await fastPath(plain.root);
  t.is(num(c, 'passthrough'), 0, 'no passthrough');
  t.true(num(c, 'read') > r0, 'the daemon answered the READ');
});
