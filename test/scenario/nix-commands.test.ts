import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cli, run } from '../helpers/exec';
import { sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';
import { nix, nixOk } from '../helpers/nix';
import { lowerRootDigest } from '../helpers/tree';

// Nix commands an operator points at a merged root beyond building, adding and collecting,
// checked for their results and for what local-overlay's own checks say afterwards.

interface VerifyReport { problems: { kind: string; path: string; repaired?: boolean }[] }

async function verifyJson(root: string, ...extra: string[]): Promise<{ code: number; report: VerifyReport }> {
  const r = await cli(['verify', root, '--json', ...extra]);
  return { code: r.code, report: JSON.parse(r.stdout) as VerifyReport };
}

async function sigsOf(root: string, storePath: string): Promise<string[]> {
  const info = JSON.parse(await nixOk('nix', ['path-info', '--store', root, '--json', storePath])) as { signatures?: string[] }[];
  return info[0].signatures ?? [];
}

test('nix store sign of a lower path: the signature stays in the merged row through verify, verify --repair and a remount', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const dir = tempDir(t);
  let m = await mountMerged(t, lower.root, { dir });
  const p = lower.manifest.paths;
  const key = path.join(dir, 'sk');
  await nixOk('nix-store', ['--generate-binary-cache-key', 'rv-test-key-1', key, path.join(dir, 'pk')]);
  const pub = (await fs.promises.readFile(path.join(dir, 'pk'), 'utf8')).trim();

  for (const target of [p.appOut, p.singleFile]) await nixOk('nix', ['store', 'sign', '--store', m.root, '--key-file', key, target]);
  const [sig] = await sigsOf(m.root, p.appOut);
  t.regex(sig ?? '', /^rv-test-key-1:/, 'nix store sign wrote the signature into the merged row');

  // A signature the merged store added is its own, as on any local store: not a disagreement.
  const clean = await verifyJson(m.root);
  t.is(clean.code, 0, JSON.stringify(clean.report));
  t.deepEqual(clean.report.problems, []);

  // A row that does differ (its ca lost, as `nix-store --load-db` leaves it) is repaired from
  // the lower row without losing the merged store's signature.
  await m.unmount();
  await run('sqlite3', [path.join(m.root, 'nix/var/nix/db/db.sqlite'), `UPDATE ValidPaths SET ca = NULL WHERE path = '${p.singleFile}'`]);
  const differs = await verifyJson(m.root);
  t.is(differs.code, 1);
  t.deepEqual(differs.report.problems.map((x) => `${x.kind} ${x.path}`), [`row-differs ${p.singleFile}`]);
  const fix = await cli(['verify', m.root, '--repair']);
  t.is(fix.code, 0, fix.stdout + fix.stderr);

  m = await mountMerged(t, lower.root, { dir });
  for (const target of [p.appOut, p.singleFile]) {
    t.true((await sigsOf(m.root, target)).some((s) => s.startsWith('rv-test-key-1:')), `${target}: the signature survived repair and remount`);
  }
  const trusted = await nix('nix', ['store', 'verify', '--store', m.root, '--sigs-needed', '1', '--trusted-public-keys', pub, p.appOut, p.singleFile]);
  t.is(trusted.code, 0, trusted.stderr);
  const after = await verifyJson(m.root);
  t.is(after.code, 0, JSON.stringify(after.report));
  await m.unmount();
  // A row whose NAR hash differs: the merged store's signature signed other content, and goes
  // with the repair (the lower row's signatures stay).
  const db = path.join(m.root, 'nix/var/nix/db/db.sqlite');
  const sigsInDb = async (): Promise<string> => (await run('sqlite3', [db, `SELECT coalesce(sigs, '') FROM ValidPaths WHERE path = '${p.appOut}'`])).stdout.trim();
  await run('sqlite3', [db, `UPDATE ValidPaths SET hash = 'sha256:${'0'.repeat(64)}' WHERE path = '${p.appOut}'`]);
  const rehash = await cli(['verify', m.root, '--repair']);
  t.is(rehash.code, 0, rehash.stdout + rehash.stderr);
  t.notRegex(await sigsInDb(), /rv-test-key-1:/, 'a signature of other content was kept');
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});
