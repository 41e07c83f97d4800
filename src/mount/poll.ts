import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * How long the reader polls /dev/fuse for the next request before it sleeps (native/fastpath.c,
 * "polling"), unless `--poll-us` says. Polling takes CPU time, so it runs only where that time
 * is to be had: not under a CPU quota, which counts it; not with one CPU, where the client that
 * would send the next request is what polling keeps from running; not without a way to see CPU
 * contention (PSI, /proc/pressure/cpu); and, while the mount runs, not while other tasks wait
 * for a CPU (PollGovernor): with two busy loops on two CPUs, polling made a warm read 1.6×
 * slower instead of 1.3× faster (native-notes/README.md, "Polling").
 */
export const DEFAULT_POLL_US = 50;

/** /proc/pressure/cpu: the kernel's account of time tasks waited for a CPU (Linux 4.20+, `psi=1`). */
export const PSI_CPU = '/proc/pressure/cpu';

export interface PollChoice {
  us: number;
  /** Why polling is off by default here, when it is. */
  why?: string;
}

export function defaultPoll(psiFile = PSI_CPU): PollChoice {
  if (os.availableParallelism() < 2) return { us: 0, why: 'this process may run on one CPU only' };
  const quota = cpuQuota();
  if (quota !== null) return { us: 0, why: `a CPU quota applies (${quota})` };
  if (cpuWaitedUs(psiFile) === null) return { us: 0, why: `${psiFile} cannot be read, so CPU contention cannot be seen` };
  return { us: DEFAULT_POLL_US };
}

/** Microseconds tasks have waited for a CPU since boot (PSI's `some total`), or null without PSI. */
export function cpuWaitedUs(psiFile = PSI_CPU): number | null {
  const text = readTrimmed(psiFile);
  const m = text === null ? null : /^some .*\btotal=(\d+)/m.exec(text);
  return m ? Number(m[1]) : null;
}

/**
 * Turns polling off while other tasks wait for a CPU, and on again when they no longer do:
 * every `intervalMs` it reads how long tasks waited for a CPU in the interval (PSI). Above
 * `offShare` of the interval polling goes off, at or below `onShare` it comes back. With
 * polling on and nothing else running, a warm read of the bench store showed 2–5%; with two
 * busy loops on the two CPUs, most of the time.
 */
export class PollGovernor {
  private timer: NodeJS.Timeout | null = null;
  private last: { at: number; waitedUs: number } | null = null;
  private polling = true;

  constructor(
    private readonly us: number,
    private readonly apply: (us: number) => void,
    private readonly opts: { psiFile?: string; intervalMs?: number; offShare?: number; onShare?: number; onChange?: (polling: boolean, share: number) => void } = {},
  ) {}

  start(): void {
    this.apply(this.us);
    this.timer = setInterval(() => this.tick(), this.opts.intervalMs ?? 500);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One look at PSI; exposed for tests. */
  tick(now = performance.now()): void {
    const waitedUs = cpuWaitedUs(this.opts.psiFile);
    if (waitedUs === null) return;
    const last = this.last;
    this.last = { at: now, waitedUs };
    if (last === null || now <= last.at) return;
    const share = (waitedUs - last.waitedUs) / 1000 / (now - last.at);
    const polling = this.polling ? share <= (this.opts.offShare ?? 0.2) : share <= (this.opts.onShare ?? 0.1);
    if (polling === this.polling) return;
    this.polling = polling;
    this.apply(polling ? this.us : 0);
    this.opts.onChange?.(polling, share);
  }
}

/**
 * A cgroup CPU quota on this process, as "FILE: VALUE", or null: cgroup v2's `cpu.max` or v1's
 * `cpu.cfs_quota_us`, in this process's cgroup or any above it (each limits it).
 */
export function cpuQuota(mountinfo = '/proc/self/mountinfo', selfCgroup = '/proc/self/cgroup'): string | null {
  const text = readTrimmed(selfCgroup);
  const mounts = readTrimmed(mountinfo);
  if (text === null || mounts === null) return null;
  for (const line of text.split('\n')) {
    const [, controllers, where] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (where === undefined) continue;
    const v2 = controllers === '';
    if (!v2 && !controllers.split(',').includes('cpu')) continue;
    const file = v2 ? 'cpu.max' : 'cpu.cfs_quota_us';
    for (const m of mounts.split('\n')) {
      // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
      const [left, right] = m.split(' - ');
      if (right === undefined) continue;
      const [, , , root, mountPoint] = left.split(' ');
      const [fsType, , superOptions = ''] = right.split(' ');
      if (v2 ? fsType !== 'cgroup2' : fsType !== 'cgroup' || !superOptions.split(',').includes('cpu')) continue;
      const rel = root !== '/' && where.startsWith(root) ? where.slice(root.length) : where;
      for (let dir = path.join(mountPoint, rel); ; dir = path.dirname(dir)) {
        const value = readTrimmed(path.join(dir, file));
        if (value !== null && !(v2 ? value.startsWith('max') : value === '-1')) return `${path.join(dir, file)}: ${value}`;
        if (dir === mountPoint || dir === '/') break;
      }
    }
  }
  return null;
}

function readTrimmed(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}
