// Store path names as Nix 2.8 defines them (`<32 nix-base32 chars>-<name>`, the name from
// [A-Za-z0-9+-._?=], not starting with a dot, at most 211 characters) and the bookkeeping
// names Nix keeps beside them (docs/nix-2.8-behaviour.md, "Names at the top of the store dir").
import test from 'ava';
import {
  HASH_LEN, hashPart, isBookkeepingName, isHashPart, isStoreObjectName, storeObjectNameOf, toStorePath,
} from '../../src/store/store-path';

// Real hashes from the test lower store (Nix made them).
const H = 'c220qf3vq416r6dri1752hwwpgm6ny4b';
const H2 = '5ybrjcbwab3gxibd6gw3lhv7c6mdgrqk';

test('names Nix makes are store object names', (t) => {
  for (const n of [
    `${H}-lower-single.txt`, `${H2}-lower-sample-tree`, `${H}-lower-lib-1.0.drv`, `${H}-source`,
    `${H}-a`, `${H}-x+y_z?w=v.-`, `${H}-0`, `${H}-${'n'.repeat(211)}`, `${H}-Cargo.lock`, `${H}-foo.drv.chroot`,
  ]) t.true(isStoreObjectName(n), n);
});

test('anything else is not a store object name (absence, not an error)', (t) => {
  for (const n of [
    '', '.', '..', '.links', 'add-1234-0', '.fuse_hidden0000000100000001', `.tmp-link-1-2`, `.wh.${H}-x`,
    H, `${H}-`, `${H}x`, `${H}_name`, `${H.slice(1)}-short-hash`, `${H}a-long-hash`,
    `${H.toUpperCase()}-upper-hash`, `${'e'.repeat(32)}-e-not-in-nix32`, `${'o'.repeat(32)}-o`, `${'t'.repeat(32)}-t`, `${'u'.repeat(32)}-u`,
    `${H}-.dotname`, `${H}-with space`, `${H}-slash/inside`, `${H}-ümlaut`, `${H}-${'n'.repeat(212)}`, `${H}-new\nline`,
  ]) t.false(isStoreObjectName(n), JSON.stringify(n));
});

test('hash parts', (t) => {
  t.is(HASH_LEN, 32);
  t.true(isHashPart(H));
  t.false(isHashPart(`${H}-x`));
  t.false(isHashPart(H.slice(1)));
  t.false(isHashPart('e'.repeat(32)));
  t.is(hashPart(`${H}-lower-single.txt`), H);
});

test('bookkeeping names: the link pool, locks, build chroots, check outputs, dot names', (t) => {
  for (const n of ['.links', `${H}-foo.lock`, `${H}-foo.drv.chroot`, `${H}-foo.check`, '.tmp-link-1-2', '.fuse_hidden0001', `.wh.${H}-x`, '.anything']) {
    t.true(isBookkeepingName(n), n);
  }
  for (const n of [`${H}-foo`, `${H}-foo.drv`, `${H}-lock`, `${H}-chroot`, `${H}-foo.locked`, 'add-1-0']) t.false(isBookkeepingName(n), n);
});

test('storeObjectNameOf: the top-level name of a path below a store dir', (t) => {
  t.is(storeObjectNameOf('/nix/store', `/nix/store/${H}-x`), `${H}-x`);
  t.is(storeObjectNameOf('/nix/store/', `/nix/store/${H}-x/bin/tool`), `${H}-x`, 'trailing slash on the store dir');
  t.is(storeObjectNameOf('/tmp/m/nix/store', `/tmp/m/nix/store/${H}-x/a`), `${H}-x`, 'another store dir');
  t.is(storeObjectNameOf('/nix/store', '/nix/store'), null, 'the store dir itself');
  t.is(storeObjectNameOf('/nix/store', '/nix/store/'), null, 'the store dir with a slash');
  t.is(storeObjectNameOf('/nix/store', `/nix/store2/${H}-x`), null, 'a sibling dir with the same prefix');
  t.is(storeObjectNameOf('/nix/store', `/nix/${H}-x`), null, 'outside the store dir');
  t.is(storeObjectNameOf('/nix/store', '/nix/store/.links/abc'), null, 'a bookkeeping dir');
  t.is(storeObjectNameOf('/nix/store', '/nix/store/not-a-store-path/x'), null);
});

test('toStorePath joins a store dir and a name', (t) => {
  t.is(toStorePath('/nix/store', `${H}-x`), `/nix/store/${H}-x`);
  t.is(storeObjectNameOf('/nix/store', toStorePath('/nix/store', `${H}-x`)), `${H}-x`, 'round trip');
});
