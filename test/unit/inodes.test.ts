// InodeMap: merged inode numbers are stable, fit the binding, never collide across layers,
// and never meet the root's number. Checked as properties over many inputs, not by formula.
import test from 'ava';
import { InodeMap, ROOT_INO } from '../../src/layers/inodes';
import { Layer } from '../../src/layers/layers';

const UPPER_DEV = 2049, LOWER_DEV = 2050, OTHER_DEV = 64769;

/** Inode numbers around the edges that matter, plus a spread in between. */
function sampleInos(): number[] {
  const out = [1, 2, 3, 11, 12, 4095, 4096, 65_535, 65_536, 2 ** 20, 2 ** 29, 2 ** 30 - 2, 2 ** 30 - 1];
  for (let i = 0; i < 2000; i++) out.push(1 + Math.floor(Math.random() * (2 ** 30 - 1)));
  return [...new Set(out)];
}

test('the same file always gets the same number', (t) => {
  const m = new InodeMap([UPPER_DEV, LOWER_DEV]);
  for (const [layer, dev, ino] of [[Layer.Upper, UPPER_DEV, 5], [Layer.Lower, LOWER_DEV, 5], [Layer.Lower, OTHER_DEV, 7], [Layer.Upper, UPPER_DEV, 2 ** 40]] as const) {
    const first = m.ino(layer, dev, ino);
    for (let i = 0; i < 3; i++) t.is(m.ino(layer, dev, ino), first, `${layer}:${dev}:${ino}`);
  }
});

test('the layers never collide, also when the raw inode numbers are equal', (t) => {
  const m = new InodeMap([UPPER_DEV, LOWER_DEV]);
  const seen = new Map<number, string>();
  for (const ino of sampleInos()) {
    for (const [layer, dev] of [[Layer.Upper, UPPER_DEV], [Layer.Lower, LOWER_DEV]] as const) {
      const n = m.ino(layer, dev, ino);
      const id = `${layer}:${ino}`;
      const other = seen.get(n);
      if (other !== undefined && other !== id) t.fail(`${id} and ${other} both got ${n}`);
      seen.set(n, id);
      t.not(n, ROOT_INO, `${id} got the root's number`);
      t.true(Number.isInteger(n) && n > 0 && n < 2 ** 32, `${id} → ${n} fits in 32 bits`);
    }
  }
  t.pass();
});

test('both layers on one filesystem (one device) still get distinct numbers', (t) => {
  const m = new InodeMap([UPPER_DEV, UPPER_DEV]);
  const numbers = new Set<number>();
  const inos = sampleInos();
  for (const ino of inos) {
    numbers.add(m.ino(Layer.Upper, UPPER_DEV, ino));
    numbers.add(m.ino(Layer.Lower, UPPER_DEV, ino));
  }
  t.is(numbers.size, inos.length * 2);
});

test('files on other devices and huge inode numbers fall back to the table, which never meets computed numbers', (t) => {
  const m = new InodeMap([UPPER_DEV, LOWER_DEV]);
  const computed = new Set<number>();
  for (const ino of sampleInos()) {
    computed.add(m.ino(Layer.Upper, UPPER_DEV, ino));
    computed.add(m.ino(Layer.Lower, LOWER_DEV, ino));
  }
  const table = new Map<string, number>();
  const cases: Array<[Layer, number, number]> = [];
  for (const ino of [1, 2, 5, 2 ** 29]) {
    cases.push([Layer.Upper, OTHER_DEV, ino], [Layer.Lower, OTHER_DEV, ino], [Layer.Lower, UPPER_DEV, ino], [Layer.Upper, LOWER_DEV, ino]);
  }
  for (const ino of [2 ** 30, 2 ** 31 + 7, 2 ** 40, 2 ** 52]) cases.push([Layer.Upper, UPPER_DEV, ino], [Layer.Lower, LOWER_DEV, ino]);
  for (const [layer, dev, ino] of cases) {
    const id = `${layer}:${dev}:${ino}`;
    const n = m.ino(layer, dev, ino);
    t.false(computed.has(n), `${id} → ${n} meets a computed number`);
    t.true(n >= 2 ** 31 && n < 2 ** 32, `${id} → ${n} comes from the table range`);
    t.false([...table.values()].includes(n), `${id} → ${n} was already handed out`);
    table.set(id, n);
  }
  for (const [layer, dev, ino] of cases) t.is(m.ino(layer, dev, ino), table.get(`${layer}:${dev}:${ino}`)!, 'table answers are stable');
});

test('the root keeps inode 1', (t) => {
  t.is(ROOT_INO, 1);
  const m = new InodeMap([UPPER_DEV, LOWER_DEV]);
  t.not(m.ino(Layer.Upper, UPPER_DEV, 1), ROOT_INO, 'the upper file with raw inode 1');
  t.not(m.ino(Layer.Lower, LOWER_DEV, 1), ROOT_INO, 'the lower file with raw inode 1');
});
