import { LRUCache } from 'lru-cache';

/**
 * An LRU cache of at most `max` entries whose memory grows with its use. With `max`,
 * LRUCache allocates its index arrays for `max` entries when it is made (44 bytes an entry
 * with TTLs: 8.8 MB for 200,000), and a daemon pays that whether or not it ever caches so
 * much. Bounded by `maxSize` instead, each entry of size 1, the arrays grow as entries come.
 * The price is paid when full: plain arrays instead of typed ones (200,000 entries with TTLs:
 * 21.5 MiB of heap against 15.4 MiB). With the fast path on, the daemon's caches stay far
 * from full: it answers most lookups before they reach them.
 */
export function growingCache<K extends NonNullable<unknown>, V extends NonNullable<unknown>>(max: number, opts: { ttlResolution?: number } = {}): LRUCache<K, V> {
  return new LRUCache<K, V>({ ...opts, maxSize: max, sizeCalculation: () => 1 });
}
