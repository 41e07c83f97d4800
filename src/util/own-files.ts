import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Modes of the files the daemon and the CLI make for themselves (records, stamps, the log, the
 * merged DB's `schema` file, lock files, the registry). The daemon runs with umask 0, because
 * the filesystem operations must create exactly the modes FUSE passes (the kernel applied the
 * caller's umask already): so every file of its own is given its mode here, never by default
 * (which would be 0666 / 0777 and let any local user edit daemon.json).
 */
export const FILE_MODE = 0o644;
export const DIR_MODE = 0o755;
/** Nix's lock files (gc.lock, big-lock) are opened with 0600. */
export const LOCK_MODE = 0o600;

/** mkdir -p with `mode` for every directory it creates (existing ones are left as they are). */
export function makeDir(dir: string, mode = DIR_MODE): void {
  fs.mkdirSync(dir, { recursive: true, mode });
}

/**
 * Writes `data` to `file` atomically (a reader sees the old file or the new one) with `mode`.
 * The temp file is created afresh (O_EXCL): one left behind, or planted, is removed first, so
 * the new file is never someone else's file or a symlink to one.
 */
export function writeFileAtomic(file: string, data: string, mode = FILE_MODE): void {
  makeDir(path.dirname(file));
  const tmp = `${file}.tmp`;
  fs.rmSync(tmp, { force: true });
  fs.writeFileSync(tmp, data, { mode, flag: 'wx' });
  fs.renameSync(tmp, file);
}

/** Creates `file` empty with `mode` if it does not exist (an existing file keeps its mode). */
export function touchFile(file: string, mode = FILE_MODE): void {
  fs.closeSync(fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_WRONLY, mode));
}

/**
 * A directory of ours that an earlier version created group- or world-writable: tightened to
 * `mode`, if this user owns it (anyone else's is left alone).
 */
export function tightenDir(dir: string, mode = DIR_MODE): void {
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (st?.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o777 & ~mode) !== 0) {
    try { fs.chmodSync(dir, mode); } catch { /* not ours after all */ }
  }
}

/** Deletes a tree, making its directories writable first (store objects are read-only: 0555). */
export async function removeTree(p: string): Promise<void> {
  const st = await fs.promises.lstat(p).catch(() => null);
  if (st === null) return;
  if (st.isDirectory()) {
    await fs.promises.chmod(p, (st.mode & 0o7777) | 0o700);
    for (const name of await fs.promises.readdir(p)) await removeTree(path.join(p, name));
    await fs.promises.rmdir(p);
  } else {
    await fs.promises.unlink(p);
  }
}
