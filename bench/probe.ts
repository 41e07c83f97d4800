/**
 * The benchmark's lookup client, run as its own process so the driver's event loop and
 * garbage collector are not in the measured path (and the driver never touches a mount it
 * measures). Prints one JSON object on stdout.
 *
 *   probe.js lstat DIR LISTFILE [LOOPS]
 *                                   lstat DIR/NAME for every NAME in LISTFILE (one a line),
 *                                   LOOPS times over (default 1)
 *   probe.js missing DIR N          lstat N distinct names that are valid store path names
 *                                   but do not exist (never the same name twice)
 *   probe.js latency DIR LISTFILE   like lstat, but times every call (milliseconds)
 *
 * lstat uses `throwIfNoEntry: false`, so a miss costs no exception.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

function names(file: string): string[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
}

function now(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** A store-path-shaped name no store has: a hash made from `i` and a random prefix. */
function missingName(prefix: string, i: number): string {
  let h = prefix;
  let x = i;
  for (let k = 0; k < 8; k++) { h += NIX32[x & 31]; x >>>= 5; }
  return `${h}-bench-missing-${i}`;
}

function main(argv: string[]): Record<string, unknown> {
  const [mode, dir, arg, loopsArg] = argv;
  switch (mode) {
    case 'lstat': {
      const list = names(arg).map((n) => path.join(dir, n));
      const loops = Number(loopsArg ?? 1);
      let failed = 0;
      const t0 = now();
      for (let l = 0; l < loops; l++) {
        for (const p of list) if (fs.lstatSync(p, { throwIfNoEntry: false }) === undefined) failed++;
      }
      return { n: list.length * loops, seconds: (now() - t0) / 1000, failed };
    }
    case 'missing': {
      const n = Number(arg);
      let prefix = '';
      for (let k = 0; k < 24; k++) prefix += NIX32[Math.floor(Math.random() * 32)];
      let found = 0;
      const t0 = now();
      for (let i = 0; i < n; i++) if (fs.lstatSync(path.join(dir, missingName(prefix, i)), { throwIfNoEntry: false }) !== undefined) found++;
      return { n, seconds: (now() - t0) / 1000, found };
    }
    case 'latency': {
      const list = names(arg);
      const samplesMs: number[] = [];
      let failed = 0;
      for (const n of list) {
        const t0 = now();
        const st = fs.lstatSync(path.join(dir, n), { throwIfNoEntry: false });
        samplesMs.push(now() - t0);
        if (st === undefined) failed++;
      }
      return { n: list.length, samplesMs, failed };
    }
    default:
      throw new Error(`usage: probe.js lstat|missing|latency DIR ARG (got ${String(mode)})`);
  }
}

process.stdout.write(JSON.stringify(main(process.argv.slice(2))) + '\n');
