import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PROBE, check, log, run, timed } from './exec';
import { Peer } from './peers';
import { BenchStore } from './store';

export type Phase = 'cold' | 'warm';
export const FS_WORKLOADS = ['walk', 'ls', 'lstat', 'missing', 'read', 'big', 'verify', 'write'] as const;
export type FsWorkloadId = (typeof FS_WORKLOADS)[number];

/** One timed run: `count` units of work in `seconds`; `value` is the throughput. */
export interface Measured {
  value: number;
  seconds: number;
  count: number;
  /** Set when the run did its work but something was off (e.g. nix-store --verify found errors). */
  note?: string;
}

export interface FsContext {
  store: BenchStore;
  /** The untar fixture (a tar of `writeFiles` small files). */
  tarFile: string;
  writeFiles: number;
  missingLookups: number;
  nixEnv: NodeJS.ProcessEnv;
  /** Distinguishes the write workload's directories across repetitions. */
  rep: number;
}

export interface FsWorkload {
  id: FsWorkloadId;
  title: string;
  unit: string;
  phases: readonly Phase[];
  applies(peer: Peer): boolean;
  run(ctx: FsContext, peer: Peer, phase: Phase): Promise<Measured>;
  /** Untimed preparation just before each timed run. */
  before?(ctx: FsContext, peer: Peer): Promise<void>;
  /** Untimed cleanup of what earlier runs made, at the start of each repetition and at the end. */
  cleanup?(ctx: FsContext, peer: Peer): Promise<void>;
}

const MiB = 1024 * 1024;
const WARM_LS_LOOPS = 5;
const WARM_LSTAT_LOOPS = 10;

async function probe(args: string[]): Promise<Record<string, unknown>> {
  return JSON.parse(await check(process.execPath, [PROBE, ...args], { timeoutMs: 600_000 })) as Record<string, unknown>;
}

/**
 * Runs a pipeline that prints a count (wc/grep keep the driver out of the data path); with
 * pipefail, so a failing `find` or `ls` fails the run instead of giving a short count.
 */
async function countLines(script: string, args: string[], cwd?: string): Promise<{ lines: number; seconds: number }> {
  const r = await timed('bash', ['-o', 'pipefail', '-c', script, 'bash', ...args], { cwd, timeoutMs: 1_800_000 });
  return { lines: Number(r.stdout.trim()), seconds: r.seconds };
}

const all = (): boolean => true;

export const FS_WORKLOAD_DEFS: Record<FsWorkloadId, FsWorkload> = {
  walk: {
    id: 'walk', title: "walk: find -printf '%y %s %m'", unit: 'entries/s', phases: ['cold', 'warm'], applies: all,
    async run(_ctx, peer) {
      const r = await countLines(`find "$1" -printf '%y %s %m\\n' | wc -l`, [peer.store]);
      return { value: r.lines / r.seconds, seconds: r.seconds, count: r.lines };
    },
  },
  ls: {
    id: 'ls', title: 'ls -l of the store root', unit: 'entries/s', phases: ['cold', 'warm'], applies: all,
    async run(_ctx, peer, phase) {
      // Warm: several listings in one shell, so process start-up does not dominate.
      const loops = phase === 'warm' ? WARM_LS_LOOPS : 1;
      const r = await countLines(`i=0; while [ $i -lt ${loops} ]; do ls -l "$1" || exit 1; i=$((i+1)); done | grep -vc '^total '`, [peer.store]);
      return { value: r.lines / r.seconds, seconds: r.seconds, count: r.lines };
    },
  },
  lstat: {
    id: 'lstat', title: 'lstat of every top-level object', unit: 'lstat/s', phases: ['cold', 'warm'], applies: all,
    async run(ctx, peer, phase) {
      // Warm: several passes, so that a small store still gives a measurable span.
      const r = await probe(['lstat', peer.store, ctx.store.topList, String(phase === 'warm' ? WARM_LSTAT_LOOPS : 1)]);
      const n = r.n as number, s = r.seconds as number;
      return { value: n / s, seconds: s, count: n, note: (r.failed as number) > 0 ? `${String(r.failed)} lstat failed` : undefined };
    },
  },
  missing: {
    id: 'missing', title: 'lookups of missing names', unit: 'lookups/s', phases: ['warm'], applies: all,
    async run(ctx, peer) {
      const r = await probe(['missing', peer.store, String(ctx.missingLookups)]);
      const n = r.n as number, s = r.seconds as number;
      return { value: n / s, seconds: s, count: n, note: (r.found as number) > 0 ? `${String(r.found)} found` : undefined };
    },
  },
  read: {
    id: 'read', title: 'read every file but the big one', unit: 'MiB/s', phases: ['cold', 'warm'], applies: all,
    async run(ctx, peer) {
      const r = await timed('xargs', ['-0', '-a', ctx.store.filesList, 'cat'], { cwd: peer.store, discardStdout: true, timeoutMs: 1_800_000 });
      const bytes = ctx.store.manifest.readBytes;
      return { value: bytes / MiB / r.seconds, seconds: r.seconds, count: ctx.store.manifest.readFiles };
    },
  },
  big: {
    id: 'big', title: 'big file: dd bs=1M', unit: 'MiB/s', phases: ['cold', 'warm'], applies: all,
    async run(ctx, peer) {
      const big = ctx.store.manifest.bigFile;
      const r = await timed('dd', [`if=${path.join(peer.store, big.name)}`, 'of=/dev/null', 'bs=1M'], { timeoutMs: 1_800_000 });
      return { value: big.size / MiB / r.seconds, seconds: r.seconds, count: 1 };
    },
  },
  verify: {
    id: 'verify', title: 'nix-store --verify --check-contents', unit: 'NAR MiB/s', phases: ['cold', 'warm'], applies: all,
    async run(ctx, peer) {
      const r = await run('nix-store', ['--store', peer.root, '--verify', '--check-contents'], { env: ctx.nixEnv, timeoutMs: 3_600_000 });
      const nar = ctx.store.manifest.narBytes;
      const errors = (r.stderr.match(/^error:|modified!|disappeared/gm) ?? []).length;
      if (r.code !== 0 && errors === 0) throw new Error(`nix-store --verify exited ${r.code}: ${r.stderr.trim().slice(0, 1000)}`);
      return { value: nar / MiB / r.seconds, seconds: r.seconds, count: ctx.store.manifest.validPaths, note: r.code !== 0 ? `verify reported ${errors} problems (exit ${r.code})` : undefined };
    },
  },
  write: {
    id: 'write', title: 'write: untar small files into a new top-level dir, then sync', unit: 'files/s', phases: ['warm'],
    applies: (peer) => peer.writable,
    async run(ctx, peer) {
      const dir = path.join(peer.store, writeDirName(peer, ctx.rep));
      const r = await timed('sh', ['-c', 'mkdir "$1" && tar --no-same-owner -xf "$2" -C "$1" && sync', 'sh', dir, ctx.tarFile], { timeoutMs: 1_800_000 });
      return { value: ctx.writeFiles / r.seconds, seconds: r.seconds, count: ctx.writeFiles };
    },
    async before() {
      const wait = lastWriteCleanup + EXT4_RECENTLY_DELETED_MS - Date.now();
      if (wait > 0) {
        log(`  write: waiting ${(wait / 1000).toFixed(0)} s until the inodes removed by the last cleanup are no longer "recently deleted"`);
        await new Promise((r) => setTimeout(r, wait));
      }
    },
    async cleanup(ctx, peer) {
      let removed = false;
      for (let rep = 0; rep <= ctx.rep; rep++) {
        const dir = path.join(peer.store, writeDirName(peer, rep));
        if (!fs.existsSync(dir)) continue;
        await check('rm', ['-rf', dir], { timeoutMs: 1_800_000 });
        removed = true;
      }
      if (!removed) return;
      await check('sync', []);
      lastWriteCleanup = Date.now();
    },
  },
};

/**
 * ext4 without a journal (this machine's root fs) does not reuse an inode within 60 s of its
 * deletion (fs/ext4/ialloc.c, recently_deleted), and every inode allocation walks past such
 * inodes: right after the 10,000 files of the previous run are removed, an untar spends most
 * of its time there, and which peer pays depends on the order of the run. So the files written
 * are removed at the start of the next repetition, not right after their run, and a write run
 * starts no sooner than this after the last removal.
 */
const EXT4_RECENTLY_DELETED_MS = 61_000;
let lastWriteCleanup = 0;

/** A fresh store-path-shaped top-level name per peer and repetition. */
function writeDirName(peer: Peer, rep: number): string {
  const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
  const h = crypto.createHash('sha256').update(`${peer.name}:${rep}:${process.pid}`).digest();
  let s = '';
  for (let i = 0; i < 32; i++) s += NIX32[h[i] & 31];
  return `${s}-bench-untar-${rep}`;
}
