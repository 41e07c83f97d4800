import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { LocalOverlayError } from '../util/errno';
import { NIX_SCHEMA_VERSION } from '../metadata/schema';
import { canonicalPath, MountConfig, rootLayout } from './config';
import { isGuardOrNixLinks } from './guard';
import { configPath, isMountPoint, liveRecord, mountPointOf, readRootConfig, runningRecords } from './records';

const fail = (code: string, msg: string): never => { throw new LocalOverlayError(code, msg); };

/** `inner` is `outer` or lies below it (after resolving symlinks of the existing part). */
function within(inner: string, outer: string): boolean {
  const a = canonicalPath(inner), b = canonicalPath(outer);
  return a === b || a.startsWith(b.endsWith('/') ? b : b + '/');
}


function isDir(p: string): boolean {
  return fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/**
 * Checks everything a mount needs before anything is created, so a refused mount leaves
 * nothing behind. Each problem is one LocalOverlayError naming it.
 */
export function validateMount(cfg: MountConfig): void {
  const lower = rootLayout(cfg.lowerRoot);
  if (!fs.existsSync(cfg.lowerRoot)) fail('lower-missing', `lower root ${cfg.lowerRoot} does not exist`);
  if (!isDir(cfg.lowerRoot)) fail('lower-not-dir', `lower root ${cfg.lowerRoot} is not a directory`);
  if (!isDir(lower.storeDir)) {
    const above = storeDirParent(cfg.lowerRoot);
    fail('lower-no-store', `lower root ${cfg.lowerRoot} has no store directory (${lower.storeDir})${above !== null && isDir(path.join(above, 'nix/var/nix/db')) ? `: the lower root is the dir above nix/store (did you mean --lower ${above}?)` : ''}`);
  }
  if (!fs.existsSync(lower.dbFile)) fail('lower-no-db', `lower root ${cfg.lowerRoot} has no Nix database (${lower.dbFile})`);
  checkSchema(lower.dbDir, 'lower');
  checkSqlite(lower.dbFile, 'lower');

  for (const [name, p] of [['upper dir', cfg.upperDir], ['work dir', cfg.workDir], ['merged root', cfg.mergedRoot]] as const) {
    if (within(p, cfg.lowerRoot)) fail('inside-lower', `${name} ${p} is inside the lower root ${cfg.lowerRoot}, which is never written`);
    if (within(cfg.lowerRoot, p)) fail('contains-lower', `${name} ${p} contains the lower root ${cfg.lowerRoot}`);
  }
  if (within(cfg.upperDir, cfg.workDir) || within(cfg.workDir, cfg.upperDir)) {
    fail('work-upper-overlap', `work dir ${cfg.workDir} and upper dir ${cfg.upperDir} must not contain each other`);
  }
  checkSameLayers(cfg);
  const mergedAbove = storeDirParent(cfg.mergedRoot);
  if (mergedAbove !== null && readRootConfig(cfg.mergedRoot) === null) {
    fail('merged-is-store-dir', `merged root ${cfg.mergedRoot} is a store dir: the merged root is the dir above nix/store, where the store is mounted at ROOT/nix/store (did you mean --root ${mergedAbove}?)`);
  }
  for (const [name, p] of [['upper dir', cfg.upperDir], ['work dir', cfg.workDir]] as const) {
    const other = mergedRootAbove(p);
    if (other !== null) fail(`${name.split(' ')[0]}-in-merged-store`, `${name} ${p} is inside the store dir of the merged root ${other}, which its mount hides (and which must stay empty while it is not mounted)`);
  }
  const [upperDev, workDev] = [nearestDev(cfg.upperDir), nearestDev(cfg.workDir)];
  if (upperDev !== workDev || mountPointOf(cfg.upperDir) !== mountPointOf(cfg.workDir)) {
    fail('work-other-fs', `work dir ${cfg.workDir} must be on the same filesystem as the upper dir ${cfg.upperDir}, and on the same mount of it (objects are moved between them by rename, which fails across mounts, bind mounts of one filesystem included)`);
  }
  const merged = rootLayout(cfg.mergedRoot);
  if (within(merged.storeDir, cfg.upperDir) || within(cfg.upperDir, merged.storeDir)) {
    fail('upper-merged-overlap', `upper dir ${cfg.upperDir} and the merged store dir ${merged.storeDir} must be separate`);
  }
  if (fs.existsSync(cfg.upperDir) && !isDir(cfg.upperDir)) fail('upper-not-dir', `upper dir ${cfg.upperDir} is not a directory`);
  if (fs.existsSync(cfg.workDir) && !isDir(cfg.workDir)) fail('work-not-dir', `work dir ${cfg.workDir} is not a directory`);
  if (fs.existsSync(cfg.mergedRoot) && !isDir(cfg.mergedRoot)) fail('merged-not-dir', `merged root ${cfg.mergedRoot} is not a directory`);
  for (const [code, name, dir] of [['upper-', 'upper dir', cfg.upperDir], ['work-', 'work dir', cfg.workDir], ['merged-', 'merged store dir', merged.storeDir],
    ['merged-', 'merged DB dir', merged.dbDir], ['merged-', 'merged state dir', merged.stateDir], ['log-', 'log dir', cfg.logFile ? path.dirname(cfg.logFile) : null]] as const) {
    if (dir !== null) checkCanMake(`${code}cannot-make`, name, dir);
  }
  // The mount point may be read-only (the guard then warns); what the daemon writes may not.
  for (const [code, name, dir] of [['upper-', 'upper dir', cfg.upperDir], ['work-', 'work dir', cfg.workDir], ['merged-', 'merged DB dir', merged.dbDir], ['merged-', 'merged state dir', merged.stateDir]] as const) {
    checkWritable(`${code}not-writable`, name, dir);
  }

  if (isMountPoint(merged.storeDir)) {
    const rec = liveRecord(cfg.mergedRoot);
    if (rec === null) {
      fail('mountpoint-busy', `${merged.storeDir} is already a mount point (busy), and no daemon serves it (stale): run \`local-overlay unmount ${cfg.mergedRoot}\` first`);
    } else {
      fail('mountpoint-busy', `${merged.storeDir} is already mounted: local-overlay daemon ${rec.pid} serves it (\`local-overlay status ${cfg.mergedRoot}\`)`);
    }
  }
  if (fs.existsSync(merged.storeDir)) {
    if (!isDir(merged.storeDir)) fail('mountpoint-not-dir', `mount point ${merged.storeDir} is not a directory`);
    const others = fs.readdirSync(merged.storeDir).filter((n) => !isGuardOrNixLinks(merged.storeDir, n));
    if (others.length > 0) {
      const shown = others.slice(0, 5).join(', ') + (others.length > 5 ? `, and ${others.length - 5} more` : '');
      fail('mountpoint-not-empty', `mount point ${merged.storeDir} is not empty (${shown}): if Nix wrote them while the root was not mounted, they are not in the merged store; move them away and mount again`);
    }
  }
  if (fs.existsSync(merged.dbFile)) {
    checkSchema(merged.dbDir, 'merged');
    checkSqlite(merged.dbFile, 'merged');
  }
  // The upper layer is exact only while one mount writes it.
  for (const rec of runningRecords()) {
    if (canonicalPath(rec.config.upperDir) === canonicalPath(cfg.upperDir) && rec.config.mergedRoot !== cfg.mergedRoot) {
      fail('upper-in-use', `upper dir ${cfg.upperDir} is in use by the mount at ${rec.config.mergedRoot} (pid ${rec.pid})`);
    }
  }

  checkFuse();
}

/**
 * A merged root stays with the layers it was made with. Its DB holds the lower store's rows
 * (all of them in mirror mode, the closures looked up in lazy mode), and over another lower
 * store Nix would take them for valid paths whose files are not there. No flag overrides this:
 * dropping the rows that neither layer serves would also break the closures of upper objects
 * built on them, so a correct DB needs a new root. Its DB also lists the objects its upper dir
 * holds: over another upper dir Nix's next verify or GC deletes their rows and roots (a typo in
 * --upper cost a rooted output that way). A moved upper dir is mounted again once config.json,
 * which records the old path, is removed.
 */
function checkSameLayers(cfg: MountConfig): void {
  const rc = readRootConfig(cfg.mergedRoot);
  if (rc === null) return;
  if (canonicalPath(rc.config.lowerRoot) !== canonicalPath(cfg.lowerRoot)) {
    fail('lower-changed', `merged root ${cfg.mergedRoot} was made over the lower root ${rc.config.lowerRoot} (recorded in ${configPath(cfg.mergedRoot)}), not ${cfg.lowerRoot}: its DB holds the rows of that lower store's paths. Mount ${cfg.lowerRoot} with a new --root, or restore ${rc.config.lowerRoot} and mount that again`);
  }
  if (canonicalPath(rc.config.upperDir) !== canonicalPath(cfg.upperDir)) {
    fail('upper-changed', `merged root ${cfg.mergedRoot} was made with the upper dir ${rc.config.upperDir} (recorded in ${configPath(cfg.mergedRoot)}), not ${cfg.upperDir}: its DB lists the objects that dir holds, and Nix would drop them. Mount with --upper ${rc.config.upperDir}, or a new --root; if you moved the upper dir to ${cfg.upperDir}, remove ${configPath(cfg.mergedRoot)} first`);
  }
}

/** X when `p` is X/nix/store; else null. */
function storeDirParent(p: string): string | null {
  const abs = path.resolve(p);
  return abs.endsWith('/nix/store') ? abs.slice(0, -'/nix/store'.length) || '/' : null;
}

/** The merged root (it has a config.json) whose store dir holds `p`; null if none does. */
function mergedRootAbove(p: string): string | null {
  const abs = path.resolve(p);
  for (let i = abs.indexOf('/nix/store/'); i >= 0; i = abs.indexOf('/nix/store/', i + 1)) {
    const root = abs.slice(0, i) || '/';
    if (readRootConfig(root) !== null) return root;
  }
  return null;
}

/** The device of `p`, or of its nearest existing ancestor (where it would be made). */
function nearestDev(p: string): number {
  for (let d = path.resolve(p); ; d = path.dirname(d)) {
    let st: fs.Stats | undefined;
    try { st = fs.statSync(d, { throwIfNoEntry: false }); } catch { st = undefined; } // ENOTDIR: checkCanMake says so
    if (st !== undefined || d === '/') return st?.dev ?? -1;
  }
}

/** `dir`, or the nearest existing dir above it (where it would be made), must be writable. */
function checkWritable(code: string, name: string, dir: string): void {
  for (let p = path.resolve(dir); ; p = path.dirname(p)) {
    if (!fs.existsSync(p)) { if (p === '/') return; continue; }
    try {
      fs.accessSync(p, fs.constants.W_OK);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'EROFS' ? 'is on a read-only filesystem' : 'is not writable by this user';
      fail(code, p === path.resolve(dir) ? `${name} ${dir} ${why}` : `${name} ${dir} cannot be made: ${p} ${why}`);
    }
    return;
  }
}

/** `dir` exists as a directory, or can be made: the nearest existing path above it is a directory. */
function checkCanMake(code: string, name: string, dir: string): void {
  for (let p = path.resolve(dir); ; p = path.dirname(p)) {
    let st: fs.Stats | undefined;
    try { st = fs.statSync(p, { throwIfNoEntry: false }); } catch { st = undefined; } // ENOTDIR: a file above
    if (st === undefined) { if (p === '/') return; continue; }
    if (!st.isDirectory()) fail(code, p === path.resolve(dir) ? `${name} ${dir} is not a directory` : `${name} ${dir} cannot be made: ${p} is not a directory`);
    return;
  }
}

/** A Nix DB file must be SQLite's: its first 16 bytes say so. Read only, so the lower DB is not touched. */
function checkSqlite(file: string, which: string): void {
  let head: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      head = Buffer.alloc(16);
      head = head.subarray(0, fs.readSync(fd, head, 0, 16, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    return fail(`${which}-db-unreadable`, `the ${which} Nix database ${file} cannot be read: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (head.toString('latin1') !== 'SQLite format 3\0') {
    fail(`${which}-db-not-sqlite`, `the ${which} Nix database ${file} is not a SQLite database (${head.length < 16 ? `${head.length} bytes long` : 'its header is not SQLite\'s'})`);
  }
}

function checkSchema(dbDir: string, which: string): void {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dbDir, 'schema'), 'utf8').trim();
  } catch {
    return fail('schema-missing', `the ${which} Nix database in ${dbDir} has no schema file`);
  }
  if (text !== String(NIX_SCHEMA_VERSION)) {
    fail('schema-version', `the ${which} Nix database in ${dbDir} has schema version ${text}; local-overlay supports version ${NIX_SCHEMA_VERSION} (Nix 2.x)`);
  }
}

/** /dev/fuse, fusermount and libfuse.so.2 (loaded by fuse-native), checked before mounting. */
export function checkFuse(): void {
  const dev = fs.statSync('/dev/fuse', { throwIfNoEntry: false });
  if (!dev || !dev.isCharacterDevice()) fail('no-dev-fuse', '/dev/fuse is missing: load the fuse kernel module or pass the device into the container (--device /dev/fuse)');
  try {
    fs.accessSync('/dev/fuse', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    const st = fs.statSync('/dev/fuse');
    fail('dev-fuse-access', `/dev/fuse (mode ${(st.mode & 0o777).toString(8)}, group ${st.gid}) is not readable and writable by this user (uid ${process.getuid?.() ?? '?'}): mount as root (a merged store serves Nix's build users, so root is the usual case), or give this user read and write on /dev/fuse (Debian's fuse3 makes it 0666)`);
  }
  try {
    execFileSync('sh', ['-c', 'command -v fusermount || command -v fusermount3'], { stdio: 'pipe' });
  } catch {
    fail('no-fusermount', 'fusermount is not on PATH: install fuse3 (Debian) or fuse');
  }
  try {
    require('fuse-native');
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (/libfuse\.so\.2/.test(msg)) fail('no-libfuse', 'libfuse.so.2 cannot be loaded: install libfuse2 (Debian: apt-get install libfuse2)');
    fail('fuse-native', `the FUSE binding (fuse-native) cannot be loaded: ${msg.split('\n')[0]}`);
  }
}
