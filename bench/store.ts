import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, log } from './exec';

/** manifest.json written by scripts/make-bench-store.sh. */
export interface StoreManifest {
  profile: string;
  key: string;
  createdAt: string;
  nixVersion: string;
  root: string;
  objects: number;
  validPaths: number;
  derivationOutputs: number;
  drvFiles: number;
  refs: number;
  regularFiles: number;
  directories: number;
  symlinks: number;
  bytes: number;
  narBytes: number;
  bigFile: { name: string; size: number };
  readFiles: number;
  readBytes: number;
}

export interface BenchStore {
  dir: string;
  /** The lower root (LOWER/nix/store, LOWER/nix/var/nix/db). */
  root: string;
  manifest: StoreManifest;
  /** NUL-separated regular files but the big one, relative to the store dir. */
  filesList: string;
  /** Top-level names, one a line. */
  topList: string;
}

/**
 * Runs scripts/make-bench-store.sh (which builds the store once per script version and
 * otherwise just prints the cached dir) and loads its manifest. Its progress is passed through.
 */
export async function benchStore(profile: string, cacheRoot: string): Promise<BenchStore> {
  const script = path.join(REPO, 'scripts/make-bench-store.sh');
  const dir = await new Promise<string>((resolve, reject) => {
    const child = spawn('bash', [script, profile], {
      stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, LOCAL_OVERLAY_BENCH_CACHE: cacheRoot },
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.on('error', reject);
    child.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last) resolve(last);
      else reject(new Error(`${script} ${profile} exited ${code}`));
    });
  });
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as StoreManifest;
  log(`store ${dir}: ${manifest.objects} objects, ${manifest.regularFiles} files, ${(manifest.bytes / 2 ** 20).toFixed(0)} MiB`);
  return { dir, root: path.join(dir, 'root'), manifest, filesList: path.join(dir, 'files.list0'), topList: path.join(dir, 'top.list') };
}
