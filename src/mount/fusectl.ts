import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { LocalOverlayError } from '../util/errno';
import { mountDevice } from './records';

/** Where the kernel's fusectl filesystem lists FUSE connections (Documentation/filesystems/fuse.rst). */
export const FUSECTL_DIR = '/sys/fs/fuse/connections';

/**
 * The fusectl name of the FUSE connection mounted at `storeDir`: the kernel names each
 * connection by its superblock's device number as a decimal dev_t (fs/fuse/control.c,
 * `fc->dev`), major << 20 | minor; mountinfo shows the same device as "major:minor".
 * Null when nothing is mounted there.
 */
export function connectionName(storeDir: string, mountinfo?: string): string | null {
  const dev = mountDevice(storeDir, mountinfo);
  return dev === null ? null : String(dev[0] * 2 ** 20 + dev[1]);
}

/**
 * Aborts the FUSE connection of the mount at `storeDir`, as `echo 1 > .../N/abort` does: every
 * request waiting on it fails at once (ECONNABORTED, "Software caused connection abort"), the
 * serving process's reads of the device end, and later requests fail with ENOTCONN until the
 * mount is detached. This frees a mount whose
 * daemon cannot answer or exit, which killing the daemon does not do while one of its threads
 * waits in the kernel (native-notes, "forget"). Needs root. Mounts fusectl when it is not
 * mounted, and unmounts it again after. Returns the connection's name.
 */
export function abortConnection(storeDir: string): string {
  const name = connectionName(storeDir);
  if (name === null) throw new LocalOverlayError('not-mounted', `${storeDir} is not mounted`);
  const mounted = fusectlMounted();
  if (!mounted) {
    try {
      execFileSync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], { stdio: 'pipe' });
    } catch (e) {
      throw new LocalOverlayError('abort-failed', `cannot mount fusectl at ${FUSECTL_DIR} to abort the connection of ${storeDir}: ${commandError(e)} (root is needed)`);
    }
  }
  try {
    fs.writeFileSync(`${FUSECTL_DIR}/${name}/abort`, '1');
  } catch (e) {
    throw new LocalOverlayError('abort-failed', `cannot abort FUSE connection ${name} of ${storeDir}: ${(e as Error).message}`);
  } finally {
    if (!mounted) {
      try { execFileSync('umount', [FUSECTL_DIR], { stdio: 'pipe' }); } catch { /* left mounted: harmless, and the next abort finds it */ }
    }
  }
  return name;
}

function fusectlMounted(): boolean {
  try {
    return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
      .some((l) => l.split(' ')[4] === FUSECTL_DIR && l.includes(' - fusectl '));
  } catch {
    return false;
  }
}

function commandError(e: unknown): string {
  const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
  return stderr || (e as Error).message;
}
