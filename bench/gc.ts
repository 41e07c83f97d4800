// GC cost versus lower-store file count: `nix-collect-garbage --store MERGED` on two merged
// roots whose lower stores have the same paths, one holding 20× as many files per path. The
// lower store is kept alive by local-overlay's GC roots, so the GC must never walk its files:
// the two timings must differ by noise only. Also reports the time with tracing on vs off
// (the cost of the trace channel when on).
//
//   node dist/bench/gc.js [--paths 400] [--files 10] [--reps 5] [--garbage 50]
import Database = require('better-sqlite3');
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NIX_SCHEMA_SQL, NIX_SCHEMA_VERSION } from '../src/metadata/schema';
import { check, CLI, run } from './exec';
import { nixEnv } from './nix-env';
import { fmt, fmtRange, median, rotate } from './stats';

const BASE32 = '0123456789abcdfghijklmnpqrsvwxyz';

function fakeHash(i: number, salt: string): string {
  let x = BigInt(i) * 6364136223846793005n + BigInt([...salt].reduce((a, c) => a * 31 + c.charCodeAt(0), 7));
  let out = '';
  for (let k = 0; k < 32; k++) {
    x = (x * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
    out += BASE32[Number((x >> 33n) % 32n)];
  }
  return out;
}

/** A synthetic lower root: `paths` objects with `files` files each, chained by references. */
function makeLower(root: string, paths: number, files: number): void {
  const store = path.join(root, 'nix/store');
  const dbDir = path.join(root, 'nix/var/nix/db');
  fs.mkdirSync(store, { recursive: true });
  fs.mkdirSync(dbDir, { recursive: true });
  const db = new Database(path.join(dbDir, 'db.sqlite'));
  db.pragma('journal_mode = WAL');
  db.exec(NIX_SCHEMA_SQL);
  fs.writeFileSync(path.join(dbDir, 'schema'), String(NIX_SCHEMA_VERSION));
  const ins = db.prepare('INSERT INTO ValidPaths (path, hash, registrationTime, narSize, ultimate) VALUES (?, ?, 1, 1000, 1)');
  const ref = db.prepare('INSERT INTO Refs (referrer, reference) VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 0; i < paths; i++) {
      const name = `${fakeHash(i, 'gc')}-gc-bench-${i}`;
      const dir = path.join(store, name);
      fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
      for (let f = 0; f < files; f++) fs.writeFileSync(path.join(dir, f % 2 ? 'sub' : '', `f${f}`), `${i}:${f}\n`);
      const id = Number(ins.run(`/nix/store/${name}`, `sha256:${'0'.repeat(64)}`).lastInsertRowid);
      if (i > 0 && i % 4 !== 0) ref.run(id, id - 1); // chains of 4: a few tops, many referenced
    }
  })();
  db.close();
  execChmodReadOnly(store);
}

function execChmodReadOnly(store: string): void {
  for (const n of fs.readdirSync(store)) {
    const walk = (p: string): void => {
      const st = fs.lstatSync(p);
      if (st.isDirectory()) { for (const c of fs.readdirSync(p)) walk(path.join(p, c)); fs.chmodSync(p, 0o555); } else fs.chmodSync(p, 0o444);
    };
    walk(path.join(store, n));
  }
}

function countFiles(dir: string): number {
  let n = 0;
  const walk = (p: string): void => { for (const e of fs.readdirSync(p, { withFileTypes: true })) { n++; if (e.isDirectory()) walk(path.join(p, e.name)); } };
  walk(dir);
  return n;
}

async function gcOnce(lower: string, scratch: string, garbage: number, trace: boolean, env: NodeJS.ProcessEnv): Promise<number> {
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.mkdirSync(scratch, { recursive: true });
  const root = path.join(scratch, 'merged');
  const args = ['mount', '--lower', lower, '--upper', path.join(scratch, 'upper'), '--root', root];
  if (trace) args.push('--trace', path.join(scratch, 'trace.log'));
  await check(process.execPath, [CLI, ...args]);
  try {
    const src = path.join(scratch, 'garbage');
    fs.mkdirSync(src);
    const files: string[] = [];
    for (let i = 0; i < garbage; i++) { const f = path.join(src, `g${i}.txt`); fs.writeFileSync(f, `garbage ${i} ${Date.now()}\n`); files.push(f); }
    await check('nix-store', ['--store', root, '--add', ...files], { env });
    const r = await run('nix-collect-garbage', ['--store', root], { env });
    if (r.code !== 0) throw new Error(`nix-collect-garbage failed: ${r.stderr}`);
    if (!/(\d+) store paths deleted/.test(r.stdout + r.stderr)) throw new Error(`unexpected GC output: ${r.stderr}`);
    const deleted = Number(/(\d+) store paths deleted/.exec(r.stdout + r.stderr)?.[1]);
    if (deleted !== garbage) throw new Error(`GC deleted ${deleted} paths, expected ${garbage}`);
    return r.seconds;
  } finally {
    await run(process.execPath, [CLI, 'unmount', root]);
  }
}

async function main(): Promise<void> {
  const arg = (name: string, dflt: number): number => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : dflt;
  };
  const paths = arg('paths', 400), files = arg('files', 10), reps = arg('reps', 5), garbage = arg('garbage', 50);
  const cache = process.env.LOCAL_OVERLAY_BENCH_CACHE ?? '/var/tmp/local-overlay-bench';
  const base = path.join(cache, `gc-${paths}x${files}-v1`);
  const lowers = { '1x': path.join(base, 'lower-1x'), '20x': path.join(base, 'lower-20x') };
  if (!fs.existsSync(path.join(base, 'complete'))) {
    fs.rmSync(base, { recursive: true, force: true });
    makeLower(lowers['1x'], paths, files);
    makeLower(lowers['20x'], paths, files * 20);
    fs.writeFileSync(path.join(base, 'complete'), '');
  }
  const env = nixEnv(path.join(base, 'nix-env'));
  const variants = [['1x', false], ['20x', false], ['20x', true]] as const;
  const samples = new Map<string, number[]>(variants.map(([k, t]) => [`${k}${t ? '+trace' : ''}`, []]));
  for (let rep = 0; rep < reps; rep++) {
    for (const [k, t] of rotate(variants, rep)) {
      samples.get(`${k}${t ? '+trace' : ''}`)!.push(await gcOnce(lowers[k], path.join(base, 'scratch'), garbage, t, env));
    }
  }
  const f1 = countFiles(path.join(lowers['1x'], 'nix/store')), f20 = countFiles(path.join(lowers['20x'], 'nix/store'));
  const m1 = median(samples.get('1x')!), m20 = median(samples.get('20x')!), mt = median(samples.get('20x+trace')!);
  const lines = [
    `GC of ${garbage} upper paths over a lower store of ${paths} paths (${reps} reps, median (min–max) seconds):`,
    '',
    '| lower store | entries in the lower store | nix-collect-garbage s |',
    '| --- | ---: | ---: |',
    `| 1× files | ${fmt(f1)} | ${fmtRange(samples.get('1x')!)} |`,
    `| 20× files | ${fmt(f20)} | ${fmtRange(samples.get('20x')!)} |`,
    `| 20× files, tracing on | ${fmt(f20)} | ${fmtRange(samples.get('20x+trace')!)} |`,
    '',
    `ratio 20× / 1×: ${fmt(m20 / m1)}; tracing on / off: ${fmt(mt / m20)}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench/gc: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
