import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeDir, tightenDir, writeFileAtomic } from '../util/own-files';
import { canonicalPath, MountConfig, rootLayout } from './config';

/**
 * A running mount's own record, `<merged>/nix/var/local-overlay/daemon.json`: written once the
 * mount answers, removed when it ends. `unmount` and `status` find the daemon through it.
 */
export interface DaemonRecord {
  pid: number;
  startedAt: string;
  config: MountConfig;
  controlSocket: string;
  logFile: string | null;
}

export function recordPath(mergedRoot: string): string {
  return path.join(rootLayout(mergedRoot).stateDir, 'daemon.json');
}

export function controlSocketPath(mergedRoot: string): string {
  return path.join(rootLayout(mergedRoot).stateDir, 'control.sock');
}

/** Writes JSON atomically (a reader sees the old file or the new one, never half of one), mode 0644. */
function writeJson(file: string, value: unknown): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2));
}

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

/**
 * The machine-wide registry of running mounts: one file per mount naming its merged root, in
 * `$LOCAL_OVERLAY_RUN_DIR` (default /run/local-overlay, or a per-user dir in /tmp when /run is
 * not writable). `status` lists mounts from it, so a mount is found even when this process
 * cannot see it in its own mount table (another mount namespace).
 */
export function registryDir(): string {
  const env = process.env.LOCAL_OVERLAY_RUN_DIR;
  if (env) return env;
  try {
    fs.accessSync('/run', fs.constants.W_OK);
    return '/run/local-overlay';
  } catch {
    return path.join(os.tmpdir(), `local-overlay-${process.getuid?.() ?? 0}`);
  }
}

function registryEntry(mergedRoot: string): string {
  return path.join(registryDir(), `${createHash('sha256').update(mergedRoot).digest('hex').slice(0, 16)}.json`);
}

/**
 * The registry dir, made (or tightened, if an earlier version made it world-writable): 0755 in
 * /run, where every user's `status` reads it; 0700 and ours in /tmp, where anyone could have
 * made it first. Null when it is not safe to write.
 */
function ownRegistryDir(): string | null {
  const dir = registryDir();
  const shared = process.env.LOCAL_OVERLAY_RUN_DIR !== undefined || dir === '/run/local-overlay';
  const mode = shared ? 0o755 : 0o700;
  makeDir(dir, mode);
  tightenDir(dir, mode);
  const st = fs.lstatSync(dir);
  return st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o022) === 0 ? dir : null;
}

export function writeRecord(rec: DaemonRecord): void {
  writeJson(recordPath(rec.config.mergedRoot), rec);
  try {
    if (ownRegistryDir() !== null) writeJson(registryEntry(rec.config.mergedRoot), { mergedRoot: rec.config.mergedRoot, pid: rec.pid });
  } catch { /* the registry is a convenience; the record beside the mount is authoritative */ }
}

export function readRecord(mergedRoot: string): DaemonRecord | null {
  return readJson<DaemonRecord>(recordPath(mergedRoot));
}

/** The record of the daemon serving `mergedRoot`, only if its pid is that daemon (isDaemonOf). */
export function liveRecord(mergedRoot: string): DaemonRecord | null {
  const rec = readRecord(mergedRoot);
  return rec !== null && isDaemonOf(rec.pid, mergedRoot) ? rec : null;
}

export function removeRecord(mergedRoot: string): void {
  fs.rmSync(recordPath(mergedRoot), { force: true });
  fs.rmSync(registryEntry(mergedRoot), { force: true });
}

/** What a daemon that died without stopping (SIGKILL, a crash) left: its record and socket. */
export function removeLeftovers(mergedRoot: string): void {
  removeRecord(mergedRoot);
  fs.rmSync(controlSocketPath(mergedRoot), { force: true });
}

/**
 * Whether `mergedRoot`'s store dir is still mounted while no daemon of it runs (it was killed):
 * every access to the store then fails with "Transport endpoint is not connected".
 */
export function isStale(mergedRoot: string): boolean {
  return isMountPoint(rootLayout(mergedRoot).storeDir) && liveRecord(mergedRoot) === null;
}

/**
 * The merged root's lasting record, `<merged>/nix/var/local-overlay/config.json`: the layers it
 * was last mounted with and when. It stays after unmount, so `explain` and `verify` can read
 * the layers of a merged root that is not mounted.
 */
export interface RootConfig {
  config: MountConfig;
  mountedAt: string;
  /** The lower DB's highest row id when the mount started: higher ids appeared after it. */
  lowerMaxIdAtMount?: number;
}

export function configPath(mergedRoot: string): string {
  return path.join(rootLayout(mergedRoot).stateDir, 'config.json');
}

export function writeRootConfig(rc: RootConfig): void {
  writeJson(configPath(rc.config.mergedRoot), rc);
}

export function readRootConfig(mergedRoot: string): RootConfig | null {
  return readJson<RootConfig>(configPath(mergedRoot));
}

/** Whether `pid` runs (a zombie, which a container's init may never reap, does not). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return procState(`/proc/${pid}/stat`) !== 'Z';
  } catch {
    return true;
  }
}

/**
 * Whether `pid` is the daemon serving `mergedRoot`: a running node process whose command line
 * is this CLI's `mount --foreground ... --root ROOT`. A record only names a pid; the pid may
 * have been reused since, or the record written by someone else: nothing is signalled or
 * trusted on the record's word alone.
 */
export function isDaemonOf(pid: number, mergedRoot: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return false;
  let argv: string[];
  try {
    argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return false;
  }
  if (!/node/.test(path.basename(argv[0] ?? '')) || !argv.includes('mount') || !argv.includes('--foreground')) return false;
  let root: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--root') root = argv[i + 1];
    else if (argv[i].startsWith('--root=')) root = argv[i].slice('--root='.length);
  }
  if (root === undefined) return false;
  if (!root.startsWith('/')) {
    try { root = path.resolve(fs.readlinkSync(`/proc/${pid}/cwd`), root); } catch { return false; }
  }
  return canonicalPath(root) === canonicalPath(mergedRoot);
}

/**
 * The daemon of `mergedRoot` found by its command line among all processes (isDaemonOf), for
 * when neither daemon.json nor the control socket names it (its state dir removed or damaged).
 */
export function daemonByCommandLine(mergedRoot: string): number | null {
  for (const ent of fs.readdirSync('/proc')) {
    const pid = Number(ent);
    if (Number.isInteger(pid) && pid !== process.pid && isDaemonOf(pid, mergedRoot)) return pid;
  }
  return null;
}

/** The state letter (R, S, D, Z, T...) of a process or thread, from its `stat` file (throws if gone). */
export function procState(statFile: string): string {
  const stat = fs.readFileSync(statFile, 'utf8');
  const end = stat.lastIndexOf(')'); // the command name may hold spaces and parentheses
  return stat.slice(end + 2, end + 3);
}

/**
 * Where a daemon's threads wait, for an error about a daemon that does not exit or answer: its threads grouped by kernel wait
 * channel and name (`fuse_dev_do_read (lo-fuse)`: libfuse's workers reading requests;
 * `futex_do_wait (node)`: a lock, or Node's idle threads; `anon_pipe_read (node)`...).
 */
export function stuckWhere(pid: number): string {
  const where = new Map<string, number>();
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return 'its threads cannot be read';
  }
  for (const tid of tasks) {
    let w: string;
    try {
      const state = procState(`/proc/${pid}/task/${tid}/stat`);
      const chan = fs.readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8').trim();
      const name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      w = `${state === 'R' ? 'running' : chan === '0' || chan === '' ? state : chan} (${name})`;
    } catch {
      continue;
    }
    where.set(w, (where.get(w) ?? 0) + 1);
  }
  return `its ${tasks.length} threads: ${[...where].map(([w, n]) => `${n} ${w}`).join(', ')}`;
}

interface MountEntry { point: string; fsType: string; dev: [number, number] }

/** The mounts in a mountinfo file, in its order (a later one at a point is on top): octal escapes decoded. */
function mountEntries(mountinfo = '/proc/self/mountinfo'): MountEntry[] {
  let text = '';
  try { text = fs.readFileSync(mountinfo, 'utf8'); } catch { return []; }
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 10) continue;
    const [major, minor] = f[2]!.split(':').map(Number);
    out.push({ point: unescapeMount(f[4]!), fsType: f[f.indexOf('-') + 1]!, dev: [major!, minor!] });
  }
  return out;
}

/** Mount points from /proc/self/mountinfo, with their fs type. */
export function mountTable(): Map<string, string> {
  return new Map(mountEntries().map((e) => [e.point, e.fsType]));
}

/** `dir` as the mount table names it: its parent canonicalised, never itself (it may be a dead mount). */
function mountPointName(dir: string): string {
  const abs = path.resolve(dir);
  return path.join(canonicalPath(path.dirname(abs)), path.basename(abs));
}

/**
 * The mount point of the mount `p` is on (the longest mount point above it, the one on top;
 * symlinks resolved), or of its nearest existing ancestor when it does not exist yet: rename(2)
 * between two paths on different mounts fails with EXDEV, also for two bind mounts of one
 * filesystem (same st_dev). Null when the mount table cannot be read.
 */
export function mountPointOf(p: string): string | null {
  let d = path.resolve(p);
  while (!fs.existsSync(d) && d !== '/') d = path.dirname(d);
  const real = canonicalPath(d);
  let best: string | null = null;
  for (const e of mountEntries()) {
    const under = e.point === '/' || real === e.point || real.startsWith(`${e.point}/`);
    if (under && (best === null || e.point.length >= best.length)) best = e.point;
  }
  return best;
}

/**
 * The device (major, minor) of the filesystem mounted at `dir` (the last mount there, the one
 * on top); null when nothing is mounted there. Reads no file of the mount itself, so the
 * process serving it may call it.
 */
export function mountDevice(dir: string, mountinfo = '/proc/self/mountinfo'): [number, number] | null {
  const want = mountPointName(dir);
  return mountEntries(mountinfo).filter((e) => e.point === want).pop()?.dev ?? null;
}

/** A process in a mount namespace other than the daemon's, and whether anything shows it uses the merged root. */
export interface NamespaceUser { pid: number; comm: string; usesRoot: boolean }

/**
 * Processes in other mount namespaces that show at `storeDir` a local-overlay mount: an earlier
 * one than daemon `daemonPid` serves (`which` = 'earlier': dead once its daemon is gone,
 * "Transport endpoint is not connected"), or this very one ('current': `unmount` is about to
 * leave them a dead mount). Nix 2.8 run as root (a `nix-daemon --store ROOT`) unshares a mount
 * namespace at its start, and where mounts are private nothing mounted here later reaches it.
 * Each says whether it uses the root: its command line or environment names it, or its working
 * dir, root dir or an open file is inside it. Reads /proc only; kernel threads are skipped.
 */
export function otherNamespaceUsers(storeDir: string, daemonPid: number, which: 'earlier' | 'current'): NamespaceUser[] {
  const want = mountPointName(storeDir);
  const root = want.slice(0, -'/nix/store'.length) || '/';
  const ns = (pid: string | number): string => { try { return fs.readlinkSync(`/proc/${pid}/ns/mnt`); } catch { return ''; } };
  // The daemon's view, not this process's: `status` may run in another namespace.
  const ours = ns(daemonPid);
  const dev = mountDevice(storeDir, `/proc/${daemonPid}/mountinfo`);
  if (ours === '' || dev === null) return [];
  const seen = new Map<string, boolean>(); // namespace: whether it shows such a mount
  const users: NamespaceUser[] = [];
  const pids = fs.readdirSync('/proc').filter((p) => /^[0-9]+$/.test(p)).sort((a, b) => Number(a) - Number(b));
  for (const pid of pids) {
    if (pid === String(process.pid)) continue;
    const id = ns(pid);
    if (id === '' || id === ours) continue;
    let cmdline: Buffer;
    try { cmdline = fs.readFileSync(`/proc/${pid}/cmdline`); } catch { continue; }
    if (cmdline.length === 0) continue; // a kernel thread: in the first namespace whatever it holds
    let shows = seen.get(id);
    if (shows === undefined) {
      const top = mountEntries(`/proc/${pid}/mountinfo`).filter((e) => e.point === want).pop();
      const same = top !== undefined && top.dev[0] === dev[0] && top.dev[1] === dev[1];
      shows = top !== undefined && top.fsType === 'fuse.local-overlay' && (which === 'current' ? same : !same);
      seen.set(id, shows);
    }
    if (!shows) continue;
    let comm = '?';
    try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* gone */ }
    users.push({ pid: Number(pid), comm, usesRoot: usesPath(pid, cmdline, root) });
  }
  return users;
}

/** Whether process `pid` names `root` in its command line or environment, or has its cwd, root dir or an open file inside it. */
function usesPath(pid: string, cmdline: Buffer, root: string): boolean {
  const inside = (p: string): boolean => p === root || p.startsWith(`${root}/`);
  if (namesPath(cmdline, root)) return true;
  try { if (namesPath(fs.readFileSync(`/proc/${pid}/environ`), root)) return true; } catch { /* not ours to read */ }
  const link = (l: string): string => { try { return fs.readlinkSync(`/proc/${pid}/${l}`); } catch { return ''; } };
  if (inside(link('cwd')) || inside(link('root'))) return true;
  try { return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => inside(link(`fd/${fd}`))); } catch { return false; }
}

/** Whether `text` (NUL-separated words) names `root` or a path below it: `/r` in `--store /r` or `X=/r/y`, not in `/r-other`. */
function namesPath(text: Buffer, root: string): boolean {
  for (let i = text.indexOf(root); i >= 0; i = text.indexOf(root, i + 1)) {
    const next = text[i + root.length];
    if (next === undefined || next === 0 || next === 0x2f /* / */ || next === 0x3a /* : */ || next === 0x20 || next === 0x0a) return true;
  }
  return false;
}

const listed = (users: readonly NamespaceUser[]): string =>
  users.slice(0, 5).map((u) => `${u.pid} (${u.comm})`).join(', ') + (users.length > 5 ? `, and ${users.length - 5} more` : '');

/** What to say of processes that still see an earlier mount of the store dir than daemon `daemonPid` serves (otherNamespaceUsers), or null. */
export function staleMountWarning(storeDir: string, daemonPid: number): string | null {
  const users = otherNamespaceUsers(storeDir, daemonPid, 'earlier');
  if (users.length === 0) return null;
  const using = users.filter((u) => u.usesRoot);
  const root = storeDir.slice(0, -'/nix/store'.length) || '/';
  if (using.length > 0) {
    const others = users.length - using.length;
    return `${using.length === 1 ? 'a process that uses' : `${using.length} processes that use`} ${root} ${using.length === 1 ? 'sees' : 'see'} an earlier mount of ${storeDir}, dead since it was unmounted, in a mount namespace of ${using.length === 1 ? 'its' : 'their'} own: ${listed(using)}. `
      + `Restart ${using.length === 1 ? 'it' : 'them'} (a nix-daemon run as root takes a namespace of its own at start)${others > 0 ? `; ${others} other${others === 1 ? '' : 's'} there show${others === 1 ? 's' : ''} no use of it` : ''}`;
  }
  return `${users.length === 1 ? 'a process sees' : `${users.length} processes see`} an earlier, dead mount of ${storeDir} in a mount namespace of ${users.length === 1 ? 'its' : 'their'} own (${listed(users)}); nothing shows ${users.length === 1 ? 'it uses' : 'they use'} ${root}, but one that does (a nix-daemon serving it, which took its namespace at start) needs a restart`;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** The filesystem type of what is mounted on top at `dir` (`fuse.local-overlay` for ours), or null. */
export function mountType(dir: string): string | null {
  const want = mountPointName(dir);
  return mountEntries().filter((e) => e.point === want).pop()?.fsType ?? null;
}

/** Whether `dir` is a mount point. */
export function isMountPoint(dir: string): boolean {
  return mountTable().has(mountPointName(dir));
}

/** Merged roots (with a config.json) whose store dir is a FUSE mount that no daemon serves. */
export function staleRoots(): string[] {
  const out: string[] = [];
  for (const [mnt, type] of mountTable()) {
    if (!type.startsWith('fuse') || !mnt.endsWith('/nix/store')) continue;
    const root = mnt.slice(0, -'/nix/store'.length) || '/';
    if (readRootConfig(root) !== null && liveRecord(root) === null) out.push(root);
  }
  return out;
}

/** Every running mount: from the registry, and from FUSE mounts in this mount table. */
export function runningRecords(): DaemonRecord[] {
  const roots = new Set<string>();
  try {
    for (const f of fs.readdirSync(registryDir())) {
      const entry = readJson<{ mergedRoot: string; pid: number }>(path.join(registryDir(), f));
      if (entry && isDaemonOf(entry.pid, entry.mergedRoot)) roots.add(entry.mergedRoot);
      else if (entry) fs.rmSync(path.join(registryDir(), f), { force: true }); // a daemon that died
    }
  } catch { /* no registry yet */ }
  for (const [mnt, type] of mountTable()) {
    if (type.startsWith('fuse') && mnt.endsWith('/nix/store')) roots.add(mnt.slice(0, -'/nix/store'.length) || '/');
  }
  const out: DaemonRecord[] = [];
  for (const root of roots) {
    const rec = readRecord(root);
    if (rec && isDaemonOf(rec.pid, root)) out.push(rec);
  }
  return out;
}
