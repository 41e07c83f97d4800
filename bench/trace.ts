// The cost of the trace channel: the same cold and warm walks (`find -printf`) over the bench
// store with tracing off, on for a prefix that matches nothing (filtered out), and on for
// everything; peers interleaved, medians. Off is what every mount pays: one property read per
// operation.
//
//   node dist/bench/trace.js [--profile small] [--reps 5]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { check, CLI, run } from './exec';
import { fmt, fmtRange, median, rotate } from './stats';

type Mode = 'off' | 'on, filtered out' | 'on';

async function walk(mode: Mode, scratch: string, lower: string): Promise<{ cold: number; warm: number; entries: number }> {
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.mkdirSync(scratch, { recursive: true });
  const merged = path.join(scratch, 'merged');
  const args = ['mount', '--lower', lower, '--upper', path.join(scratch, 'upper'), '--root', merged];
  if (mode !== 'off') args.push('--trace', path.join(scratch, 'trace.log'));
  if (mode === 'on, filtered out') args.push('--trace-prefix', '/nix/store/00000000000000000000000000000000-none');
  await check(process.execPath, [CLI, ...args]);
  try {
    const store = path.join(merged, 'nix/store');
    await check('sync', []);
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    const cold = await run('find', [store, '-printf', '%y %s %m\n']);
    const warm = await run('find', [store, '-printf', '%y %s %m\n']);
    if (cold.code !== 0 || warm.code !== 0) throw new Error(`find failed: ${cold.stderr}${warm.stderr}`);
    const entries = cold.stdout.split('\n').length - 1;
    return { cold: entries / cold.seconds, warm: entries / warm.seconds, entries };
  } finally {
    await run(process.execPath, [CLI, 'unmount', merged]);
  }
}

async function main(): Promise<void> {
  const arg = (name: string, dflt: string): string => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const profile = arg('profile', 'small');
  const reps = Number(arg('reps', '5'));
  const cache = process.env.LOCAL_OVERLAY_BENCH_CACHE ?? '/var/tmp/local-overlay-bench';
  const store = fs.readdirSync(cache).find((d) => d.startsWith(`store-${profile}-`) && fs.existsSync(path.join(cache, d, 'complete')));
  if (!store) throw new Error(`no ${profile} bench store under ${cache}: run scripts/make-bench-store.sh ${profile} (or make bench-small) first`);
  const lower = path.join(cache, store, 'root');
  const modes: Mode[] = ['off', 'on, filtered out', 'on'];
  const cold = new Map<Mode, number[]>(modes.map((m) => [m, []]));
  const warm = new Map<Mode, number[]>(modes.map((m) => [m, []]));
  let entries = 0;
  for (let rep = 0; rep < reps; rep++) {
    for (const m of rotate(modes, rep)) {
      const r = await walk(m, path.join(cache, 'trace-scratch'), lower);
      cold.get(m)!.push(r.cold);
      warm.get(m)!.push(r.warm);
      entries = r.entries;
    }
  }
  const lines = [
    `Tracing cost: walk of the ${profile} store (${fmt(entries)} entries), ${reps} reps, entries/s median (min–max):`,
    '',
    '| tracing | walk cold | walk warm | cold ÷ off | warm ÷ off |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...modes.map((m) => `| ${m} | ${fmtRange(cold.get(m)!)} | ${fmtRange(warm.get(m)!)} | ${fmt(median(cold.get(m)!) / median(cold.get('off')!))}× | ${fmt(median(warm.get(m)!) / median(warm.get('off')!))}× |`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench/trace: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
