import * as fs from 'node:fs';
import { E, Errno, toErrno } from '../util/errno';
import { InodeMap, ROOT_INO } from '../layers/inodes';
import { Layer, LayerDirs, TopLevelIndex, WHITEOUT_PREFIX } from '../layers/layers';
import { OverlayStats } from './stats';

/** The attributes the FUSE adapter hands to the kernel (times in ms since the epoch). */
export interface Attr {
  mode: number; uid: number; gid: number; size: number; dev: number; nlink: number;
  ino: number; rdev: number; blksize: number; blocks: number;
  atime: number; mtime: number; ctime: number;
  /** Nanoseconds below the millisecond (0..999999) of each time, for full precision. */
  atimeNsRem: number; mtimeNsRem: number; ctimeNsRem: number;
}

export interface StatFs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
  files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
}

/** Where a merged path lives: its layer and its real path in that layer (or the work dir). */
interface Located { layer: Layer; real: string; top: string }

/** Hooks the metadata module attaches; all optional. */
export interface OverlayHooks {
  /**
   * Called when a lookup resolves a top-level name to the lower layer. A returned promise
   * delays the lookup's answer until it settles (lazy closure copy into the upper DB).
   */
  lowerLookup?: (name: string) => Promise<void> | null;
  /** Whether lower object `name` needs no lowerLookup any more (its closure is in the DB). */
  lowerSettled?: (name: string) => boolean;
  /** Called after the upper layer lost a top-level object (delete or rename away). */
  upperRemoved?: (name: string) => void;
  /** Called after the upper layer gained a top-level object. */
  upperAdded?: (name: string) => void;
  /** Called when a change to a lower object (top-level name given) was refused. */
  lowerWriteRefused?: (name: string) => void;
}

const O_ACCMODE = 3;
const { O_RDONLY, O_TRUNC, O_CREAT, O_RDWR, O_NOFOLLOW, O_EXCL, O_DIRECT } = fs.constants;
const NAME_MAX = 255;
/** libfuse 2.9's name for an unlinked-but-open file: `.fuse_hidden` + node id and counter in hex. */
const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/;
const UINT32 = 2 ** 32;
const MS = 1_000_000n;

/**
 * The merged store directory as plain operations: each takes merged paths (as FUSE gives
 * them: absolute, `/` being the store root) and returns a value or an Errno. No FUSE here.
 *
 * Semantics (DESIGN.md "The filesystem"):
 * - `/` is the only merged directory; `/NAME/...` is served wholly by the layer of NAME.
 * - Anything that would change a lower object fails with EROFS; nothing is copied up.
 * - New top-level names are created in the upper layer; removing a top-level name removes
 *   only its upper copy (a lower object of the same name shows again).
 * - The names libfuse gives to unlinked-but-open files in the root or an upper object
 *   (`.fuse_hidden` + 16 hex digits, by rename only) live in the work dir, never in the
 *   store, so Nix's GC and directory listings do not see them. Any other name, and any name
 *   inside a lower object, is an ordinary name.
 * - No top-level `.wh.*` name can be made through the mount: in the upper dir it would be a
 *   whiteout once the index is read again.
 * - A name that reached JavaScript with U+FFFD in it was not valid UTF-8 (fuse-native decodes
 *   paths as UTF-8), and its bytes are lost: EILSEQ, never a near-miss file.
 * - Paths are resolved inside a layer without following symlinks on the last component; the
 *   kernel resolves symlinks itself in the merged namespace.
 */
export class Overlay {
  readonly index: TopLevelIndex;
  readonly stats = new OverlayStats();
  hooks: OverlayHooks = {};
  /** The device numbers of the upper and lower dirs (computed inode numbers need them). */
  readonly layerDevs: [number, number];
  private readonly inodes: InodeMap;
  private readonly fdLayer = new Map<number, Layer>();
  private readonly upperDir: string;
  private readonly lowerDir: string;
  /** Where libfuse's names for unlinked-but-open files live (`hidden`). */
  readonly hiddenDir: string;

  constructor(readonly dirs: LayerDirs, opts: { negativeTtlMs?: number } = {}) {
    this.upperDir = dirs.upperDir;
    this.lowerDir = dirs.lowerDir;
    this.hiddenDir = `${dirs.workDir}/hidden`;
    fs.mkdirSync(this.hiddenDir, { recursive: true, mode: 0o700 });
    this.index = new TopLevelIndex(dirs, opts.negativeTtlMs ?? 1000);
    this.layerDevs = [fs.statSync(dirs.upperDir).dev, fs.statSync(dirs.lowerDir).dev];
    this.inodes = new InodeMap(this.layerDevs);
  }

  /** Drops every cache: the upper index is re-read and lower answers are forgotten. */
  refresh(): void {
    this.index.refresh();
  }

  // ---- resolution -------------------------------------------------------------------------

  /** The top-level name of a merged path (`/NAME/...` → NAME), '' for the root. */
  static topName(path: string): string {
    const slash = path.indexOf('/', 1);
    return slash < 0 ? path.slice(1) : path.slice(1, slash);
  }

  private locate(path: string): Located | Errno {
    if (hasDotComponent(path)) return E.ENOENT;
    if (path.includes(REPLACEMENT)) return E.EILSEQ;
    const top = Overlay.topName(path);
    const hidden = this.hidden(path);
    if (hidden !== null) return { layer: Layer.Upper, real: hidden, top };
    const layer = this.index.resolve(top);
    if (layer === null) {
      this.stats.count('miss');
      return E.ENOENT;
    }
    this.stats.count(layer === Layer.Upper ? 'upper' : 'lower');
    return { layer, real: (layer === Layer.Upper ? this.upperDir : this.lowerDir) + path, top };
  }

  /**
   * Where a new entry at `path` goes: its real upper path. The parent must be the root or an
   * upper object; a top-level name already visible from the lower layer is EEXIST.
   */
  private locateNew(path: string): string | Errno {
    if (basename(path).length > NAME_MAX) return E.ENAMETOOLONG;
    if (path.includes(REPLACEMENT)) return E.EILSEQ;
    const top = Overlay.topName(path);
    if (top.length === path.length - 1) {
      if (top.startsWith(WHITEOUT_PREFIX) || isHiddenName(path)) return this.forbidden('create', path);
      if (this.index.upperKind(top) === 'object' || this.index.resolve(top) === Layer.Lower) return E.EEXIST;
      return this.upperDir + path;
    }
    const layer = this.index.resolve(top);
    if (layer === null) return E.ENOENT;
    if (layer === Layer.Lower) return this.refused('create', path);
    // libfuse only renames to its hidden names; a file made under one would share the work dir's.
    if (isHiddenName(path)) return this.forbidden('create', path);
    return this.upperDir + path;
  }

  /**
   * The work-dir path of libfuse's name for an unlinked-but-open file in the root or an upper
   * object; null for any other name (inside a lower object, such a name is the object's own).
   */
  private hidden(path: string): string | null {
    if (!isHiddenName(path)) return null;
    const top = Overlay.topName(path);
    if (top.length !== path.length - 1 && this.index.resolve(top) !== Layer.Upper) return null;
    return `${this.hiddenDir}/${basename(path)}`;
  }

  /**
   * The real path of an existing entry that is about to be changed: EROFS on the lower layer.
   * The store root's attributes are the upper dir's (rootAttr): Nix with build users makes its
   * store dir root:nixbld, mode 1775, and refuses a store where it cannot.
   */
  private locateWritable(path: string, op: string): Located | Errno {
    if (path === '/') return { layer: Layer.Upper, real: this.upperDir, top: '' };
    const loc = this.locate(path);
    if (typeof loc === 'number') return loc;
    if (loc.layer === Layer.Lower) return this.refused(op, path);
    return loc;
  }

  private refused(op: string, path: string, errno: Errno = E.EROFS): Errno {
    this.stats.count('refused');
    this.stats.trace?.('refuse', path, op);
    this.index.unsettle(Overlay.topName(path));
    this.hooks.lowerWriteRefused?.(Overlay.topName(path));
    return errno;
  }

  /** EPERM for a name the mount does not let anyone make (not a lower object's refusal). */
  private forbidden(op: string, path: string): Errno {
    this.stats.count('refused');
    this.stats.trace?.('refuse', path, op);
    return E.EPERM;
  }

  /** Records a new top-level upper object (clearing a whiteout that had the name). */
  private created(path: string): void {
    const top = Overlay.topName(path);
    if (top.length === path.length - 1 && !isHiddenName(path)) {
      this.index.upperAdded(top);
      this.hooks.upperAdded?.(top);
    }
  }

  private removedTop(path: string): void {
    const top = Overlay.topName(path);
    if (top.length === path.length - 1 && !isHiddenName(path)) {
      this.index.upperRemoved(top);
      this.hooks.upperRemoved?.(top);
    }
  }

  /** Top-level names both layers have (the upper copy is served). */
  duplicates(): Set<string> {
    const out = new Set<string>();
    for (const [name, kind] of this.index.upperEntries()) if (kind === 'object' && this.index.lowerHas(name)) out.add(name);
    return out;
  }

  /**
   * The inode number the mount gives top-level upper entry `name` (with use_ino, the number the
   * kernel's FUSE inode carries, e.g. in /proc/locks), from an lstat of the upper file, not of
   * the mount; null when the upper layer has no such entry.
   */
  upperIno(name: string): number | null {
    if (this.index.upperKind(name) !== 'object') return null;
    const st = fs.lstatSync(`${this.upperDir}/${name}`, { throwIfNoEntry: false });
    return st === undefined ? null : this.inodes.ino(Layer.Upper, st.dev, st.ino);
  }

  /** When `path` is a top-level lower object, the pending closure copy its lookup must await. */
  lowerLookupPending(path: string): Promise<void> | null {
    const hook = this.hooks.lowerLookup;
    if (!hook || path.indexOf('/', 1) >= 0 || path.length < 2) return null;
    const top = path.slice(1);
    if (this.index.upperKind(top) !== undefined || !this.index.lowerHas(top)) return null;
    return hook(top);
  }

  /**
   * A lookup of `path` has been answered successfully, after any closure copy it awaited: a
   * top-level lower object whose row the merged DB now has is settled (TopLevelIndex.lowerServed);
   * one without a row (its files came before its lower DB row) is asked about again.
   */
  lookupServed(path: string): void {
    if (path.indexOf('/', 1) >= 0 || path.length < 2) return;
    const top = path.slice(1);
    if (this.index.resolve(top) !== Layer.Lower) return;
    if (this.hooks.lowerSettled === undefined || this.hooks.lowerSettled(top)) this.index.lowerServed(top);
  }

  // ---- attributes -------------------------------------------------------------------------

  getattr(path: string): Attr | Errno {
    if (path === '/') return this.rootAttr();
    if (path.length > NAME_MAX / 3 && Buffer.byteLength(basename(path)) > NAME_MAX) return E.ENAMETOOLONG; // bytes, not UTF-16 units
    const loc = this.locate(path);
    if (this.stats.trace !== undefined && path.indexOf('/', 1) < 0) {
      this.stats.trace('resolve', path, typeof loc === 'number' ? `absent (${this.index.reason(path.slice(1))})` : `${loc.layer === Layer.Upper ? 'upper' : 'lower'} (${this.index.reason(path.slice(1))})`);
    }
    if (typeof loc === 'number') return loc;
    if (loc.layer === Layer.Upper) {
      // The upper layer is exact, to the nanosecond (a BigInt stat costs ~25% more).
      const big = fs.lstatSync(loc.real, { throwIfNoEntry: false, bigint: true });
      return big === undefined ? E.ENOENT : this.attrBig(big);
    }
    const st = fs.lstatSync(loc.real, { throwIfNoEntry: false });
    if (st === undefined) return E.ENOENT;
    return this.attr(loc.layer, st);
  }

  fgetattr(path: string, fd: number): Attr | Errno {
    const layer = this.fdLayer.get(fd);
    if (layer === undefined) return this.getattr(path);
    try {
      return layer === Layer.Upper ? this.attrBig(fs.fstatSync(fd, { bigint: true })) : this.attr(layer, fs.fstatSync(fd));
    } catch (err) {
      return toErrno(err);
    }
  }

  private rootAttr(): Attr | Errno {
    try {
      const a = this.attrBig(fs.statSync(this.upperDir, { bigint: true }));
      a.ino = ROOT_INO;
      return a;
    } catch (err) {
      return toErrno(err);
    }
  }

  /** Lower attributes: times to the microsecond (store objects have mtime 1 s anyway). */
  private attr(layer: Layer, st: fs.Stats): Attr {
    const a = Math.floor(st.atimeMs), m = Math.floor(st.mtimeMs), c = Math.floor(st.ctimeMs);
    return {
      mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, dev: 0, nlink: st.nlink,
      ino: this.inodes.ino(layer, st.dev, st.ino), rdev: st.rdev, blksize: st.blksize,
      blocks: st.blocks, atime: a, mtime: m, ctime: c,
      atimeNsRem: Math.round((st.atimeMs - a) * 1e6) % 1e6,
      mtimeNsRem: Math.round((st.mtimeMs - m) * 1e6) % 1e6,
      ctimeNsRem: Math.round((st.ctimeMs - c) * 1e6) % 1e6,
    };
  }

  private attrBig(st: fs.BigIntStats): Attr {
    return {
      mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), dev: 0,
      nlink: Number(st.nlink), ino: this.inodes.ino(Layer.Upper, Number(st.dev), Number(st.ino)),
      rdev: Number(st.rdev), blksize: Number(st.blksize), blocks: Number(st.blocks),
      atime: Number(st.atimeNs / MS), mtime: Number(st.mtimeNs / MS), ctime: Number(st.ctimeNs / MS),
      atimeNsRem: Number(st.atimeNs % MS), mtimeNsRem: Number(st.mtimeNs % MS), ctimeNsRem: Number(st.ctimeNs % MS),
    };
  }

  access(path: string, mode: number): Errno {
    if (path === '/') return tryOp(() => fs.accessSync(this.upperDir, mode));
    const loc = this.locate(path);
    if (typeof loc === 'number') return loc;
    if (loc.layer === Layer.Lower && (mode & fs.constants.W_OK)) return E.EROFS;
    return tryOp(() => fs.accessSync(loc.real, mode));
  }

  readlink(path: string): string | Errno {
    const loc = this.locate(path);
    if (typeof loc === 'number') return loc;
    try {
      return fs.readlinkSync(loc.real);
    } catch (err) {
      return toErrno(err);
    }
  }

  statfs(): StatFs | Errno {
    try {
      const s = fs.statfsSync(this.upperDir);
      // fuse-native carries block counts in 32 bits: scale the block size up until they fit.
      let bsize = s.bsize, blocks = s.blocks, bfree = s.bfree, bavail = s.bavail;
      while (blocks >= UINT32) { bsize *= 2; blocks = Math.floor(blocks / 2); bfree = Math.floor(bfree / 2); bavail = Math.floor(bavail / 2); }
      const files = Math.min(s.files, UINT32 - 1), ffree = Math.min(s.ffree, UINT32 - 1);
      return { bsize, frsize: bsize, blocks, bfree, bavail, files, ffree, favail: ffree, fsid: 0, flag: 0, namemax: NAME_MAX };
    } catch (err) {
      return toErrno(err);
    }
  }

  // ---- directories ------------------------------------------------------------------------

  readdir(path: string): string[] | Errno {
    if (path === '/') return ['.', '..', ...this.index.listRoot()];
    const loc = this.locate(path);
    if (typeof loc === 'number') return loc;
    try {
      return ['.', '..', ...fs.readdirSync(loc.real)];
    } catch (err) {
      return toErrno(err);
    }
  }

  mkdir(path: string, mode: number): Errno {
    return this.makeEntry(path, (real) => fs.mkdirSync(real, mode & 0o7777));
  }

  rmdir(path: string): Errno {
    return this.removeEntry(path, 'rmdir', (real) => fs.rmdirSync(real));
  }

  /** A new upper entry at `path`: placed (locateNew), made, and recorded if top-level. */
  private makeEntry(path: string, make: (real: string) => void): Errno {
    const real = this.locateNew(path);
    if (typeof real === 'number') return real;
    const cleared = this.index.clearWhiteout(Overlay.topName(path));
    const err = tryOp(() => make(real));
    if (err === 0) this.created(path);
    else if (cleared) this.index.restoreWhiteout(Overlay.topName(path));
    return err;
  }

  /** Removes an upper entry; a top-level one may uncover a lower object of that name. */
  private removeEntry(path: string, op: string, remove: (real: string) => void): Errno {
    const loc = this.locateWritable(path, op);
    if (typeof loc === 'number') return loc;
    const err = tryOp(() => remove(loc.real));
    if (err === 0) this.removedTop(path);
    return err;
  }

  // ---- files ------------------------------------------------------------------------------

  /** Opens an existing entry; returns a file descriptor, or a negative errno. */
  open(path: string, flags: number): number {
    const loc = this.locate(path);
    if (typeof loc === 'number') return -loc;
    // O_APPEND without write access writes nothing: a read-only filesystem allows it.
    const writes = (flags & O_ACCMODE) !== O_RDONLY || (flags & O_TRUNC) !== 0;
    if (loc.layer === Layer.Lower && writes) return -this.refused('open for writing', path);
    return this.openReal(loc.layer, loc.real, (flags & ~(O_CREAT | O_EXCL)) | O_NOFOLLOW);
  }

  /** Creates and opens a file (`flags` as open(2) got them); returns an fd or a negative errno. */
  create(path: string, mode: number, flags = O_RDWR): number {
    const real = this.locateNew(path);
    if (typeof real === 'number') return -real;
    const cleared = this.index.clearWhiteout(Overlay.topName(path));
    const fd = this.openReal(Layer.Upper, real, flags | O_CREAT | O_NOFOLLOW, mode & 0o7777);
    if (fd >= 0) this.created(path);
    else if (cleared) this.index.restoreWhiteout(Overlay.topName(path));
    return fd;
  }

  /**
   * O_DIRECT stays with the kernel (native/fastpath.c LO_OPEN_DROPPED): the file is read and
   * written here with fuse-native's buffers, which are not aligned as O_DIRECT requires, so
   * every read and write failed with EINVAL; the kernel still bypasses its page cache for the
   * caller.
   */
  private openReal(layer: Layer, real: string, flags: number, mode?: number): number {
    try {
      const fd = fs.openSync(real, flags & ~O_DIRECT, mode);
      this.fdLayer.set(fd, layer);
      return fd;
    } catch (err) {
      return -toErrno(err);
    }
  }

  /** Reads into `buf`; returns the byte count or a negative errno. */
  read(fd: number, buf: Buffer, len: number, pos: number): number {
    try {
      return fs.readSync(fd, buf, 0, len, pos);
    } catch (err) {
      return -toErrno(err);
    }
  }

  write(fd: number, buf: Buffer, len: number, pos: number): number {
    try {
      return fs.writeSync(fd, buf, 0, len, pos);
    } catch (err) {
      return -toErrno(err);
    }
  }

  release(fd: number): Errno {
    this.fdLayer.delete(fd);
    return tryOp(() => fs.closeSync(fd));
  }

  fsync(fd: number, datasync: boolean): Errno {
    return tryOp(() => (datasync ? fs.fdatasyncSync(fd) : fs.fsyncSync(fd)));
  }

  truncate(path: string, size: number): Errno {
    const loc = this.locateWritable(path, 'truncate');
    if (typeof loc === 'number') return loc;
    return tryOp(() => fs.truncateSync(loc.real, size));
  }

  ftruncate(path: string, fd: number, size: number): Errno {
    if (this.fdLayer.get(fd) === Layer.Lower) return this.refused('ftruncate', path);
    return tryOp(() => fs.ftruncateSync(fd, size));
  }

  unlink(path: string): Errno {
    return this.removeEntry(path, 'unlink', (real) => fs.unlinkSync(real));
  }

  /**
   * Special files (fifos, sockets, devices): EROFS in a lower object; elsewhere EPERM, since a
   * store object holds only files, dirs and symlinks (a NAR has nothing else). libfuse makes
   * regular files through `create`.
   */
  mknod(path: string): Errno {
    const real = this.locateNew(path);
    if (typeof real === 'number') return real;
    return this.forbidden('mknod', path);
  }

  symlink(target: string, path: string): Errno {
    return this.makeEntry(path, (real) => fs.symlinkSync(target, real));
  }

  /**
   * Hard links stay inside the upper layer; nothing is copied up. Linking a lower file fails
   * with EPERM, on which Nix's build (linkOrCopy) falls back to copying, except into `.links`,
   * where it is ENOSPC, on which `nix-store --optimise` skips the file instead of aborting.
   */
  link(src: string, dst: string): Errno {
    const from = this.locate(src);
    if (typeof from === 'number') return from;
    if (from.layer === Layer.Lower) {
      return this.refused('link', src, dst.startsWith('/.links/') ? E.ENOSPC : E.EPERM);
    }
    return this.makeEntry(dst, (to) => fs.linkSync(from.real, to));
  }

  /**
   * Renames within the upper layer. Replacing a top-level name that only the lower layer has
   * would store the object twice, so it is EROFS; replacing an upper copy is an ordinary rename.
   */
  rename(src: string, dst: string): Errno {
    const from = this.locateWritable(src, 'rename');
    if (typeof from === 'number') return from;
    let to: string;
    let clearedTop: string | null = null;
    const hidden = this.hidden(dst);
    if (hidden !== null) {
      to = hidden;
    } else {
      if (basename(dst).length > NAME_MAX) return E.ENAMETOOLONG;
      if (dst.includes(REPLACEMENT)) return E.EILSEQ;
      const top = Overlay.topName(dst);
      const isTop = top.length === dst.length - 1;
      const kind = this.index.upperKind(top);
      if (isTop) {
        if (top.startsWith(WHITEOUT_PREFIX)) return this.forbidden('rename to', dst);
        // `nix-store --optimise` replaces a file by renaming a `.tmp-link-*` over it; over a lower
        // object that is EMLINK, on which it skips the file.
        const errno = Overlay.topName(src).startsWith('.tmp-link-') ? E.EMLINK : E.EROFS;
        if (kind !== 'object' && this.index.resolve(top) === Layer.Lower) return this.refused('rename over', dst, errno);
        clearedTop = this.index.clearWhiteout(top) ? top : null;
      } else {
        const layer = this.index.resolve(top);
        if (layer === null) return E.ENOENT;
        if (layer === Layer.Lower) return this.refused('rename into', dst, Overlay.topName(src).startsWith('.tmp-link-') ? E.EMLINK : E.EROFS);
      }
      to = this.upperDir + dst;
    }
    const err = tryOp(() => fs.renameSync(from.real, to));
    if (err === 0) {
      this.removedTop(src);
      this.created(dst);
    } else if (clearedTop !== null) {
      this.index.restoreWhiteout(clearedTop);
    }
    return err;
  }

  chmod(path: string, mode: number): Errno {
    if (this.optimiserToggle(path, mode)) return 0;
    const loc = this.locateWritable(path, 'chmod');
    if (typeof loc === 'number') return loc;
    return tryOp(() => fs.chmodSync(loc.real, mode & 0o7777));
  }

  /**
   * Whether `chmod(path, mode)` is Nix's optimiser making a lower directory writable before it
   * replaces a file in it (`nix-store --optimise`, auto-optimise-store): owner write added to a
   * directory of a lower object, nothing else changed. Nix takes a failure there for fatal and
   * ends the whole run; the replacement that follows fails with EMLINK (rename), on which it
   * skips the file. So that chmod is answered as done, and the directory stays as it is, as it
   * would in effect: nothing can be written into it.
   */
  private optimiserToggle(path: string, mode: number): boolean {
    if (path === '/') return false;
    const loc = this.locate(path);
    if (typeof loc === 'number' || loc.layer !== Layer.Lower) return false;
    const st = fs.lstatSync(loc.real, { throwIfNoEntry: false });
    return st !== undefined && st.isDirectory() && (mode & 0o7777) === ((st.mode & 0o7777) | 0o200);
  }

  chown(path: string, uid: number, gid: number): Errno {
    const loc = this.locateWritable(path, 'chown');
    if (typeof loc === 'number') return loc;
    return tryOp(() => fs.lchownSync(loc.real, uid, gid));
  }

  /** setxattr/removexattr: a lower object cannot change; the store keeps no xattrs at all. */
  changeXattr(path: string): Errno {
    const loc = this.locateWritable(path, 'setxattr');
    if (typeof loc === 'number') return loc;
    return E.ENOTSUP;
  }

  /** Times in ms since the epoch; `undefined` leaves that time as it is (UTIME_OMIT). */
  utimens(path: string, atimeMs: number | undefined, mtimeMs: number | undefined): Errno {
    const loc = this.locateWritable(path, 'utimens');
    if (typeof loc === 'number') return loc;
    try {
      let a = atimeMs, m = mtimeMs;
      if (a === undefined || m === undefined) {
        const st = fs.lstatSync(loc.real);
        a ??= st.atimeMs;
        m ??= st.mtimeMs;
      }
      fs.lutimesSync(loc.real, a / 1000, m / 1000);
      return 0;
    } catch (err) {
      return toErrno(err);
    }
  }
}

function tryOp(f: () => void): Errno {
  try {
    f();
    return 0;
  } catch (err) {
    return toErrno(err);
  }
}

/** A `.` or `..` component (libfuse never sends one; a name like `..x` is an ordinary name). */
function hasDotComponent(path: string): boolean {
  return path.includes('/../') || path.endsWith('/..') || path.includes('/./') || path.endsWith('/.');
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Whether the last component of `path` is a name libfuse gives an unlinked-but-open file (HIDDEN_NAME). */
function isHiddenName(path: string): boolean {
  const at = path.lastIndexOf('/') + 1;
  return path.length - at === 28 && path.charCodeAt(at) === 46 /* . */ && HIDDEN_NAME.test(path.slice(at));
}

/** What UTF-8 decoding puts in place of bytes that are not UTF-8. */
const REPLACEMENT = '\uFFFD';
