import { LRUCache } from 'lru-cache';
import { OverlayStats } from '../overlay/stats';
import { log } from '../util/log';
import { copyClosure } from './closure';
import { LowerDb } from './lower-db';
import { Mirror } from './mirror';
import { withBusyRetry } from './sqlite';
import { UpperDb } from './upper-db';

export type MetadataMode = 'mirror' | 'lazy';

/**
 * Keeps the upper DB consistent with the lower store.
 *
 * - lazy: a lookup that resolves a top-level name to the lower layer waits until the object's
 *   closure is in the upper DB (`lowerLookup`).
 * - mirror (default): all lower rows are imported at start and the follower imports new ones
 *   as the lower DB grows. The lookup hook stays on as a safety net for objects that appear
 *   in the lower store between two follower ticks.
 * `known` remembers names whose rows the upper DB is known to have, so a repeated lookup costs
 * one cache probe (the kernel caches entries for a long time anyway).
 */
export class Metadata {
  readonly mirror: Mirror;
  private readonly known = new LRUCache<string, true>({ max: 100_000 });
  private readonly inflight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private lastFollow = { at: 0, lagMs: 0 };

  constructor(
    readonly upper: UpperDb,
    readonly lower: LowerDb,
    readonly mode: MetadataMode,
    private readonly stats: OverlayStats,
    readonly storeDir = '/nix/store',
  ) {
    this.mirror = new Mirror(upper, lower);
  }

  /** The mirror's first import; returns the number of rows added. */
  importAll(): number {
    const t0 = Date.now();
    const added = this.mirror.importNew();
    this.stats.count('rowsMirrored', added.length);
    for (const p of added) this.known.set(p, true);
    log.info(`mirror: imported ${added.length} lower paths in ${Date.now() - t0} ms`);
    this.stats.trace?.('import', this.storeDir, `${added.length} rows`, Date.now() - t0);
    return added.length;
  }

  /** Lookup hook: null when nothing needs doing, else the pending closure copy. */
  lowerLookup(name: string): Promise<void> | null {
    const storePath = `${this.storeDir}/${name}`;
    if (this.known.has(storePath)) return null;
    if (this.upper.idOf(storePath) !== undefined) {
      this.known.set(storePath, true);
      return null;
    }
    let p = this.inflight.get(storePath);
    if (p) return p;
    const t0 = Date.now();
    p = withBusyRetry(() => copyClosure(this.upper, this.lower, [storePath])).then((n) => {
      this.inflight.delete(storePath);
      this.known.set(storePath, true);
      this.stats.count('closureSyncs');
      this.stats.count('rowsCopied', n);
      this.stats.trace?.('closure', storePath, `${n} rows`, Date.now() - t0);
    }, (err) => {
      this.inflight.delete(storePath);
      throw err;
    });
    this.inflight.set(storePath, p);
    return p;
  }

  /** Called when the upper layer lost a top-level object: its DB state may change. */
  forget(name: string): void {
    this.known.delete(`${this.storeDir}/${name}`);
  }

  /**
   * Follows the lower DB: every `intervalMs`, if its files changed, reopen the snapshot and
   * (mirror mode) import the new rows. `onNewPaths` hears the names added.
   */
  startFollower(intervalMs: number, onNewPaths: (names: string[]) => void): void {
    const tick = (): void => {
      try {
        if (this.lower.changed()) {
          this.lower.reopen();
          if (this.mode === 'mirror') {
            const t0 = Date.now();
            const added = this.mirror.importNew();
            if (added.length > 0) {
              this.stats.count('rowsMirrored', added.length);
              for (const p of added) this.known.set(p, true);
              onNewPaths(added.map((p) => p.slice(this.storeDir.length + 1)));
              this.stats.trace?.('import', this.storeDir, `${added.length} rows`, Date.now() - t0);
            }
          }
        }
        this.lastFollow = { at: Date.now(), lagMs: 0 };
      } catch (err) {
        log.warn(`follower: ${err instanceof Error ? err.message : String(err)} (will retry)`);
      }
    };
    this.timer = setInterval(tick, intervalMs);
    this.timer.unref();
  }

  followerState(): { lastTickAt: number; lastLowerId: number } {
    return { lastTickAt: this.lastFollow.at, lastLowerId: this.mirror.lastLowerId };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  close(): void {
    this.stop();
    this.lower.close();
    this.upper.close();
  }
}
