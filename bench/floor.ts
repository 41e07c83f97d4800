// The floor of the FUSE binding: a trivial fuse-native filesystem whose getattr answers a
// constant (no syscalls, no logic) serves 20,000 lookups of distinct names (entry_timeout=0,
// so every stat is one LOOKUP request). What it costs per request — wall time seen by the
// client and CPU time of the serving process — is what any fuse-native filesystem pays before
// doing any work; compare with local-overlay's per-request cost in bench/README.md.
//
//   node dist/bench/floor.js [--n 20000] [--reps 3]
// The server runs in a child process (never serve and touch a FUSE mount from one process).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from './exec';
import { fmt, fmtRange } from './stats';

function serve(mnt: string): void {
  const Fuse = require('fuse-native');
  const file = { mode: 0o100644, uid: 0, gid: 0, size: 1, nlink: 1, ino: 2, atime: 0, mtime: 0, ctime: 0 };
  const dir = { mode: 0o40755, uid: 0, gid: 0, size: 4096, nlink: 2, ino: 1, atime: 0, mtime: 0, ctime: 0 };
  const ops = {
    getattr: (p: string, cb: (err: number, st?: object) => void) => cb(0, p === '/' ? dir : file),
    readdir: (_p: string, cb: (err: number, names?: string[]) => void) => cb(0, []),
  };
  const f = new Fuse(mnt, ops, { timeout: false });
  f._fuseOptions = () => '-ouse_ino,entry_timeout=0,attr_timeout=60,negative_timeout=0';
  f.mount((err: Error | null) => {
    if (err) { process.stderr.write(`${err.message}\n`); process.exit(1); }
    process.stdout.write('ready\n');
  });
  process.on('SIGTERM', () => f.unmount(() => process.exit(0)));
}

/** utime + stime of `pid` in ms (clock ticks of 10 ms: 20,000 requests resolve to 0.5 µs). */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

async function main(): Promise<void> {
  const arg = (name: string, dflt: number): number => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : dflt;
  };
  const n = arg('n', 20_000), reps = arg('reps', 3);
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'lo-floor-'));
  const child = spawn(process.execPath, [__filename, 'serve', mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    });
    const wall: number[] = [], cpu: number[] = [];
    for (let r = 0; r < reps; r++) {
      const c0 = cpuMs(child.pid as number);
      const script = `const fs=require('fs');const t=process.hrtime.bigint();for(let i=0;i<${n};i++)fs.statSync(${JSON.stringify(mnt)}+'/f'+i);console.log(Number(process.hrtime.bigint()-t)/1000/${n})`;
      const res = await run(process.execPath, ['-e', script]);
      if (res.code !== 0) throw new Error(res.stderr);
      wall.push(Number(res.stdout.trim()));
      cpu.push(((cpuMs(child.pid as number) - c0) * 1000) / n);
    }
    process.stdout.write([
      `Trivial fuse-native filesystem, ${fmt(n)} lookups of distinct names, ${reps} reps, median (min–max):`,
      '',
      '| per request | µs |',
      '| --- | ---: |',
      `| wall time seen by the client | ${fmtRange(wall)} |`,
      `| CPU time of the serving process | ${fmtRange(cpu)} |`,
    ].join('\n') + '\n');
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await run('fusermount', ['-uz', mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  }
}

if (process.argv[2] === 'serve') serve(process.argv[3]);
else main().catch((err) => { process.stderr.write(`bench/floor: ${err instanceof Error ? err.message : String(err)}\n`); process.exitCode = 1; });
