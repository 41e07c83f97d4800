import * as fs from 'node:fs';
import * as os from 'node:os';
import { run } from './exec';

export interface MachineInfo {
  hostname: string;
  cpu: string;
  nproc: number;
  memoryGiB: number;
  kernel: string;
  disk: string;
  node: string;
  nix: string;
  fuseOverlayfs: string;
  commit: string;
}

async function firstLine(cmd: string, args: string[], cwd?: string): Promise<string> {
  const r = await run(cmd, args, { cwd });
  return r.code === 0 ? (r.stdout.trim().split('\n')[0] ?? '') : 'unknown';
}

/** What the README needs to say where a table came from. */
export async function machineInfo(benchDir: string, repo: string): Promise<MachineInfo> {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown';
  const src = await firstLine('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,SIZE', '-T', benchDir]);
  const fo = await run('fuse-overlayfs', ['--version']);
  return {
    hostname: os.hostname(),
    cpu: model,
    nproc: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: os.release(),
    disk: src.replace(/\s+/g, ' '),
    node: process.version,
    nix: await firstLine('nix-store', ['--version']),
    fuseOverlayfs: (fo.stdout + fo.stderr).split('\n').find((l) => /fuse-overlayfs/.test(l))?.trim() ?? 'unknown',
    commit: await firstLine('git', ['describe', '--always', '--dirty'], repo),
  };
}
