// src/mount/poll.ts: the CPU quota that turns polling off by default, found from a mountinfo
// and a /proc/self/cgroup written here (cgroup v2, v1, hybrid, none); the governor that turns
// it off while tasks wait for a CPU, driven by a PSI file written here.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PollGovernor, cpuQuota, defaultPoll } from '../../src/mount/poll';
import { tempDir } from '../helpers/mount';

interface Layout { cgroup: string; mounts: string[]; files: Record<string, string> }

function quotaOf(t: Parameters<typeof tempDir>[0], layout: Layout): string | null {
  const dir = tempDir(t);
  const fix = (s: string): string => s.replaceAll('@', dir);
  for (const [file, content] of Object.entries(layout.files)) {
    fs.mkdirSync(path.dirname(fix(file)), { recursive: true });
    fs.writeFileSync(fix(file), content + '\n');
  }
  fs.writeFileSync(path.join(dir, 'mountinfo'), layout.mounts.map(fix).join('\n') + '\n');
  fs.writeFileSync(path.join(dir, 'cgroup'), layout.cgroup + '\n');
  const q = cpuQuota(path.join(dir, 'mountinfo'), path.join(dir, 'cgroup'));
  return q === null ? null : q.replace(dir, '@');
}

const V2_MOUNT = '30 23 0:26 / @/cg rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate';
const V1_CPU_MOUNT = '31 23 0:27 / @/cg/cpu rw,nosuid shared:5 - cgroup cgroup rw,cpu';

test('cgroup v2: a quota on a parent of this process\'s cgroup counts', (t) => {
  t.is(quotaOf(t, {
    cgroup: '0::/build/job1',
    mounts: [V2_MOUNT],
    files: { '@/cg/build/job1/cpu.max': 'max 100000', '@/cg/build/cpu.max': '200000 100000' },
  }), '@/cg/build/cpu.max: 200000 100000');
});

test('cgroup v2 without a quota anywhere: none', (t) => {
  t.is(quotaOf(t, {
    cgroup: '0::/build/job1',
    mounts: [V2_MOUNT],
    files: { '@/cg/build/job1/cpu.max': 'max 100000', '@/cg/build/cpu.max': 'max 100000' },
  }), null);
});

test('cgroup v1: cpu.cfs_quota_us other than -1 is a quota; -1 is none', (t) => {
  const layout = (q: string): Layout => ({
    cgroup: '4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/',
    mounts: [V1_CPU_MOUNT.replace('rw,cpu', 'rw,cpu,cpuacct'), V2_MOUNT.replace('@/cg', '@/cg/unified')],
    files: { '@/cg/cpu/docker/abc/cpu.cfs_quota_us': q, '@/cg/cpu/cpu.cfs_quota_us': '-1' },
  });
  t.is(quotaOf(t, layout('50000')), '@/cg/cpu/docker/abc/cpu.cfs_quota_us: 50000');
  t.is(quotaOf(t, layout('-1')), null);
});

test('a container that mounts only its own part of the hierarchy (mount root not /)', (t) => {
  t.is(quotaOf(t, {
    cgroup: '0::/system.slice/ctr.scope',
    mounts: ['30 23 0:26 /system.slice/ctr.scope @/cg rw - cgroup2 cgroup2 rw'],
    files: { '@/cg/cpu.max': '100000 100000' },
  }), '@/cg/cpu.max: 100000 100000');
});

test('PollGovernor: off while tasks wait for a CPU more than 20% of an interval, on again at 10% or less', (t) => {
  const dir = tempDir(t);
  const psi = path.join(dir, 'cpu');
  const setWaited = (us: number): void => fs.writeFileSync(psi, `some avg10=0.00 avg60=0.00 avg300=0.00 total=${us}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n`);
  const applied: number[] = [];
  const g = new PollGovernor(50, (us) => applied.push(us), { psiFile: psi });
  g.start();
  g.stop(); // ticks are driven by hand below
  t.deepEqual(applied, [50], 'polls from the start');
  let waited = 0;
  const tick = (atMs: number, waitedMs: number): void => { waited += waitedMs * 1000; setWaited(waited); g.tick(atMs); };
  tick(0, 0);
  tick(500, 50);   // 10%: stays on
  tick(1000, 150); // 30%: off
  tick(1500, 75);  // 15%: stays off (hysteresis)
  tick(2000, 40);  // 8%: on
  tick(2500, 500); // 100%: off
  t.deepEqual(applied, [50, 0, 50, 0]);
});

test('PollGovernor without PSI leaves polling as it was; defaultPoll says why it will not poll', (t) => {
  const applied: number[] = [];
  const g = new PollGovernor(50, (us) => applied.push(us), { psiFile: '/nonexistent/pressure/cpu' });
  g.start();
  g.stop();
  g.tick(0);
  g.tick(500);
  t.deepEqual(applied, [50]);
  const choice = defaultPoll('/nonexistent/pressure/cpu');
  t.is(choice.us, 0);
  t.regex(choice.why ?? '', /cannot be read|one CPU|CPU quota/);
});
