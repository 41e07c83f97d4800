import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, REPO, check, run, sleep } from './exec';
import { isMounted, processAlive, register, unregister } from './mounts';

export const PEER_NAMES = ['native', 'kernel', 'fuse-overlayfs', 'fuse-overlayfs-tuned', 'local-overlay'] as const;
export type PeerName = (typeof PEER_NAMES)[number];

/** Short column labels for tables. */
export const PEER_LABEL: Record<PeerName, string> = {
  native: 'native', kernel: 'kernel', 'fuse-overlayfs': 'fuse-ovl', 'fuse-overlayfs-tuned': 'fuse-ovl tuned', 'local-overlay': 'local-overlay',
};

/**
 * One filesystem under test, presented as a Nix chroot root: `root/nix/store` is the mount,
 * `root/nix/var/nix/db` a DB that knows every lower path (a copy of the lower DB for the
 * peers; local-overlay's own mirrored DB for local-overlay), so `nix-store --store root`
 * works on every peer alike.
 */
export interface Peer {
  readonly name: PeerName;
  readonly root: string;
  readonly store: string;
  /** False for the read-only native bind: the write workload skips it. */
  readonly writable: boolean;
  /** The FUSE daemon serving the mount, when there is one. */
  pid(): number | null;
  mount(): Promise<void>;
  unmount(): Promise<void>;
}

export interface PeerContext {
  /** The lower root: store dir LOWER/nix/store, DB dir LOWER/nix/var/nix/db. */
  lowerRoot: string;
  /** A private directory for this peer (root, upper, work). */
  dir: string;
}

function lowerStore(ctx: PeerContext): string {
  return path.join(ctx.lowerRoot, 'nix/store');
}

/** Creates dir/root/nix/store and (for peers without a DB of their own) a copy of the lower DB dir. */
async function prepareRoot(ctx: PeerContext, copyDb: boolean): Promise<string> {
  const root = path.join(ctx.dir, 'root');
  fs.mkdirSync(path.join(root, 'nix/store'), { recursive: true });
  if (copyDb) {
    fs.mkdirSync(path.join(root, 'nix/var/nix'), { recursive: true });
    await check('cp', ['-a', path.join(ctx.lowerRoot, 'nix/var/nix/db'), path.join(root, 'nix/var/nix/')]);
  }
  return root;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs: number, early?: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return;
    const why = early?.();
    if (why) throw new Error(`${what}: ${why}`);
    if (Date.now() > deadline) throw new Error(`${what}: timed out after ${timeoutMs} ms`);
    await sleep(20);
  }
}

async function umount(mountpoint: string): Promise<void> {
  if (!isMounted(mountpoint)) return;
  for (let i = 0; i < 50; i++) {
    const r = await run('umount', [mountpoint]);
    if (r.code === 0 || !isMounted(mountpoint)) return;
    await sleep(100); // EBUSY: a process we ran may still hold a cwd there for a moment
  }
  await check('umount', ['-l', mountpoint]);
}

/** The lower store dir as is, bind-mounted read-only: the upper bound for every overlay. */
class NativePeer implements Peer {
  readonly name = 'native' as const;
  readonly writable = false;
  readonly store: string;

  constructor(private readonly ctx: PeerContext, readonly root: string) {
    this.store = path.join(root, 'nix/store');
  }

  pid(): null { return null; }

  async mount(): Promise<void> {
    register(this.store, null);
    await check('mount', ['--bind', lowerStore(this.ctx), this.store]);
    await check('mount', ['-o', 'remount,ro,bind', this.store]);
  }

  async unmount(): Promise<void> {
    await umount(this.store);
    unregister(this.store);
  }
}

/** Kernel OverlayFS over the lower store dir with its own upper and work dirs. */
class KernelPeer implements Peer {
  readonly name = 'kernel' as const;
  readonly writable = true;
  readonly store: string;

  constructor(private readonly ctx: PeerContext, readonly root: string) {
    this.store = path.join(root, 'nix/store');
  }

  pid(): null { return null; }

  async mount(): Promise<void> {
    const upper = path.join(this.ctx.dir, 'upper');
    const work = path.join(this.ctx.dir, 'work');
    fs.mkdirSync(upper, { recursive: true });
    fs.mkdirSync(work, { recursive: true });
    register(this.store, null);
    await check('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowerStore(this.ctx)},upperdir=${upper},workdir=${work}`, this.store]);
  }

  async unmount(): Promise<void> {
    await umount(this.store);
    unregister(this.store);
  }
}

/** fuse-overlayfs in the foreground (its own process, our child), default or tuned options. */
class FuseOverlayfsPeer implements Peer {
  readonly writable = true;
  readonly store: string;
  private child: ChildProcess | null = null;

  constructor(readonly name: 'fuse-overlayfs' | 'fuse-overlayfs-tuned', private readonly ctx: PeerContext, readonly root: string) {
    this.store = path.join(root, 'nix/store');
  }

  pid(): number | null { return this.child?.pid ?? null; }

  async mount(): Promise<void> {
    const upper = path.join(this.ctx.dir, 'upper');
    const work = path.join(this.ctx.dir, 'work');
    fs.mkdirSync(upper, { recursive: true });
    fs.mkdirSync(work, { recursive: true });
    const opts = [`lowerdir=${lowerStore(this.ctx)}`, `upperdir=${upper}`, `workdir=${work}`];
    if (this.name === 'fuse-overlayfs-tuned') opts.push('noxattrs=1', 'static_nlink');
    const child = spawn('fuse-overlayfs', ['-f', '-o', opts.join(','), this.store], { stdio: 'ignore' });
    this.child = child;
    let exited: string | null = null;
    child.on('exit', (code, sig) => { exited = `fuse-overlayfs exited (${code ?? sig})`; });
    register(this.store, child.pid ?? null);
    await waitFor(`mount ${this.name}`, () => isMounted(this.store), 10_000, () => exited);
  }

  async unmount(): Promise<void> {
    await umount(this.store);
    const pid = this.child?.pid;
    if (pid !== undefined) {
      await waitFor(`${this.name} exit`, () => !processAlive(pid), 10_000).catch(() => {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      });
    }
    this.child = null;
    unregister(this.store);
  }
}

/** The product: a daemon started with the built CLI, mirror metadata (what plain Nix needs). */
class LocalOverlayPeer implements Peer {
  readonly name = 'local-overlay' as const;
  readonly writable = true;
  readonly store: string;
  private daemonPid: number | null = null;

  constructor(private readonly ctx: PeerContext, readonly root: string) {
    this.store = path.join(root, 'nix/store');
  }

  pid(): number | null { return this.daemonPid; }

  async mount(): Promise<void> {
    register(this.store, null);
    const out = await check(process.execPath, [CLI, 'mount', '--lower', this.ctx.lowerRoot,
      '--upper', path.join(this.ctx.dir, 'upper'), '--work', path.join(this.ctx.dir, 'work'),
      '--root', this.root, '--metadata', 'mirror'], { timeoutMs: 120_000 });
    const pid = Number(/daemon pid (\d+)/.exec(out)?.[1] ?? readDaemonPid(this.root));
    this.daemonPid = Number.isFinite(pid) && pid > 0 ? pid : null;
    register(this.store, this.daemonPid);
  }

  async unmount(): Promise<void> {
    await unmountLocalOverlay(this.root, this.daemonPid);
    this.daemonPid = null;
  }
}

function readDaemonPid(root: string): number {
  try {
    return (JSON.parse(fs.readFileSync(path.join(root, 'nix/var/local-overlay/daemon.json'), 'utf8')) as { pid: number }).pid;
  } catch {
    return 0;
  }
}

/** `local-overlay unmount ROOT`; if that fails, detach the mount and kill our daemon. */
export async function unmountLocalOverlay(root: string, pid: number | null): Promise<void> {
  const store = path.join(root, 'nix/store');
  const r = await run(process.execPath, [CLI, 'unmount', root], { timeoutMs: 60_000 });
  const kept = r.code !== 0 && pid !== null ? keepDaemonState(root, pid) : null;
  if (r.code !== 0 && isMounted(store)) {
    await run('fusermount', ['-uz', store]);
    if (isMounted(store)) await run('umount', ['-l', store]);
  }
  if (pid !== null && processAlive(pid)) {
    await waitFor('local-overlay daemon exit', () => !processAlive(pid), 10_000).catch(() => {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    });
  }
  unregister(store);
  if (r.code !== 0) throw new Error(`local-overlay unmount ${root} exited ${r.code}: ${r.stderr.trim()}${kept ? ` (its log and threads: ${kept})` : ''}`);
}

/**
 * A daemon that did not unmount: its log and each thread's kernel stack, copied to
 * bench/results/ before the runner removes the run's scratch dir. Returns the file, or null.
 */
function keepDaemonState(root: string, pid: number): string | null {
  const out = path.join(REPO, 'bench/results', `unmount-failure-${new Date().toISOString().replace(/[:.]/g, '-')}-${pid}.txt`);
  const parts: string[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const read = (f: string): string => { try { return fs.readFileSync(`/proc/${pid}/task/${tid}/${f}`, 'utf8').trim(); } catch { return '?'; } };
      parts.push(`thread ${tid} (${read('comm')}), stat: ${read('stat')}\n${read('stack')}`);
    }
  } catch { parts.push(`process ${pid}: no /proc entry`); }
  try { parts.push(`--- log ---\n${fs.readFileSync(path.join(root, 'nix/var/log/local-overlay.log'), 'utf8')}`); } catch { parts.push('--- no log ---'); }
  // User-space stacks too, where gdb is installed (it is not needed otherwise).
  const gdb = spawnSync('gdb', ['-p', String(pid), '-batch', '-ex', 'thread apply all bt 20'], { encoding: 'utf8', timeout: 20_000 });
  if (gdb.status === 0) parts.push(`--- gdb ---\n${gdb.stdout}`);
  try {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, parts.join('\n\n') + '\n');
    return out;
  } catch {
    return null;
  }
}

/** Mounts a local-overlay daemon for the metadata workloads; returns its pid. */
export async function mountLocalOverlay(lowerRoot: string, dir: string, metadata: 'mirror' | 'lazy', extra: string[] = []): Promise<{ root: string; store: string; pid: number | null; seconds: number }> {
  const root = path.join(dir, 'root');
  const store = path.join(root, 'nix/store');
  register(store, null);
  const r = await run(process.execPath, [CLI, 'mount', '--lower', lowerRoot, '--upper', path.join(dir, 'upper'),
    '--work', path.join(dir, 'work'), '--root', root, '--metadata', metadata, ...extra], { timeoutMs: 600_000 });
  if (r.code !== 0) {
    unregister(store);
    throw new Error(`local-overlay mount exited ${r.code}: ${(r.stderr + r.stdout).trim()}`);
  }
  const pid = Number(/daemon pid (\d+)/.exec(r.stdout)?.[1] ?? readDaemonPid(root)) || null;
  register(store, pid);
  return { root, store, pid, seconds: r.seconds };
}

export async function makePeer(name: PeerName, ctx: PeerContext): Promise<Peer> {
  fs.mkdirSync(ctx.dir, { recursive: true });
  switch (name) {
    case 'native': return new NativePeer(ctx, await prepareRoot(ctx, true));
    case 'kernel': return new KernelPeer(ctx, await prepareRoot(ctx, true));
    case 'fuse-overlayfs':
    case 'fuse-overlayfs-tuned': return new FuseOverlayfsPeer(name, ctx, await prepareRoot(ctx, true));
    case 'local-overlay': return new LocalOverlayPeer(ctx, await prepareRoot(ctx, false));
  }
}
