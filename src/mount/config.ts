import * as fs from 'node:fs';
import * as path from 'node:path';
import { MetadataMode } from '../metadata/metadata';

/**
 * `p` absolute, with symlinks resolved as far as it exists (the rest appended): the form the
 * kernel's mount table and a daemon's command line use. Never call it on a path inside a mount
 * (realpath would look things up there).
 */
export function canonicalPath(p: string): string {
  let head = path.resolve(p);
  const tail: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(head), ...tail.reverse());
    } catch {
      const parent = path.dirname(head);
      if (parent === head) return path.resolve(p);
      tail.push(path.basename(head));
      head = parent;
    }
  }
}

/** Everything a mount needs, with every path absolute (and canonical: canonicalPath). */
export interface MountConfig {
  lowerRoot: string;
  upperDir: string;
  workDir: string;
  mergedRoot: string;
  metadata: MetadataMode;
  logFile?: string;
  followIntervalMs: number;
  negativeTimeoutS: number;
  attrTimeoutS: number;
  /** Whether the native fast path serves what it can (off while tracing regardless). */
  fastPath: boolean;
  /** Whether the kernel reads lower files itself (FUSE passthrough, where the kernel has it). */
  passthrough: boolean;
  /** µs the reader polls /dev/fuse before it sleeps (src/mount/poll.ts); absent: the default there. */
  pollUs?: number;
  /** Trace from the start to this file (see Tracer); off when absent. */
  traceFile?: string;
  tracePrefix?: string;
}

/**
 * Lower files at least this long are read with FUSE passthrough (the kernel reads the lower
 * file itself: no READ reaches the daemon, the data is cached once). 128 KiB is the largest
 * READ, so smaller files take one READ when cold; passthrough for them too made cold reads
 * faster (1.12× instead of 0.98× fuse-overlayfs) but warm reads slower (0.81× instead of
 * 0.92×: each open also opens a backing file in the kernel). bench/README.md.
 */
export const PASSTHROUGH_MIN_BYTES = 128 * 1024;

/** What `mount --metadata lazy` says (on its stderr and in the log): README, "Garbage collection". */
export const LAZY_GC_WARNING = 'lazy metadata: plain Nix asks its DB before the filesystem, so a lower path is valid to it only once a lookup copied its closure: adding or building a path the lower store has fails with EROFS (Nix tries to replace it), and its GC would delete lower objects. For plain Nix use --metadata mirror, or copy first with `local-overlay sync`';

/** The layout Nix expects below a root given as `--store ROOT`. */
export interface RootLayout {
  storeDir: string;
  dbDir: string;
  dbFile: string;
  stateDir: string;
  gcRootsDir: string;
}

export function rootLayout(root: string): RootLayout {
  const dbDir = path.join(root, 'nix/var/nix/db');
  return {
    storeDir: path.join(root, 'nix/store'),
    dbDir,
    dbFile: path.join(dbDir, 'db.sqlite'),
    stateDir: path.join(root, 'nix/var/local-overlay'),
    gcRootsDir: path.join(root, 'nix/var/nix/gcroots'),
  };
}

/** The default work dir: `work` beside the upper dir, on the same filesystem in practice. */
export function defaultWorkDir(upperDir: string): string {
  return path.join(path.dirname(upperDir), `${path.basename(upperDir)}.work`);
}
