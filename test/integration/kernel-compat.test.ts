import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { check, run } from '../helpers/exec';
import { sharedLower } from '../helpers/fixture';
import { mountMerged, tempDir } from '../helpers/mount';
import { derivation, nixOk } from '../helpers/nix';
import { lowerRootDigest, treeLines } from '../helpers/tree';

// The upper layer's on-disk format is kernel OverlayFS's: the kernel, mounted on the same
// lower and upper, must show the same store as local-overlay, in both directions.
// Compared: names, types, modes, sizes, contents and link targets. Not compared: `.links`
// (Nix's hard-link pool: local-overlay's is upper-only, the kernel merges the lower's in) and
// the lower store's own bookkeeping names (which local-overlay never shows).

const skip = (lowerBookkeeping: Set<string>) => (rel: string): boolean => rel === '.links' || rel.startsWith('.links/') || lowerBookkeeping.has(rel.split('/')[0]);

async function lowerBookkeeping(lowerStore: string): Promise<Set<string>> {
  const names = await fs.promises.readdir(lowerStore);
  return new Set(names.filter((n) => n.startsWith('.') || /\.(lock|chroot|check)$/.test(n) || !/^[0-9a-z]{32}-/.test(n)));
}

async function kernelMount(t: Parameters<typeof tempDir>[0], lowerStore: string, upper: string, work: string, mnt: string): Promise<() => Promise<void>> {
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(mnt, { recursive: true });
  const r = await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowerStore},upperdir=${upper},workdir=${work}`, mnt]);
  if (r.code !== 0) throw new Error(`kernel OverlayFS is not available here (mount -t overlay failed: ${r.stderr.trim()})`);
  let mounted = true;
  const umount = async (): Promise<void> => {
    if (!mounted) return;
    mounted = false;
    await check('umount', [mnt]);
  };
  t.teardown(() => umount().catch(() => run('umount', ['-l', mnt]).then(() => undefined)));
  return umount;
}

async function buildAndAdd(root: string, dir: string, appOut: string, single: string): Promise<string> {
  const drv = await derivation(dir, 'compat-build', { app: appOut, single }, 'echo ${app} ${single} > $out');
  const out = (await nixOk('nix-build', ['--store', root, '--no-out-link', ...drv])).trim();
  const src = path.join(dir, 'added-dir');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'sub/file'), 'added through the merged store\n');
  fs.symlinkSync('sub/file', path.join(src, 'link'));
  await nixOk('nix-store', ['--store', root, '--add', src]);
  return out;
}

test('written through local-overlay, read by kernel OverlayFS: the same store', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const m = await mountMerged(t, lower.root);
  const p = lower.manifest.paths;
  const out = await buildAndAdd(m.root, m.dir, p.appOut, p.singleFile);
  const ignore = skip(await lowerBookkeeping(m.lowerStore));
  const ours = await treeLines(m.store, { ignore });
  t.true(ours.some((l) => l.includes(out.slice('/nix/store/'.length))));
  await m.unmount();

  const mnt = path.join(m.dir, 'kernel');
  const umount = await kernelMount(t, m.lowerStore, m.upper, path.join(m.dir, 'kwork'), mnt);
  const kernel = await treeLines(mnt, { ignore });
  await umount();
  t.deepEqual(kernel, ours);
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});

test('written through kernel OverlayFS, served by local-overlay: the same store', async (t) => {
  const lower = await sharedLower();
  const before = await lowerRootDigest(lower.root);
  const dir = tempDir(t);
  const p = lower.manifest.paths;
  // A Nix root whose store is the kernel overlay and whose DB starts as a copy of the lower's.
  const root = path.join(dir, 'root');
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(upper);
  fs.mkdirSync(path.join(root, 'nix/var/nix'), { recursive: true });
  await check('cp', ['-a', path.join(lower.root, 'nix/var/nix/db'), path.join(root, 'nix/var/nix/db')]);
  const store = path.join(root, 'nix/store');
  const umount = await kernelMount(t, path.join(lower.root, 'nix/store'), upper, path.join(dir, 'kwork'), store);
  const out = await buildAndAdd(root, dir, p.appOut, p.singleFile);
  const ignore = skip(await lowerBookkeeping(path.join(lower.root, 'nix/store')));
  const kernel = await treeLines(store, { ignore });
  await umount();
  fs.rmSync(path.join(dir, 'kwork'), { recursive: true, force: true });

  // The same root, now served by local-overlay over the same lower and upper.
  const m = await mountMerged(t, lower.root, { dir, upper });
  t.is(m.root, path.join(dir, 'merged'));
  const ours = await treeLines(m.store, { ignore });
  t.deepEqual(ours, kernel);
  t.is(await fs.promises.readFile(path.join(m.store, out.slice('/nix/store/'.length)), 'utf8'), `${p.appOut} ${p.singleFile}\n`);
  await m.unmount();
  t.is(await lowerRootDigest(lower.root), before, 'the lower root changed');
});
