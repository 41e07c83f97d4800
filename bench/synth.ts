import Database = require('better-sqlite3');
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NIX_SCHEMA_SQL, NIX_SCHEMA_VERSION } from '../src/metadata/schema';
import { log } from './exec';

/**
 * Synthetic lower roots for the metadata workloads: Nix 2.8 DBs made with the product's own
 * copy of Nix's schema (src/metadata/schema.ts, checked against `nix-store --init` by the unit
 * tests), holding fake but well-formed rows: store paths with 32-character nix-base32 hashes,
 * `sha256:` NAR hashes, sizes, signatures, derivers, .drv paths with DerivationOutputs, and
 * references always to rows registered earlier (ids ascending, as Nix registers closures).
 * Deterministic (fixed PRNG seed) and cached: bump GEN_VERSION when the shape changes.
 */
const GEN_VERSION = 1;
const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** mulberry32: a small deterministic PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function nix32(rand: () => number, len: number): string {
  let s = '';
  for (let i = 0; i < len; i++) s += NIX32[Math.floor(rand() * 32)];
  return s;
}

function b64(rand: () => number, len: number): string {
  const A = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  let s = '';
  for (let i = 0; i < len; i++) s += A[Math.floor(rand() * 64)];
  return s;
}

interface Row {
  path: string; hash: string; registrationTime: number; deriver: string | null;
  narSize: number; ultimate: number | null; sigs: string | null; ca: string | null;
}

/** A fresh DB dir with Nix's schema, in WAL mode like Nix leaves it, and its `schema` file. */
function createDb(root: string): Database.Database {
  const dbDir = path.join(root, 'nix/var/nix/db');
  fs.mkdirSync(dbDir, { recursive: true });
  fs.mkdirSync(path.join(root, 'nix/store'), { recursive: true });
  fs.writeFileSync(path.join(dbDir, 'schema'), String(NIX_SCHEMA_VERSION));
  fs.writeFileSync(path.join(dbDir, 'big-lock'), '');
  const db = new Database(path.join(dbDir, 'db.sqlite'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  db.exec(NIX_SCHEMA_SQL);
  return db;
}

function closeDb(db: Database.Database): void {
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
}

/** Builds `dir` with `make(tmp)` once; returns the cached dir (marker file `complete`). */
async function cached(dir: string, make: (tmp: string) => void | Promise<void>): Promise<string> {
  if (fs.existsSync(path.join(dir, 'complete'))) return dir;
  const tmp = `${dir}.tmp`; // a crashed earlier build's leftovers are removed here
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  await make(tmp);
  fs.writeFileSync(path.join(tmp, 'complete'), new Date().toISOString());
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
  return dir;
}

/** Inserts rows (row, references as 0-based row indexes, output path of a .drv) with ids 1, 2, ... */
function insertAll(db: Database.Database, rows: Iterable<[Row, number[], string | undefined]>): void {
  const insPath = db.prepare(`INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
    VALUES (@id, @path, @hash, @registrationTime, @deriver, @narSize, @ultimate, @sigs, @ca)`);
  const insRef = db.prepare('INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?, ?)');
  const insOut = db.prepare('INSERT INTO DerivationOutputs (drv, id, path) VALUES (?, ?, ?)');
  db.transaction(() => {
    let id = 0;
    for (const [row, refs, out] of rows) {
      id++;
      insPath.run({ id, ...row });
      for (const ref of refs) insRef.run(id, ref + 1);
      if (out !== undefined) insOut.run(id, 'out', out);
    }
  })();
}

/**
 * A lower root whose DB has `n` paths shaped like a binary cache's closure set: every fifth
 * path is a .drv (referring to earlier .drvs, with a DerivationOutputs row for the output that
 * follows it), the rest are outputs with 0–8 references to earlier outputs, a deriver, and a
 * signature. The store dir is empty (the mirror import reads only the DB).
 */
export function mirrorRoot(cacheRoot: string, n: number): Promise<string> {
  return cached(path.join(cacheRoot, `synth-mirror-${n}-v${GEN_VERSION}`), (tmp) => {
    log(`making a synthetic lower DB with ${n} paths`);
    const rand = prng(n);
    const db = createDb(path.join(tmp, 'root'));
    const paths: string[] = [];
    for (let i = 0; i < n; i++) paths.push(`/nix/store/${nix32(rand, 32)}-synth-${i % 5 === 0 ? `pkg-${i}.drv` : `pkg-${i}-1.${i % 7}`}`);
    const outputIds = new Int32Array(n);
    let outputs = 0;
    // Rows are generated and inserted one at a time (1M rows must not sit in the JS heap).
    const rows = function* (): Generator<[Row, number[], string | undefined]> {
      for (let i = 0; i < n; i++) {
        const isDrv = i % 5 === 0;
        const r: number[] = [];
        if (isDrv) {
          for (let k = 0; k < 3 && i >= 5; k++) r.push(5 * Math.floor(rand() * Math.floor(i / 5)));
        } else {
          const k = Math.floor(rand() * 9);
          for (let j = 0; j < k && outputs > 0; j++) {
            // Mostly recent paths (a package refers to its neighbours), some anywhere.
            const span = rand() < 0.7 ? Math.min(outputs, 200) : outputs;
            r.push(outputIds[outputs - 1 - Math.floor(rand() * span)]);
          }
          if (rand() < 0.3) r.push(i); // self-reference, as Nix allows
          outputIds[outputs++] = i;
        }
        yield [{
          path: paths[i],
          hash: `sha256:${nix32(rand, 52)}`,
          registrationTime: 1_700_000_000 + i,
          deriver: isDrv ? null : paths[5 * Math.floor(i / 5)],
          narSize: 1000 + Math.floor(rand() * 10_000_000),
          ultimate: isDrv ? 1 : null,
          sigs: isDrv ? null : `cache.nixos.org-1:${b64(rand, 86)}==`,
          ca: isDrv ? `text:sha256:${nix32(rand, 52)}` : null,
        }, r, isDrv && i + 1 < n ? paths[i + 1] : undefined];
      }
    };
    insertAll(db, rows());
    closeDb(db);
  });
}

export interface LazySpec {
  /** closure size (paths, top included) → number of disjoint closures of that size */
  [size: number]: number;
}

export interface LazyRoot {
  root: string;
  /** closure size → list file of top-level names (one a line) of the closures' top objects */
  tops: Record<number, string>;
  /**
   * List file of the tops of the extension closures (LAZY_EXTENSION), one over each closure of
   * LAZY_BASE paths, in the same order as `tops[LAZY_BASE]`; null when the spec has no such size.
   */
  extensionTops: string | null;
  rows: number;
}

/** Extension closures: this many new paths over a closure of LAZY_BASE paths. */
export const LAZY_EXTENSION = 100;
export const LAZY_BASE = 1000;

/**
 * A lower root for the lazy first-lookup workload: for each closure size S, `count` disjoint
 * closures of exactly S paths. Closure shape: the top object, a 4-ary tree below it, and one
 * shared leaf ("libc") that every other node also refers to. Every path is also a one-byte
 * file in the store dir, so a lookup finds it in the lower layer.
 *
 * Over each closure of LAZY_BASE paths, an extension: LAZY_EXTENSION new paths of the same
 * shape whose every node also refers to that closure's top, as a program refers to the
 * libraries that other programs brought in before it. Looked up after its base, it copies only
 * its own paths.
 */
export function lazyRoot(cacheRoot: string, spec: LazySpec): Promise<LazyRoot> {
  const sizes = Object.keys(spec).map(Number).sort((a, b) => a - b);
  const extensions = spec[LAZY_BASE] ?? 0;
  const tag = sizes.map((s) => `${s}x${spec[s]}`).join('-') + (extensions ? `-ext${LAZY_EXTENSION}` : '');
  const dir = path.join(cacheRoot, `synth-lazy-${tag}-v${GEN_VERSION}`);
  const tops: Record<number, string> = {};
  for (const s of sizes) tops[s] = path.join(dir, `tops-${s}.list`);
  const extensionTops = extensions ? path.join(dir, 'extension-tops.list') : null;
  let rowCount = extensions * LAZY_EXTENSION;
  for (const s of sizes) rowCount += s * spec[s];
  return cached(dir, (tmp) => {
    log(`making a synthetic lazy lower root (${rowCount} paths)`);
    const rand = prng(12345);
    const root = path.join(tmp, 'root');
    const db = createDb(root);
    const storeDir = path.join(root, 'nix/store');
    const rows: [Row, number[], undefined][] = [];
    /** Adds a closure of `s` paths (each also referring to row `under`, when given); returns its top's row. */
    const closure = (s: number, label: string, under?: number): { name: string; row: number } => {
      const names: string[] = [];
      for (let j = 0; j < s; j++) names.push(`${nix32(rand, 32)}-${label}-${j === 0 ? 'top' : `n${j}`}`);
      // Node j's row goes in at base + (s - 1 - j): references (higher j) first, top last.
      const base = rows.length;
      const rowOf = (j: number): number => base + (s - 1 - j);
      for (let j = s - 1; j >= 0; j--) {
        const r: number[] = [];
        for (let k = 4 * j + 1; k <= 4 * j + 4 && k < s - 1; k++) r.push(rowOf(k));
        if (s > 1 && j !== s - 1) r.push(rowOf(s - 1));
        if (under !== undefined) r.push(under);
        rows.push([{
          path: `/nix/store/${names[j]}`, hash: `sha256:${nix32(rand, 52)}`, registrationTime: 1_700_000_000,
          deriver: null, narSize: 120, ultimate: null, sigs: null, ca: null,
        }, r, undefined]);
        fs.writeFileSync(path.join(storeDir, names[j]), 'x');
      }
      return { name: names[0], row: rowOf(0) };
    };
    const baseTops: number[] = [];
    for (const s of sizes) {
      const topNames: string[] = [];
      for (let c = 0; c < spec[s]; c++) {
        const top = closure(s, `lazy-${s}-${c}`);
        topNames.push(top.name);
        if (s === LAZY_BASE) baseTops.push(top.row);
      }
      fs.writeFileSync(path.join(tmp, `tops-${s}.list`), topNames.join('\n') + '\n');
    }
    if (extensionTops) {
      const names = baseTops.map((under, c) => closure(LAZY_EXTENSION, `lazy-ext-${c}`, under).name);
      fs.writeFileSync(path.join(tmp, path.basename(extensionTops)), names.join('\n') + '\n');
    }
    insertAll(db, rows);
    closeDb(db);
  }).then(() => ({ root: path.join(dir, 'root'), tops, extensionTops, rows: rowCount }));
}

/** The untar fixture: `files` small files (100–4000 bytes, 100 per dir) in one tar. */
export async function untarFixture(cacheRoot: string, files: number, tarFile: (src: string, out: string) => Promise<void>): Promise<string> {
  const dir = await cached(path.join(cacheRoot, `untar-${files}-v${GEN_VERSION}`), async (tmp) => {
    log(`making the untar fixture (${files} files)`);
    const rand = prng(files);
    const src = path.join(tmp, 'src');
    for (let i = 0; i < files; i++) {
      const d = path.join(src, 'pkg', `dir-${String(Math.floor(i / 100)).padStart(3, '0')}`);
      if (i % 100 === 0) fs.mkdirSync(d, { recursive: true });
      const size = 100 + Math.floor(rand() * 3900);
      fs.writeFileSync(path.join(d, `file-${i}.txt`), Buffer.alloc(size, `line ${i} of a small source file\n`));
    }
    await tarFile(src, path.join(tmp, 'files.tar'));
    fs.rmSync(src, { recursive: true, force: true });
  });
  return path.join(dir, 'files.tar');
}
