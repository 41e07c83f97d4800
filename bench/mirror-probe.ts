/**
 * Times the product's mirror import on its own, in its own process:
 *
 *   mirror-probe.js LOWER_DB_FILE UPPER_DB_DIR
 *
 * opens (creates) the upper DB in UPPER_DB_DIR with the product's UpperDb, the lower DB with
 * its LowerDb (read-only, immutable), and runs one Mirror.importNew(), the same call the
 * daemon makes at mount. Prints {rows, seconds, peakRssKiB} as JSON. The DB open and schema
 * creation are outside the timed span; the lower DB's pages are whatever the caller left in
 * the page cache.
 */
import * as fs from 'node:fs';
import { LowerDb } from '../src/metadata/lower-db';
import { Mirror } from '../src/metadata/mirror';
import { UpperDb } from '../src/metadata/upper-db';

function main(lowerDbFile: string, upperDbDir: string): Record<string, unknown> {
  const upper = UpperDb.open(upperDbDir, { timeoutMs: 5000 });
  const lower = new LowerDb(lowerDbFile);
  try {
    lower.conn();
    const mirror = new Mirror(upper, lower);
    const rowCount = (): number => upper.db.prepare('SELECT count(*) FROM ValidPaths').pluck().get() as number;
    const before = rowCount();
    const t0 = process.hrtime.bigint();
    mirror.importNew();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // Rows counted in the DB, not taken from importNew's return value (whose shape may change).
    const after = rowCount();
    const refs = (upper.db.prepare('SELECT count(*) FROM Refs').pluck().get() as number);
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return { rows: after - before, upperRows: after, upperRefs: refs, seconds, peakRssKiB: m ? Number(m[1]) : null };
  } finally {
    lower.close();
    upper.close();
  }
}

const [lowerDbFile, upperDbDir] = process.argv.slice(2);
if (!lowerDbFile || !upperDbDir) {
  process.stderr.write('usage: mirror-probe.js LOWER_DB_FILE UPPER_DB_DIR\n');
  process.exit(2);
}
process.stdout.write(JSON.stringify(main(lowerDbFile, upperDbDir)) + '\n');
