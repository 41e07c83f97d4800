import { spawn } from 'node:child_process';
import * as path from 'node:path';

/** dist/bench → the repo, the built CLI and the other bench entry points. */
export const REPO = path.resolve(__dirname, '../..');
export const CLI = path.join(REPO, 'dist/src/cli/main.js');
export const PROBE = path.join(__dirname, 'probe.js');
export const MIRROR_PROBE = path.join(__dirname, 'mirror-probe.js');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit, in seconds. */
  seconds: number;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Discard stdout instead of collecting it (bulk output such as `cat`). */
  discardStdout?: boolean;
}

/**
 * Runs a program without a shell and times it; never rejects: the exit code is part of the
 * result (a signal or a timeout gives 128 + signal number). Output beyond 64 MiB is dropped.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args as string[], {
      cwd: opts.cwd, env: opts.env ?? process.env,
      stdio: ['ignore', opts.discardStdout ? 'ignore' : 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    child.stdout?.on('data', (b: Buffer) => { if (outLen < 64 << 20) { out.push(b); outLen += b.length; } });
    child.stderr?.on('data', (b: Buffer) => { if (err.length < 1024) err.push(b); });
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : null;
    const done = (code: number): void => {
      if (timer) clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), seconds });
    };
    child.on('error', (e) => { err.push(Buffer.from(String(e))); done(127); });
    child.on('close', (code, signal) => done(code ?? 128 + (signal ? signalNumber(signal) : 0)));
  });
}

function signalNumber(sig: NodeJS.Signals): number {
  return ({ SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGPIPE: 13, SIGSEGV: 11, SIGABRT: 6 } as Record<string, number>)[sig] ?? 0;
}

/** Runs and throws with the command's output when it fails; returns stdout. */
export async function check(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stderr + r.stdout).trim().slice(0, 2000)}`);
  return r.stdout;
}

/** Runs a program with the time measured; throws on failure; returns the result. */
export async function timed(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stderr + r.stdout).trim().slice(0, 2000)}`);
  return r;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Flushes dirty data, then drops the page, dentry and inode caches of every filesystem. */
export async function dropCaches(): Promise<void> {
  await check('sync', []);
  await check('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

/** Drops only dentries and inodes (FUSE entries are forgotten; file data stays cached). */
export async function dropDentries(): Promise<void> {
  await check('sh', ['-c', 'echo 2 > /proc/sys/vm/drop_caches']);
}

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}
