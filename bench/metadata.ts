import Database = require('better-sqlite3');
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MIRROR_PROBE, PROBE, check, dropCaches, dropDentries, log, run, sleep } from './exec';
import { mountLocalOverlay, unmountLocalOverlay } from './peers';
import { Usage } from './proc';
import { LazySpec, lazyRoot, mirrorRoot } from './synth';

/**
 * The metadata workloads (local-overlay only: the peers have no metadata module). Each mounts
 * its own daemon over a synthetic or scratch lower root, in a fresh directory under `runDir`,
 * and unmounts it in a finally block.
 */
export const META_WORKLOADS = ['mirror-import', 'lazy-lookup', 'follower'] as const;
export type MetaWorkloadId = (typeof META_WORKLOADS)[number];

export interface MetaContext {
  cacheRoot: string;
  runDir: string;
  nixEnv: NodeJS.ProcessEnv;
}

export interface MirrorImportResult {
  rows: number;
  /** Mirror.importNew() alone, in its own process, into a new upper DB (rows/s): the row-by-row path. */
  moduleRowsPerS: number;
  moduleSeconds: number;
  modulePeakRssKiB: number | null;
  /** `local-overlay mount --metadata mirror` wall time over a lower DB with `rows` paths... */
  mountSeconds: number;
  /** ... and over an empty lower DB (the daemon's fixed start-up cost) */
  baselineMountSeconds: number;
  /** rows ÷ (mountSeconds − baselineMountSeconds): the import as a fresh mount does it */
  mountRowsPerS: number;
  daemonPeakRssKiB: number | null;
  error?: string;
}

export interface LazyLookupResult {
  /** closure size → first-lookup latencies (ms), one per closure */
  firstMs: Record<number, number[]>;
  /** first lookups of the extension closures (synth.ts LAZY_EXTENSION), after their bases; absent in results before them */
  extensionMs?: number[];
  /** second lstat of every top object (kernel entry cache) */
  kernelCachedMs: number[];
  /** lstat after dropping dentries (lookup answered by the daemon, rows already known) */
  daemonCachedMs: number[];
  expectedRows: number;
  upperRows: number | null;
  /** the merged DB's WAL file right after the first lookups (bytes); absent in results before it */
  walBytes?: number | null;
  daemonPeakRssKiB: number | null;
  daemonCpuS: number | null;
  error?: string;
}

export interface FollowerResult {
  /** per path added to the lower store: ms from `nix-store --add` exiting to row in merged DB */
  dbMs: number[];
  /** ... to the merged store dir showing it (lstat succeeds); polled only once the row exists */
  visibleMs: number[];
  /** the later of the two, per path */
  lagMs: number[];
  /** `nix-store --store MERGED --check-validity` agreed for every path */
  nixValid: boolean;
  error?: string;
}

function fresh(dir: string): string {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

async function probe(args: string[]): Promise<Record<string, unknown>> {
  return JSON.parse(await check(process.execPath, [PROBE, ...args], { timeoutMs: 600_000 })) as Record<string, unknown>;
}

export async function mirrorImport(ctx: MetaContext, rows: number, rep: number): Promise<MirrorImportResult> {
  const lowerRoot = path.join(await mirrorRoot(ctx.cacheRoot, rows), 'root');
  const emptyRoot = path.join(await mirrorRoot(ctx.cacheRoot, 0), 'root');
  const lowerDb = path.join(lowerRoot, 'nix/var/nix/db/db.sqlite');
  const lowerRefs = countRefs(lowerDb);
  const dir = fresh(path.join(ctx.runDir, `mirror-${rep}`));
  // The lower DB in the page cache, as after the first mount of a running machine.
  await check('cat', [lowerDb], { discardStdout: true });
  const m = JSON.parse(await check(process.execPath, [MIRROR_PROBE, lowerDb, path.join(dir, 'module-db')], { timeoutMs: 1_800_000 })) as
    { rows: number; seconds: number; peakRssKiB: number | null; upperRows: number; upperRefs: number };
  if (m.upperRows !== rows || m.upperRefs !== lowerRefs) {
    throw new Error(`Mirror.importNew: upper DB has ${m.upperRows} paths and ${m.upperRefs} references, lower ${rows} and ${lowerRefs}`);
  }
  // A mount over an empty lower DB first: the daemon's fixed start-up cost, subtracted below.
  const base = await mirrorMount(emptyRoot, path.join(dir, 'base'), 0, 0);
  const full = await mirrorMount(lowerRoot, path.join(dir, 'mount'), rows, lowerRefs);
  fs.rmSync(dir, { recursive: true, force: true });
  return {
    rows, moduleRowsPerS: m.rows / m.seconds, moduleSeconds: m.seconds, modulePeakRssKiB: m.peakRssKiB,
    mountSeconds: full.seconds, baselineMountSeconds: base.seconds,
    mountRowsPerS: rows / Math.max(full.seconds - base.seconds, 1e-3), daemonPeakRssKiB: full.peakRssKiB,
  };
}

/**
 * `local-overlay mount --metadata mirror` over a fresh merged root: its wall time, the daemon's
 * peak RSS (VmHWM since it started, so the import is included), and a check that the merged
 * DB holds every lower path and reference. Unmounts before returning.
 */
async function mirrorMount(lowerRoot: string, dir: string, rows: number, refs: number): Promise<{ seconds: number; peakRssKiB: number | null }> {
  const mnt = await mountLocalOverlay(lowerRoot, dir, 'mirror');
  try {
    const peakRssKiB = mnt.pid === null ? null : readHwm(mnt.pid);
    const db = new Database(path.join(mnt.root, 'nix/var/nix/db/db.sqlite'), { readonly: true, fileMustExist: true });
    let got: { p: number; r: number };
    try {
      got = db.prepare('SELECT (SELECT count(*) FROM ValidPaths) AS p, (SELECT count(*) FROM Refs) AS r').get() as { p: number; r: number };
    } finally {
      db.close();
    }
    if (got.p !== rows || got.r !== refs) throw new Error(`mount --metadata mirror: merged DB has ${got.p} paths and ${got.r} references, lower ${rows} and ${refs}`);
    return { seconds: mnt.seconds, peakRssKiB };
  } finally {
    await unmountLocalOverlay(mnt.root, mnt.pid);
  }
}

function countRefs(dbFile: string): number {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT count(*) FROM Refs').pluck().get() as number;
  } finally {
    db.close();
  }
}

function readHwm(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export async function lazyLookup(ctx: MetaContext, spec: LazySpec, rep: number): Promise<LazyLookupResult> {
  const lazy = await lazyRoot(ctx.cacheRoot, spec);
  const dir = fresh(path.join(ctx.runDir, `lazy-${rep}`));
  const mnt = await mountLocalOverlay(lazy.root, dir, 'lazy');
  const sizes = Object.keys(lazy.tops).map(Number).sort((a, b) => a - b);
  const firstMs: Record<number, number[]> = {};
  let extensionMs: number[] = [];
  let usage: { cpuS: number | null; peakRssKiB: number | null } = { cpuS: null, peakRssKiB: null };
  let kernelCachedMs: number[] = [];
  let daemonCachedMs: number[] = [];
  let upperRows: number | null = null;
  let walBytes: number | null = null;
  try {
    // Cold: nothing of the synthetic store or DB in the page cache or the dentry cache.
    await dropCaches();
    const u = new Usage(mnt.pid);
    for (const s of sizes) {
      const r = await probe(['latency', mnt.store, lazy.tops[s]]);
      if ((r.failed as number) > 0) throw new Error(`lazy lookup: ${String(r.failed)} of ${String(r.n)} top objects of size ${s} not found`);
      firstMs[s] = r.samplesMs as number[];
    }
    if (lazy.extensionTops) {
      const r = await probe(['latency', mnt.store, lazy.extensionTops]);
      if ((r.failed as number) > 0) throw new Error(`lazy lookup: ${String(r.failed)} of ${String(r.n)} extension tops not found`);
      extensionMs = r.samplesMs as number[];
    }
    usage = u.stop();
    walBytes = fs.statSync(path.join(mnt.root, 'nix/var/nix/db/db.sqlite-wal'), { throwIfNoEntry: false })?.size ?? null;
    const allTops = path.join(dir, 'all-tops.list');
    const lists = [...sizes.map((s) => lazy.tops[s]), ...(lazy.extensionTops ? [lazy.extensionTops] : [])];
    fs.writeFileSync(allTops, lists.map((f) => fs.readFileSync(f, 'utf8')).join(''));
    kernelCachedMs = (await probe(['latency', mnt.store, allTops])).samplesMs as number[];
    await dropDentries();
    daemonCachedMs = (await probe(['latency', mnt.store, allTops])).samplesMs as number[];
    const db = new Database(path.join(mnt.root, 'nix/var/nix/db/db.sqlite'), { readonly: true, fileMustExist: true });
    try { upperRows = db.prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number; } finally { db.close(); }
  } finally {
    await unmountLocalOverlay(mnt.root, mnt.pid);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return { firstMs, extensionMs, kernelCachedMs, daemonCachedMs, expectedRows: lazy.rows, upperRows, walBytes, daemonPeakRssKiB: usage.peakRssKiB, daemonCpuS: usage.cpuS };
}

/**
 * Adds `samples` paths to a real lower store (nix-store --add) under a mounted mirror-mode
 * daemon and times how long each takes to be valid in the merged DB and visible in the merged
 * store dir. The lower root is a scratch store made for this (the cached bench store is never
 * written).
 */
export async function follower(ctx: MetaContext, samples: number, rep: number): Promise<FollowerResult> {
  const lowerRoot = path.join(ctx.runDir, 'follower-lower');
  const srcDir = fresh(path.join(ctx.runDir, `follower-src-${rep}`));
  if (!fs.existsSync(path.join(lowerRoot, 'nix/var/nix/db/db.sqlite'))) {
    fs.writeFileSync(path.join(srcDir, 'seed.txt'), 'seed\n');
    await check('nix-store', ['--store', lowerRoot, '--add', path.join(srcDir, 'seed.txt')], { env: ctx.nixEnv });
  }
  const dir = fresh(path.join(ctx.runDir, `follower-${rep}`));
  const mnt = await mountLocalOverlay(lowerRoot, dir, 'mirror');
  const res: FollowerResult = { dbMs: [], visibleMs: [], lagMs: [], nixValid: true };
  const added: string[] = [];
  let db: Database.Database | null = null;
  try {
    db = new Database(path.join(mnt.root, 'nix/var/nix/db/db.sqlite'), { readonly: true, fileMustExist: true });
    const has = db.prepare('SELECT 1 FROM ValidPaths WHERE path = ?').pluck();
    for (let i = 0; i < samples; i++) {
      const f = path.join(srcDir, `follow-${rep}-${i}.txt`);
      fs.writeFileSync(f, `path ${i} added to the lower store at ${new Date().toISOString()} by ${process.pid}\n`);
      const storePath = (await check('nix-store', ['--store', lowerRoot, '--add', f], { env: ctx.nixEnv })).trim();
      const t0 = performance.now();
      added.push(storePath);
      const deadline = t0 + 30_000;
      while (has.get(storePath) === undefined) {
        if (performance.now() > deadline) throw new Error(`follower: ${storePath} not in the merged DB after 30 s`);
        await sleep(5);
      }
      const tDb = performance.now() - t0;
      const merged = path.join(mnt.store, path.basename(storePath));
      while (fs.lstatSync(merged, { throwIfNoEntry: false }) === undefined) {
        if (performance.now() > deadline) throw new Error(`follower: ${merged} not visible after 30 s`);
        await sleep(5);
      }
      const tFs = performance.now() - t0;
      res.dbMs.push(tDb);
      res.visibleMs.push(tFs);
      res.lagMs.push(Math.max(tDb, tFs));
      // Space the additions beyond one follower tick, so each sample starts at a random phase.
      await sleep(700 + Math.floor(Math.random() * 300));
    }
    const v = await run('nix-store', ['--store', mnt.root, '--check-validity', ...added], { env: ctx.nixEnv });
    res.nixValid = v.code === 0;
    if (!res.nixValid) log(`follower: nix-store --check-validity failed: ${v.stderr.trim()}`);
  } finally {
    db?.close();
    await unmountLocalOverlay(mnt.root, mnt.pid);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(srcDir, { recursive: true, force: true });
  return res;
}
