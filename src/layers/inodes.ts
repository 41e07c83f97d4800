import { Layer } from './layers';

/**
 * Stable, unique inode numbers across both layers while mounted (the mount uses `use_ino`).
 *
 * fuse-native passes st_ino as 32 bits. The common case is computed without a table: a file on
 * the layer's own device with ino < 2^30 gets `ino * 2 + layer`, which keeps hard links within a
 * layer on one number and can never collide across layers. Anything else (another device below
 * a layer, larger inode numbers) gets a number from a table, allocated from 2^31 upwards, so it
 * cannot meet a computed one. Inode 1 is the merged root.
 */
export const ROOT_INO = 1;
const COMPUTED_LIMIT = 2 ** 30;
const TABLE_BASE = 2 ** 31;

export class InodeMap {
  private readonly table = new Map<string, number>();
  private next = TABLE_BASE;

  constructor(private readonly layerDev: readonly [number, number]) {}

  ino(layer: Layer, dev: number, ino: number): number {
    if (dev === this.layerDev[layer] && ino < COMPUTED_LIMIT) return ino * 2 + layer;
    const key = `${layer}:${dev}:${ino}`;
    let n = this.table.get(key);
    if (n === undefined) {
      n = this.next++;
      if (this.next >= 2 ** 32) this.next = TABLE_BASE; // wraps only after 2^31 odd files
      this.table.set(key, n);
    }
    return n;
  }
}
