// Run by `make test` after ava: the shared lower store that every test mounted must be
// byte-identical (tree, modes, mtimes, DB dir files and bytes) to how it was when built.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sharedLowerDir } from '../helpers/fixture';
import { lowerRootDigest } from '../helpers/tree';

async function main(): Promise<number> {
  const dir = sharedLowerDir();
  const recorded = path.join(dir, 'digest.txt');
  if (!fs.existsSync(recorded)) {
    process.stderr.write(`lower-untouched check: no shared lower store at ${dir} (no test built it?)\n`);
    return 1;
  }
  const want = fs.readFileSync(recorded, 'utf8').trim();
  const have = await lowerRootDigest(path.join(dir, 'root'));
  if (have !== want) {
    process.stderr.write(`lower-untouched check: FAILED: the shared lower root ${dir}/root changed during the suite (${want} -> ${have})\n`);
    return 1;
  }
  process.stdout.write(`lower-untouched check: passed (${path.join(dir, 'root')} digest ${have.slice(0, 16)} unchanged over the whole suite)\n`);
  return 0;
}

void main().then((code) => { process.exitCode = code; });
