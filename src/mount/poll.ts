import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * How long the reader polls /dev/fuse for the next request before it sleeps (native/fastpath.c,
 * "polling"), unless `--poll-us` says. Polling yields to every runnable task, so it takes CPU
 * time that would otherwise be idle; but a CPU quota counts that time, and with one CPU the
 * client that would send the next request is the task it would yield to. There it is off.
 */
export const DEFAULT_POLL_US = 50;

export interface PollChoice {
  us: number;
  /** Why polling is off by default here, when it is. */
  why?: string;
}

export function defaultPoll(): PollChoice {
  if (os.availableParallelism() < 2) return { us: 0, why: 'this process may run on one CPU only' };
  const quota = cpuQuota();
  if (quota !== null) return { us: 0, why: `a CPU quota applies (${quota})` };
  return { us: DEFAULT_POLL_US };
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
