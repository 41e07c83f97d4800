import * as fs from 'node:fs';

/**
 * Resource use of a filesystem daemon, read from /proc (we run as root, so any pid).
 * CPU: utime + stime of /proc/PID/stat in clock ticks (USER_HZ, 100 on Linux).
 * Peak RSS: VmHWM of /proc/PID/status; writing 5 to /proc/PID/clear_refs resets it to the
 * current RSS, so the peak can be taken per workload. RSS counts the program's own file pages
 * too (the `node` binary alone is ~40 MiB of them, shared with every Node process), so the
 * private memory at the end of the span (RssAnon) is reported beside it.
 */
const TICKS_PER_S = 100;

export function cpuSeconds(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may hold spaces: parse after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICKS_PER_S;
  } catch {
    return null;
  }
}

export function statusKiB(pid: number, field: 'VmHWM' | 'VmRSS' | 'RssAnon'): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export function resetPeak(pid: number): void {
  try { fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); } catch { /* process gone, or an old kernel */ }
}

/** CPU and peak RSS of `pid` over a span: call `start()`, then `stop()`. */
export class Usage {
  private cpu0: number | null;

  constructor(private readonly pid: number | null) {
    if (pid !== null) resetPeak(pid);
    this.cpu0 = pid === null ? null : cpuSeconds(pid);
  }

  stop(): { cpuS: number | null; peakRssKiB: number | null; anonKiB: number | null } {
    if (this.pid === null) return { cpuS: null, peakRssKiB: null, anonKiB: null };
    const cpu1 = cpuSeconds(this.pid);
    return {
      cpuS: cpu1 !== null && this.cpu0 !== null ? Math.round((cpu1 - this.cpu0) * 100) / 100 : null,
      peakRssKiB: statusKiB(this.pid, 'VmHWM'),
      anonKiB: statusKiB(this.pid, 'RssAnon'),
    };
  }
}
