import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowerDb } from './lower-db';
import { maxValidId } from './rows';
import { NIX_SCHEMA_SQL, NIX_SCHEMA_VERSION } from './schema';
import { Db, isTornRead, openDb } from './sqlite';
import { FILE_MODE } from '../util/own-files';

type MasterRow = { type: string; name: string; tbl_name: string; sql: string | null };

function master(db: Db): string {
  const rows = db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").all() as MasterRow[];
  return JSON.stringify(rows);
}

/** seedFromLower's answer: the highest lower id copied, or why rows must be imported one by one. */
export type SeedResult = { maxId: number } | { unseeded: string };

/** How many copies seedFromLower makes of a lower DB file that a writer changes meanwhile. */
const SEED_TRIES = 3;

/**
 * The first mount of a mirror-mode merged root needs every lower row in a new upper DB. When
 * the lower DB has exactly the schema the upper DB must have (Nix 2.8's, nothing more), the
 * fastest faithful copy is SQLite's own: `VACUUM INTO` from the read-only lower snapshot
 * writes a new file page by page (rows, ids, references, derivation outputs all identical),
 * which is then renamed into place. Not when the schemas differ (e.g. a newer Nix's extra
 * tables), nor when the lower DB file changed during each copy: a writer checkpointing into
 * it can tear the immutable read without an error (sqlite.ts, LowerFileChanged).
 */
export function seedFromLower(lower: LowerDb, dbDir: string): SeedResult {
  const ref = openDb(':memory:');
  ref.exec(NIX_SCHEMA_SQL);
  const want = master(ref);
  ref.close();
  if (master(lower.conn()) !== want) return { unseeded: 'the lower DB\'s schema differs from Nix 2.8\'s' };

  fs.mkdirSync(dbDir, { recursive: true, mode: 0o755 });
  const file = path.join(dbDir, 'db.sqlite');
  const tmp = `${file}.seed`;
  for (let tries = 0; tries < SEED_TRIES; tries++) {
    fs.rmSync(tmp, { force: true });
    const before = lower.fileIdentity();
    try {
      lower.conn().exec(`VACUUM INTO '${tmp.replace(/'/g, "''")}'`);
    } catch (err) {
      if (isTornRead(err)) continue; // torn with an error: as when the identity changes
      fs.rmSync(tmp, { force: true });
      // SQLite's words ("database or disk is full") do not say which file: this one.
      if (err instanceof Error) err.message = `copying the lower DB into ${tmp} (the merged DB's seed): ${err.message}`;
      throw err;
    }
    if (lower.fileIdentity() !== before) continue;
    const copy = openDb(tmp);
    const maxId = maxValidId(copy);
    copy.close();
    fs.renameSync(tmp, file);
    fs.writeFileSync(path.join(dbDir, 'schema'), String(NIX_SCHEMA_VERSION), { mode: FILE_MODE });
    return { maxId };
  }
  fs.rmSync(tmp, { force: true });
  return { unseeded: `the lower DB file changed during each of ${SEED_TRIES} copies` };
}
