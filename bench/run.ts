#!/usr/bin/env node
/**
 * The benchmark runner (`make bench`, `make bench-small`; see bench/README.md).
 *
 * Builds (or reuses) the lower store of the profile, mounts every peer over it, and runs each
 * filesystem workload on every peer, peers interleaved within each repetition and their order
 * rotated from one repetition to the next; then the metadata workloads on local-overlay alone.
 * Prints a Markdown report, writes JSON and Markdown under bench/results/, and (for a full run)
 * replaces the profile's section of bench/README.md.
 *
 * This process never serves a mount: local-overlay runs as its own daemon (the CLI), and
 * every mount made here is unmounted on every exit path (mounts.ts).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { REPO, dropCaches, log, run } from './exec';
import { machineInfo } from './machine';
import { META_WORKLOADS, MetaContext, MetaWorkloadId, follower, lazyLookup, mirrorImport } from './metadata';
import { activeMounts, cleanupAllSync, mountTable } from './mounts';
import { nixEnv } from './nix-env';
import { PEER_NAMES, Peer, PeerName, makePeer } from './peers';
import { Usage } from './proc';
import { renderMarkdown } from './report';
import { FsSample, ProfileParams, Results } from './results';
import { rotate } from './stats';
import { benchStore } from './store';
import { untarFixture } from './synth';
import { FS_WORKLOADS, FS_WORKLOAD_DEFS, FsContext, FsWorkloadId } from './workloads';

/** Repetitions when --reps is not given: the default profile has room for more within ~30 min. */
const DEFAULT_REPS: Record<string, number> = { small: 3, default: 5, '1m': 3 };

const PROFILES: Record<string, ProfileParams> = {
  small: {
    name: 'small', storeProfile: 'small', missingLookups: 20_000, writeFiles: 10_000, mirrorRows: 100_000,
    lazy: { 1: 100, 100: 50, 1000: 20, 10_000: 3 }, followerSamples: 3,
  },
  default: {
    name: 'default', storeProfile: 'default', missingLookups: 20_000, writeFiles: 10_000, mirrorRows: 100_000,
    lazy: { 1: 200, 100: 100, 1000: 50, 10_000: 10 }, followerSamples: 5,
  },
  '1m': {
    name: '1m', storeProfile: 'default', missingLookups: 20_000, writeFiles: 10_000, mirrorRows: 1_000_000,
    lazy: { 1: 200, 100: 100, 1000: 50, 10_000: 10 }, followerSamples: 5,
  },
};

const ALL_WORKLOADS: string[] = [...FS_WORKLOADS, ...META_WORKLOADS];

function list(s: string | undefined, allowed: readonly string[], what: string): string[] | null {
  if (!s) return null;
  const xs = s.split(',').map((x) => x.trim()).filter(Boolean);
  const bad = xs.filter((x) => !allowed.includes(x));
  if (bad.length) throw new Error(`unknown ${what}: ${bad.join(', ')} (known: ${allowed.join(', ')})`);
  return xs;
}

async function main(): Promise<number> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('bench/run.js')
    .usage('$0 [options]\n\nRuns the local-overlay benchmarks (bench/README.md). Needs root.')
    .option('profile', { choices: Object.keys(PROFILES), default: 'default', describe: 'store size and metadata sizes' })
    .option('reps', { type: 'number', describe: 'repetitions of every measurement [default: 3; 5 for the default profile]' })
    .option('only', { type: 'string', describe: `comma-separated workloads (${ALL_WORKLOADS.join(', ')})` })
    .option('peers', { type: 'string', describe: `comma-separated peers (${PEER_NAMES.join(', ')}); local-overlay is always included` })
    .option('readme', { type: 'boolean', describe: 'replace this profile\'s table in bench/README.md [default: only for full runs]' })
    .option('cache-dir', { type: 'string', default: process.env.LOCAL_OVERLAY_BENCH_CACHE ?? '/var/tmp/local-overlay-bench', describe: 'where stores, synthetic DBs and scratch dirs live' })
    .option('keep', { type: 'boolean', default: false, describe: 'keep the run\'s scratch dir (upper dirs, DB copies) for inspection' })
    .strict()
    .help()
    .parseAsync();

  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (mounts, drop_caches)');
  const profile = PROFILES[argv.profile];
  const reps = Math.max(1, Math.floor(argv.reps ?? DEFAULT_REPS[argv.profile]));
  const only = list(argv.only, ALL_WORKLOADS, 'workload');
  const peerList = list(argv.peers, PEER_NAMES, 'peer');
  const peerNames: PeerName[] = PEER_NAMES.filter((p) => !peerList || peerList.includes(p) || p === 'local-overlay');
  const fsWorkloads = FS_WORKLOADS.filter((w) => !only || only.includes(w));
  const metaWorkloads = META_WORKLOADS.filter((w) => !only || only.includes(w));
  const fullRun = !only && !peerList;
  const command = `node dist/bench/run.js ${process.argv.slice(2).join(' ')}`.trim();

  const cacheRoot = path.resolve(argv['cache-dir']);
  fs.mkdirSync(cacheRoot, { recursive: true });
  const startedAt = new Date();
  const productAtStart = productDigest();
  const store = await benchStore(profile.storeProfile, cacheRoot);
  const runDir = fs.mkdtempSync(path.join(cacheRoot, 'run-'));
  const env = nixEnv(path.join(runDir, 'nix-env'));
  const tarFile = await untarFixture(cacheRoot, profile.writeFiles, async (src, out) => {
    const r = await run('tar', ['-cf', out, '-C', src, 'pkg']);
    if (r.code !== 0) throw new Error(`tar: ${r.stderr}`);
  });

  const results: Results = {
    version: 1, profile, reps, command, startedAt: startedAt.toISOString(), finishedAt: '', durationS: 0,
    machine: await machineInfo(cacheRoot, REPO), store: store.manifest, peers: peerNames,
    workloads: [...fsWorkloads, ...metaWorkloads], fs: [], mirror: [], lazy: [], follower: [], errors: [], warnings: [],
  };

  const peers: Peer[] = [];
  try {
    if (fsWorkloads.length) {
      for (const name of peerNames) peers.push(await makePeer(name, { lowerRoot: store.root, dir: path.join(runDir, name) }));
      for (const p of peers) await p.mount();
      log(`mounted ${peers.map((p) => p.name).join(', ')}`);
      const fsContext = (rep: number): FsContext => ({ store, tarFile, writeFiles: profile.writeFiles, missingLookups: profile.missingLookups, nixEnv: env, rep });
      for (let rep = 0; rep < reps; rep++) {
        const ctx = fsContext(rep);
        await cleanup(fsWorkloads, peers, ctx, results.errors);
        for (const w of fsWorkloads) {
          const order = rotate(peers, rep);
          log(`rep ${rep + 1}/${reps} ${w}: ${order.map((p) => p.name).join(' → ')}`);
          for (const peer of order) results.fs.push(...await measure(ctx, w, peer, results.errors));
        }
      }
      await cleanup(fsWorkloads, peers, fsContext(reps), results.errors);
    }
    for (const p of peers) await p.unmount();
    peers.length = 0;

    const mctx: MetaContext = { cacheRoot, runDir, nixEnv: env };
    for (let rep = 0; rep < reps; rep++) {
      for (const w of metaWorkloads) {
        log(`rep ${rep + 1}/${reps} ${w}`);
        await meta(mctx, w, rep, profile, results);
      }
    }
  } finally {
    for (const p of peers) await p.unmount().catch((e: unknown) => log(`unmount ${p.name}: ${String(e)}`));
    if (activeMounts().length) {
      log(`cleaning up mounts: ${activeMounts().join(', ')}`);
      cleanupAllSync();
    }
    if (!argv.keep) await removeTree(runDir);
    else log(`kept ${runDir}`);
  }

  // dist/ is shared with whoever builds the product: say so if it was rebuilt under the run.
  const commitAfter = (await machineInfo(cacheRoot, REPO)).commit;
  if (commitAfter !== results.machine.commit) results.machine.commit += ` (${commitAfter} at the end)`;
  if (productDigest() !== productAtStart) {
    results.warnings.push('dist/src or the native addon changed during the run: later measurements ran other product code');
  }
  const finishedAt = new Date();
  results.finishedAt = finishedAt.toISOString();
  results.durationS = Math.round((finishedAt.getTime() - startedAt.getTime()) / 1000);
  const md = renderMarkdown(results);
  process.stdout.write(`\n${md}`);
  const outDir = path.join(REPO, 'bench/results');
  fs.mkdirSync(outDir, { recursive: true });
  const stamp = `${startedAt.toISOString().replace(/[:.]/g, '-').slice(0, 19)}-${profile.name}`;
  fs.writeFileSync(path.join(outDir, `${stamp}.json`), JSON.stringify(results, null, 1) + '\n');
  fs.writeFileSync(path.join(outDir, `${stamp}.md`), md);
  log(`wrote bench/results/${stamp}.{json,md}`);
  if (argv.readme ?? fullRun) {
    updateReadme(path.join(REPO, 'bench/README.md'), profile.name, md);
    log(`updated the ${profile.name} section of bench/README.md`);
  }
  return results.errors.length ? 1 : 0;
}

/**
 * Measures one workload on one peer: cold (remount, sync, drop caches, run) then warm (run
 * again on the same mount), as the workload defines. The FUSE daemon's CPU and peak RSS are
 * taken over each run. A failure is recorded, not thrown: one broken peer must not end the run.
 */
async function measure(ctx: FsContext, id: FsWorkloadId, peer: Peer, errors: string[]): Promise<FsSample[]> {
  const w = FS_WORKLOAD_DEFS[id];
  if (!w.applies(peer)) return [];
  const out: FsSample[] = [];
  for (const phase of w.phases) {
    const base = { workload: id, phase, peer: peer.name, rep: ctx.rep };
    try {
      if (phase === 'cold') {
        await peer.unmount();
        await peer.mount();
        await dropCaches();
      }
      await w.before?.(ctx, peer);
      const usage = new Usage(peer.pid());
      const m = await w.run(ctx, peer, phase);
      out.push({ ...base, ...m, ...usage.stop() });
      if (m.note) log(`  ${peer.name} ${id} ${phase}: ${m.note}`);
    } catch (err) {
      const msg = `${id} ${phase} on ${peer.name} (rep ${ctx.rep + 1}): ${err instanceof Error ? err.message : String(err)}`;
      log(`  FAILED ${msg}`);
      errors.push(msg);
      out.push({ ...base, cpuS: null, peakRssKiB: null, anonKiB: null, error: msg });
      // A failed run may have left the peer unmounted: bring it back for the next workload.
      await peer.unmount().then(() => peer.mount()).catch((e: unknown) => errors.push(`remount ${peer.name}: ${String(e)}`));
    }
  }
  return out;
}

/** Removes what earlier runs of the workloads made on each peer (FsWorkload.cleanup). */
async function cleanup(ids: readonly FsWorkloadId[], peers: readonly Peer[], ctx: FsContext, errors: string[]): Promise<void> {
  for (const id of ids) {
    for (const peer of peers) {
      try {
        await FS_WORKLOAD_DEFS[id].cleanup?.(ctx, peer);
      } catch (err) {
        errors.push(`${id} cleanup on ${peer.name}: ${String(err)}`);
      }
    }
  }
}

async function meta(ctx: MetaContext, id: MetaWorkloadId, rep: number, profile: ProfileParams, results: Results): Promise<void> {
  try {
    switch (id) {
      case 'mirror-import': results.mirror.push(await mirrorImport(ctx, profile.mirrorRows, rep)); break;
      case 'lazy-lookup': results.lazy.push(await lazyLookup(ctx, profile.lazy, rep)); break;
      case 'follower': results.follower.push(await follower(ctx, profile.followerSamples, rep)); break;
    }
  } catch (err) {
    const msg = `${id} (rep ${rep + 1}): ${err instanceof Error ? err.message : String(err)}`;
    log(`  FAILED ${msg}`);
    results.errors.push(msg);
  }
}

/** Replaces the text between this profile's markers in the README (appends them if absent). */
function updateReadme(file: string, profile: string, md: string): void {
  const begin = `<!-- bench:${profile}:begin -->`;
  const end = `<!-- bench:${profile}:end -->`;
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const block = `${begin}\n${md}${end}`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  const next = i >= 0 && j > i ? text.slice(0, i) + block + text.slice(j + end.length) : `${text.trimEnd()}\n\n${block}\n`;
  fs.writeFileSync(file, next);
}

/** The newest mtime (ms) of the files below `dir`. */
/**
 * What the daemons started during the run execute: the compiled product and the native addon,
 * by content (a rebuild that writes the same files changes nothing measured).
 */
function productDigest(): string {
  const h = createHash('sha256');
  const dist = path.join(REPO, 'dist/src');
  const files = fs.readdirSync(dist, { recursive: true, encoding: 'utf8' }).sort();
  for (const f of [...files.map((f) => path.join(dist, f)), path.join(REPO, 'node_modules/fuse-native/build/Release/fuse.node')]) {
    const st = fs.statSync(f, { throwIfNoEntry: false });
    if (!st?.isFile()) continue;
    h.update(f).update('\0').update(fs.readFileSync(f)).update('\0');
  }
  return h.digest('hex');
}

/** Removes the scratch dir, unless something is still mounted below it (never recurse into a mount). */
async function removeTree(dir: string): Promise<void> {
  const inside = [...mountTable().keys()].filter((m) => m.startsWith(dir + '/'));
  if (inside.length) {
    log(`not removing ${dir}: still mounted below it: ${inside.join(', ')}`);
    return;
  }
  await run('chmod', ['-R', 'u+w', dir]);
  fs.rmSync(dir, { recursive: true, force: true });
}

// Every exit path unmounts what this run mounted (mounts.ts keeps the list).
process.on('exit', () => cleanupAllSync());
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    log(`${sig}: unmounting and exiting`);
    cleanupAllSync();
    process.exit(130);
  });
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  log(`error: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  cleanupAllSync();
  process.exitCode = 1;
});
