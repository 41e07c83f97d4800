import Fuse = require('fuse-native');
import { TopLevelSink } from '../layers/layers';

/**
 * Names of the fast path's counters, in native/fastpath.c's order (then the table size, whether it
 * is on, and how many listed directories the kernel has not forgotten: `refresh` reaches those).
 */
const COUNTERS = [
  'getattr', 'fgetattr', 'readlink', 'open', 'create', 'read', 'write', 'release', 'fsync',
  'ftruncate', 'readdir', 'mkdir', 'unlink', 'rmdir', 'symlink', 'rename', 'link', 'chmod',
  'chown', 'truncate', 'utimens', 'upper', 'lower', 'miss', 'passed',
  // Directory listings the kernel keeps (served once), OPENs answered with a backing file the
  // kernel reads itself, and READDIRPLUS answers (native/fastpath.c, "the channel").
  'listings', 'passthrough', 'readdirplus',
  // The reader role handed to another worker before a wait (JS, fsync, a slow layer), and taken
  // from a worker stuck on one request by the watchdog (native/fastpath.c, "the reader").
  'handoffs', 'stalls',
  // Requests the reader found while it polled the device instead of sleeping ("polling").
  'polled',
] as const;

export type FastCounters = Record<(typeof COUNTERS)[number] | 'entries' | 'listedDirs', number> & { on: boolean };

const KIND = { upper: 0, lower: 1, whiteout: 2 } as const;

/**
 * The table holds at most 2^19 lower objects, then forgets them all (native/fastpath.c,
 * LO_MAX_LOWER_ENTRIES). Tests reach that bound with a small lower store by setting
 * LOCAL_OVERLAY_TEST_FAST_LOWER_MAX; undefined (the native bound) otherwise.
 */
function testLowerMax(): number | undefined {
  const v = Number(process.env.LOCAL_OVERLAY_TEST_FAST_LOWER_MAX);
  return Number.isInteger(v) && v > 0 ? v : undefined;
}

/**
 * The native fast path (native/fastpath.c): answers requests below a store object whose layer
 * is decided, and lookups of absent names, on libfuse's threads without a round trip to this
 * one. It learns the top-level index from TopLevelIndex (as its sink); everything it cannot
 * decide comes here as before. Exists once the mount has started; off while tracing.
 */
export class FastPath implements TopLevelSink {
  /** Whether it was last switched on (the native side may still be off: out of memory). */
  private on = false;

  /**
   * `passthroughMin`: lower files at least this long are read by the kernel itself (FUSE
   * passthrough); -1: none. `hiddenDir`: where the overlay keeps libfuse's hidden files (the
   * native side removes those libfuse can no longer name when they are released).
   */
  constructor(private readonly thread: Buffer, dirs: { upperDir: string; lowerDir: string }, devs: [number, number], passthroughMin: number, hiddenDir?: string) {
    Fuse.fastPath.config(thread, dirs.upperDir, dirs.lowerDir, devs[0], devs[1], passthroughMin, hiddenDir, testLowerMax());
  }

  set(name: string, kind: keyof typeof KIND): void {
    Fuse.fastPath.set(this.thread, name, KIND[kind]);
  }

  delete(name: string): void {
    Fuse.fastPath.set(this.thread, name, -1);
  }

  /**
   * Empties the table and fills it again with the fast path off meanwhile: its requests come to
   * this thread, which answers them once the table is whole (an upper name missing from a
   * half-filled table would be answered ENOENT, and the kernel would keep that answer).
   */
  rebuild(fill: () => void): void {
    const on = this.on;
    if (on) this.enable(false);
    try {
      Fuse.fastPath.reset(this.thread);
      fill();
    } finally {
      if (on) this.enable(true);
    }
  }

  /** How long the reader polls the device for the next request before it sleeps (src/mount/poll.ts); 0: never. */
  poll(us: number): void {
    Fuse.fastPath.poll(this.thread, us);
  }

  /** Whether it answers lookups of the names it holds (it was switched on). */
  answering(): boolean {
    return this.on;
  }

  enable(on: boolean): void {
    this.on = on;
    Fuse.fastPath.enable(this.thread, on);
  }

  /** Makes the kernel list the root again; with `all`, every directory whose listing it keeps. */
  invalidate(all: boolean): void {
    Fuse.fastPath.invalidate(this.thread, all);
  }

  /**
   * Makes the kernel forget its entries for the top-level `names` (and what it keeps below
   * them): the object behind a name changed beside the mount, or a name it was told was missing
   * is valid now. Sent in order from one native thread of its own per call.
   */
  forget(names: readonly string[]): void {
    if (names.length > 0) Fuse.fastPath.forget(this.thread, names);
  }

  counters(): FastCounters {
    const values = Fuse.fastPath.counters(this.thread) ?? [];
    const out = {
      entries: values[COUNTERS.length] ?? 0,
      on: values[COUNTERS.length + 1] === 1,
      listedDirs: values[COUNTERS.length + 2] ?? 0,
    } as FastCounters;
    COUNTERS.forEach((name, i) => { out[name] = values[i] ?? 0; });
    return out;
  }
}
