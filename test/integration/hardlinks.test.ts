import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sharedLower } from '../helpers/fixture';
import { mountMerged } from '../helpers/mount';

// libfuse 2's path-based API gives every name its own kernel inode, so a change made through
// one name of a hard-linked upper file reaches the other names' attributes and page cache
// when theirs expire: --attr-timeout (also auto_cache's ac_attr_timeout) bounds the
// staleness. Store objects are immutable, so Nix only meets this in `.links` nlink counts.
// This mount uses a 1 s bound; the default is 60 s.

const NAME = '0000000000000000000000000000000h-hardlinks';

test('hard links in the upper layer: a change through one name shows through the others within --attr-timeout', async (t) => {
  const lower = await sharedLower();
  const m = await mountMerged(t, lower.root, { extra: ['--attr-timeout', '1'] });
  const s = (r: string): string => path.join(m.store, NAME, r);
  await fs.promises.mkdir(path.join(m.store, NAME));
  await fs.promises.writeFile(s('f'), 'shared');
  t.is(await fs.promises.readFile(s('f'), 'utf8'), 'shared');
  await fs.promises.link(s('f'), s('g'));
  t.is((await fs.promises.stat(s('g'))).nlink, 2, 'the new name');
  t.is((await fs.promises.stat(s('f'))).nlink, 2, 'the old name (link invalidates its attributes)');
  t.is((await fs.promises.stat(s('g'))).ino, (await fs.promises.stat(s('f'))).ino, 'one inode number');

  await fs.promises.writeFile(s('g'), 'changed through g');
  await new Promise((r) => setTimeout(r, 1500));
  t.is((await fs.promises.stat(s('f'))).size, 17, 'size through the old name after the timeout');
  t.is(await fs.promises.readFile(s('f'), 'utf8'), 'changed through g', 'contents through the old name after the timeout');

  await fs.promises.unlink(s('g'));
  await new Promise((r) => setTimeout(r, 1500));
  t.is((await fs.promises.stat(s('f'))).nlink, 1, 'nlink of the old name after the other is unlinked (Nix\'s .links GC reads it)');
  t.is((await fs.promises.stat(path.join(m.upper, NAME, 'f'))).nlink, 1, 'the upper dir agrees');
});
