import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { check, REPO } from './exec';
import { requireNix } from './nix';
import { lowerRootDigest } from './tree';

export interface Manifest {
  root: string;
  storeDir: string;
  paths: Record<string, string>;
  contents: Record<string, string>;
  references: Record<string, string[]>;
}

export interface LowerFixture { root: string; manifest: Manifest }

/** Keyed by the scripts that build it, so a changed fixture is rebuilt, never reused stale. */
const SHARED = path.join(os.tmpdir(), `local-overlay-test-lower-${fixtureKey()}`);

function fixtureKey(): string {
  const h = createHash('sha256');
  const dir = path.join(REPO, 'scripts');
  for (const f of ['make-lower-store.sh', ...fs.readdirSync(path.join(dir, 'nix')).sort().map((n) => `nix/${n}`)]) {
    h.update(f).update(fs.readFileSync(path.join(dir, f)));
  }
  return h.digest('hex').slice(0, 12);
}

/**
 * The shared lower store, built once per machine with real Nix by scripts/make-lower-store.sh
 * and then only read. Concurrent test workers serialise on a lock dir; a build that did not
 * finish is redone. Tests that change a lower store use `freshLower` instead.
 */
export async function sharedLower(): Promise<LowerFixture> {
  requireNix();
  const done = path.join(SHARED, 'manifest.json');
  const lock = `${SHARED}.lock`;
  for (;;) {
    if (fs.existsSync(done)) {
      const digest = path.join(SHARED, 'digest.txt');
      if (!fs.existsSync(digest)) fs.writeFileSync(digest, await lowerRootDigest(path.join(SHARED, 'root')));
      return load(path.join(SHARED, 'root'), done);
    }
    try {
      fs.mkdirSync(lock);
    } catch {
      if (Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? 0) > 120_000) fs.rmSync(lock, { recursive: true, force: true });
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    try {
      if (!fs.existsSync(done)) {
        fs.rmSync(SHARED, { recursive: true, force: true });
        fs.mkdirSync(SHARED, { recursive: true });
        const tmpManifest = path.join(SHARED, 'manifest.json.tmp');
        await check('bash', [path.join(REPO, 'scripts/make-lower-store.sh'), path.join(SHARED, 'root'), tmpManifest], { timeoutMs: 300_000 });
        // Recorded once, checked after the whole suite (test/tools/check-lower.ts).
        fs.writeFileSync(path.join(SHARED, 'digest.txt'), await lowerRootDigest(path.join(SHARED, 'root')));
        fs.renameSync(tmpManifest, done);
      }
    } finally {
      fs.rmSync(lock, { recursive: true, force: true });
    }
  }
}

/** A private copy of the shared lower store, for tests that grow or damage it. */
export async function freshLower(dir: string): Promise<LowerFixture> {
  const shared = await sharedLower();
  const root = path.join(dir, 'lower');
  await check('cp', ['-a', shared.root, root]);
  const m = JSON.parse(fs.readFileSync(path.join(SHARED, 'manifest.json'), 'utf8')) as Manifest;
  m.root = root;
  return { root, manifest: m };
}

function load(root: string, file: string): LowerFixture {
  return { root, manifest: JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest };
}

export function sharedLowerDir(): string {
  return SHARED;
}

/** Adds a new object to a lower store with real Nix; returns its store path. */
export async function lowerAdd(root: string, name: string): Promise<string> {
  return (await check('bash', [path.join(REPO, 'scripts/lower-add.sh'), root, name])).trim();
}
