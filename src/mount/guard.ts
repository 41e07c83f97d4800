import * as fs from 'node:fs';
import * as path from 'node:path';
import { MountConfig } from './config';
import { FILE_MODE } from '../util/own-files';

/**
 * The guard: a regular file named `.links` in the mount point itself (ROOT/nix/store, under the
 * mount), which the mount hides while it is up and which stays when it is down.
 *
 * Unmounted, ROOT is still a Nix store to Nix: an empty store dir beside a DB full of rows. A
 * `nix-store --store ROOT --verify` run there (a cron job after a reboot or a daemon crash,
 * before the mount) dropped every row ("disappeared, removing from database"), and a build
 * wrote its outputs into the bare mount point. Every Nix (2.8 and later alike) opens a local
 * store by creating the store dir's `.links` dir, before it reads the DB; with a file in the
 * way it stops there ("'ROOT/nix/store/.links' is not a directory"), and the file says why.
 */
export const GUARD_NAME = '.links';

/** Whether `name` in the mount point is the guard, or the empty `.links` dir an unguarded root got from Nix. */
export function isGuardOrNixLinks(storeDir: string, name: string): boolean {
  if (name !== GUARD_NAME) return false;
  const p = path.join(storeDir, name);
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  if (st === undefined) return false;
  if (st.isFile()) return true;
  return st.isDirectory() && fs.readdirSync(p).length === 0;
}

/** Puts the guard in the mount point (not mounted yet): replaces an empty `.links` dir, rewrites the file. */
export function placeGuard(storeDir: string, cfg: MountConfig): void {
  const p = path.join(storeDir, GUARD_NAME);
  if (fs.lstatSync(p, { throwIfNoEntry: false })?.isDirectory()) fs.rmdirSync(p);
  const mount = ['local-overlay mount', '--lower', cfg.lowerRoot, '--upper', cfg.upperDir, '--root', cfg.mergedRoot,
    ...(cfg.metadata === 'lazy' ? ['--metadata', 'lazy'] : [])].join(' ');
  // Written in place, not through a temp file beside it: a crash leaves at worst a short
  // guard, still a file in Nix's way, and nothing else in the mount point.
  fs.writeFileSync(p, [
    `${storeDir} is the mount point of a local-overlay merged store, and it is not mounted.`,
    'This file stops every Nix command on this root (Nix needs .links to be a directory), so that',
    'none takes the empty directory for an empty store and drops the rows of the DB beside it.',
    `Mount it: ${mount}`,
    '',
  ].join('\n'), { mode: FILE_MODE });
}
