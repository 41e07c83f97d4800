import Fuse = require('fuse-native');
import { Attr, Overlay } from '../overlay/overlay';
import { FastCounters, FastPath } from './fast-path';
import { PASSTHROUGH_MIN_BYTES } from '../mount/config';
import { E, Errno } from '../util/errno';
import { log } from '../util/log';

/**
 * Kernel and libfuse options of the mount, and why (see native-notes/ for each one):
 * - use_ino: the kernel shows our stable inode numbers (layers/inodes.ts), not libfuse's.
 * - entry_timeout long: names of store objects never change meaning; changes through the
 *   mount update the kernel's entries themselves. negative_timeout short: the lower store grows.
 * - attr_timeout bounded (default 60 s), auto_cache with the same ac_attr_timeout: libfuse 2's
 *   path-based API gives each name of a hard-linked upper file its own kernel inode, so a
 *   change through one name reaches the others' attributes and page cache only when theirs
 *   expire. Lower files never change, so their page cache survives opens all the same.
 * - big_writes, max_write: writes arrive in 128 KiB requests instead of 4 KiB.
 * - allow_other + default_permissions: builders and test suites switch users; the kernel
 *   checks POSIX permissions.
 * - nonempty: the mount point holds the guard file (mount/guard.ts), which libfuse 2 would
 *   take for a reason to refuse; validate.ts lets nothing else be there.
 * fuse-native 2.2.6 passes only some of these itself, so the adapter builds the list.
 */
export interface MountOptions {
  entryTimeout: number;
  /** Also libfuse's ac_attr_timeout (auto_cache): how stale another name of an upper hard link can be. */
  attrTimeout: number;
  negativeTimeout: number;
  debug?: boolean;
}

export const DEFAULT_MOUNT_OPTIONS: MountOptions = { entryTimeout: 86400, attrTimeout: 60, negativeTimeout: 1 };

/**
 * fuse-native arms a 15 s timer for every request, answering ETIMEDOUT if the callback has not
 * run: a timer set and cleared per operation (~2% of the daemon's CPU in a cold walk). Every
 * operation here answers synchronously except getattr, which may wait for a closure copy
 * (it fails after 10 s without progress: closure-pieces.ts), so only getattr keeps the safety
 * net. A copy that goes on longer (a huge closure under a busy lower store) answers ETIMEDOUT
 * rather than a path Nix calls invalid; the copy goes on, and the next lookup waits for it.
 */
function timeouts(ops: Record<string, unknown>): Record<string, number | false> {
  const t: Record<string, number | false> = {};
  for (const name of Object.keys(ops)) t[name] = false;
  t.getattr = 15_000;
  return t;
}

class StoreFuse extends Fuse {
  constructor(mnt: string, ops: Record<string, (...args: any[]) => void>, private readonly mo: MountOptions) {
    super(mnt, ops, { force: false, mkdir: false, timeout: timeouts(ops) });
  }

  override _fuseOptions(): string {
    const o = [
      'fsname=local-overlay', 'subtype=local-overlay', 'allow_other', 'default_permissions', 'nonempty',
      'use_ino', 'auto_cache', 'big_writes', 'max_write=131072', 'max_read=131072',
      `entry_timeout=${this.mo.entryTimeout}`, `attr_timeout=${this.mo.attrTimeout}`, `ac_attr_timeout=${this.mo.attrTimeout}`,
      `negative_timeout=${this.mo.negativeTimeout}`,
    ];
    if (this.mo.debug) o.push('debug');
    return '-o' + o.join(',');
  }
}

type Cb = (...args: any[]) => void;

/** Answers a callback with a value-or-Errno result: errno becomes `cb(-errno)`. */
function reply<T>(cb: Cb, r: T | Errno): void {
  if (typeof r === 'number') cb(r === 0 ? 0 : -r);
  else cb(0, r);
}

function unexpected(op: string, path: string, err: unknown): number {
  log.error(`${op} ${path}: unexpected error: ${err instanceof Error ? err.stack : String(err)}`);
  return -E.EIO;
}

/**
 * The FUSE adapter: translates fuse-native callbacks to Overlay calls and results to
 * `cb(0, x)` / `cb(-errno)`. It holds no filesystem logic. Anything thrown becomes EIO and is
 * logged; the daemon never dies of an I/O error.
 */
export function fuseOps(ov: Overlay): Record<string, Cb> {
  const s = ov.stats;
  const guard = (op: string, f: (...args: any[]) => void): Cb =>
    (...args: any[]) => {
      s.op(op);
      try {
        f(...args);
      } catch (err) {
        args[args.length - 1](unexpected(op, String(args[0]), err));
      }
    };

  return {
    init: (cb: Cb) => cb(0),
    getattr: guard('getattr', (path: string, cb: Cb) => {
      const answer = (): void => {
        const a = ov.getattr(path);
        reply<Attr>(cb, a);
        if (typeof a !== 'number') ov.lookupServed(path);
      };
      const pending = ov.lowerLookupPending(path);
      if (pending === null) return answer();
      // Outside `guard` once deferred: a throw here (a layer's EIO) must still answer.
      const answerLater = (): void => {
        try {
          answer();
        } catch (err) {
          cb(unexpected('getattr', path, err));
        }
      };
      pending.then(
        answerLater,
        (err) => {
          log.warn(`closure sync for ${path} failed, answering the lookup anyway: ${String(err)}`);
          answerLater();
        });
    }),
    fgetattr: guard('fgetattr', (path: string, fd: number, cb: Cb) => reply(cb, ov.fgetattr(path, fd))),
    access: guard('access', (path: string, mode: number, cb: Cb) => reply(cb, ov.access(path, mode))),
    statfs: guard('statfs', (_path: string, cb: Cb) => reply(cb, ov.statfs())),
    // The patched binding passes a null path for unlinked-but-open handles (native-notes/).
    readdir: guard('readdir', (path: string | null, cb: Cb) => (path === null ? cb(-E.ENOENT) : reply(cb, ov.readdir(path)))),
    readlink: guard('readlink', (path: string, cb: Cb) => reply(cb, ov.readlink(path))),
    open: guard('open', (path: string, flags: number, cb: Cb) => {
      const fd = ov.open(path, flags);
      if (fd < 0) cb(fd);
      else cb(0, fd);
    }),
    // The patched binding passes the open flags (native-notes/); the stock one does not.
    create: guard('create', (path: string, mode: number, flagsOrCb: number | Cb, maybeCb?: Cb) => {
      const cb = (typeof flagsOrCb === 'function' ? flagsOrCb : maybeCb) as Cb;
      const fd = ov.create(path, mode, typeof flagsOrCb === 'number' ? flagsOrCb : undefined);
      if (fd < 0) cb(fd);
      else cb(0, fd);
    }),
    // read and write answer with the byte count (or a negative errno) as the first argument.
    read: (_path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => cb(ov.read(fd, buf, len, pos)),
    write: (_path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => cb(ov.write(fd, buf, len, pos)),
    release: guard('release', (_path: string, fd: number, cb: Cb) => reply(cb, ov.release(fd))),
    // No flush op: writes reach the layer synchronously, so close(2) has nothing to report,
    // and after one ENOSYS the kernel stops sending FLUSH: one round trip less per close.
    fsync: guard('fsync', (_path: string, datasync: boolean | number, fd: number, cb: Cb) => reply(cb, ov.fsync(fd, !!datasync))),
    truncate: guard('truncate', (path: string, size: number, cb: Cb) => reply(cb, ov.truncate(path, size))),
    ftruncate: guard('ftruncate', (path: string, fd: number, size: number, cb: Cb) => reply(cb, ov.ftruncate(path, fd, size))),
    unlink: guard('unlink', (path: string, cb: Cb) => reply(cb, ov.unlink(path))),
    rename: guard('rename', (src: string, dst: string, cb: Cb) => reply(cb, ov.rename(src, dst))),
    link: guard('link', (src: string, dst: string, cb: Cb) => reply(cb, ov.link(src, dst))),
    mknod: guard('mknod', (path: string, _mode: number, _dev: number, cb: Cb) => reply(cb, ov.mknod(path))),
    symlink: guard('symlink', (target: string, path: string, cb: Cb) => reply(cb, ov.symlink(target, path))),
    mkdir: guard('mkdir', (path: string, mode: number, cb: Cb) => reply(cb, ov.mkdir(path, mode))),
    rmdir: guard('rmdir', (path: string, cb: Cb) => reply(cb, ov.rmdir(path))),
    chmod: guard('chmod', (path: string, mode: number, cb: Cb) => reply(cb, ov.chmod(path, mode))),
    chown: guard('chown', (path: string, uid: number, gid: number, cb: Cb) => reply(cb, ov.chown(path, uid, gid))),
    // Only the changing xattr ops exist (lower: EROFS, upper: ENOTSUP). getxattr and listxattr
    // stay unimplemented: the kernel then stops asking after one ENOSYS (store objects carry
    // no xattrs), which saves a round trip per `ls -l` entry.
    setxattr: guard('setxattr', (path: string, _name: string, _value: Buffer, _pos: number, _flags: number, cb: Cb) => reply(cb, ov.changeXattr(path))),
    removexattr: guard('removexattr', (path: string, _name: string, cb: Cb) => reply(cb, ov.changeXattr(path))),
    utimens: guard('utimens', (path: string, atime: unknown, mtime: unknown, cb: Cb) =>
      reply(cb, ov.utimens(path, timeArg(atime), timeArg(mtime)))),
  };
}

/**
 * utimens times from the patched binding: milliseconds, or a marker for UTIME_NOW / UTIME_OMIT
 * (see native-notes/). `undefined` means "leave as is".
 */
function timeArg(t: unknown): number | undefined {
  if (t === 'now') return Date.now();
  if (t === 'omit') return undefined;
  return typeof t === 'number' ? t : Date.now();
}

/**
 * Ends the process with `code` within `ms` ms, even if its ordinary exit waits for threads
 * that wait on a layer which stopped answering (native/fastpath.c, "the exit deadline").
 */
export function exitWithin(ms: number, code: number): void {
  Fuse.exitAfter(ms, code);
}

export class FuseMount {
  private fuse: StoreFuse;
  private fast: FastPath | null = null;
  private fastWanted: boolean;

  /**
   * `fastPath`: whether the native fast path (fast-path.ts) serves what it can. `passthrough`:
   * whether lower files are read by the kernel itself where it can (FUSE passthrough).
   */
  constructor(readonly mountpoint: string, private readonly ov: Overlay, mo: MountOptions = DEFAULT_MOUNT_OPTIONS, fastPath = true, private readonly passthrough = false) {
    const ops = fuseOps(ov);
    // libfuse calls init before it answers the kernel's INIT: the native side must know the
    // layers by then, to ask the kernel for passthrough (and before any open is answered).
    ops.init = (cb: Cb) => {
      this.startFastPath();
      cb(0);
    };
    this.fuse = new StoreFuse(mountpoint, ops, mo);
    this.fastWanted = fastPath;
  }

  async mount(): Promise<void> {
    await new Promise<void>((resolve, reject) => this.fuse.mount((err) => (err ? reject(err) : resolve())));
    this.startFastPath();
  }

  private startFastPath(): void {
    if (this.fast !== null) return;
    if (this.fuse._thread === null) throw new Error('fuse-native mounted without its native state');
    this.fast = new FastPath(this.fuse._thread, this.ov.dirs, this.ov.layerDevs, this.passthrough ? PASSTHROUGH_MIN_BYTES : -1, this.ov.hiddenDir);
    this.ov.index.attach(this.fast);
    this.fast.enable(this.fastWanted);
  }

  /** How long the reader polls /dev/fuse for the next request before it sleeps (src/mount/poll.ts); 0: never. */
  setPoll(us: number): void {
    this.fast?.poll(us);
  }

  /** Switches the native fast path on or off (off while tracing: every request then reaches JS). */
  setFastPath(on: boolean): void {
    this.fastWanted = on;
    this.fast?.enable(on);
  }

  /**
   * Makes the kernel list the store root again (the lower store changed beside the mount); with
   * `all`, every directory whose listing it keeps (after `refresh`).
   */
  invalidateListings(all: boolean): void {
    this.fast?.invalidate(all);
  }

  /**
   * Makes the kernel look the top-level `names` up again on their next use, with fresh
   * attributes: the object behind one changed beside the mount (daemon.ts dropUpper), or one it
   * was told was missing is valid now (the follower imported it).
   */
  forgetEntries(names: readonly string[]): void {
    this.fast?.forget(names);
  }

  /** The fast path's counters (`on`: whether it is answering now), or null before the mount. */
  fastCounters(): FastCounters | null {
    return this.fast ? this.fast.counters() : null;
  }

  unmount(): Promise<void> {
    return new Promise((resolve, reject) => this.fuse.unmount((err) => (err ? reject(err) : resolve())));
  }
}
