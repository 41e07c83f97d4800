// src/cli/commands/trace.ts tracePrefix: a path in the merged store, however the root is
// spelled (relative to the current dir, or through a symlink), is the same store path prefix.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tracePrefix } from '../../src/cli/commands/trace';
import { tempDir } from '../helpers/mount';

test('tracePrefix takes a path in the merged store given relative or through a symlink to the root', (t) => {
  const dir = fs.realpathSync(tempDir(t));
  const root = path.join(dir, 'root');
  fs.mkdirSync(path.join(root, 'nix/store'), { recursive: true });
  fs.symlinkSync(root, path.join(dir, 'link'));
  t.is(tracePrefix(`${root}/nix/store/abc`, root), '/nix/store/abc');
  t.is(tracePrefix('/nix/store/abc', root), '/nix/store/abc');
  t.is(tracePrefix('abc', root), '/nix/store/abc');
  t.is(tracePrefix(`${dir}/link/nix/store/abc`, root), '/nix/store/abc');
  t.is(tracePrefix(path.relative(process.cwd(), `${root}/nix/store/abc`), root), '/nix/store/abc');
  t.throws(() => tracePrefix(`${dir}/elsewhere/abc`, root), { message: /--prefix/ });
  t.throws(() => tracePrefix(`${dir}/other/nix/store/abc`, root), { message: /--prefix/ });
});
