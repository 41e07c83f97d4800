import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { log } from '../util/log';
import { makeDir } from '../util/own-files';

/**
 * Nix 2.8's temporary roots (libstore/gc.cc), the store paths a running Nix client uses and a
 * GC must keep: the .drv being built, its outputs, paths being added. Each client appends them,
 * NUL-terminated, to `STATE/temproots/<pid>`, a file it holds flock(LOCK_EX) on for its life;
 * a file whose lock can be taken belongs to a dead process. A build's inputs are not all temp
 * roots themselves: sources are kept as references of the .drv (Nix's GC keeps the closure of
 * its roots), outputs of input derivations as temp roots of their own.
 */
export interface TempRoot {
  /** The client's pid (the file's name); null for a root sent to the GC socket. */
  pid: number | null;
  path: string;
}

/**
 * The temp roots of live clients, read as Nix's `findTempRoots` reads them, except that the
 * files of dead clients are left where they are (Nix's GC removes them; this is not a GC).
 * Which files are locked is asked of one `flock` child per call: Node has no flock(2). A file
 * that disappears meanwhile is skipped; a file that cannot be checked counts as live.
 */
export async function liveTempRoots(stateDir: string): Promise<TempRoot[]> {
  const dir = path.join(stateDir, 'temproots');
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => /^[0-9]+$/.test(n));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  if (names.length === 0) return [];
  const dead = await lockableFiles(names.map((n) => path.join(dir, n)));
  const roots: TempRoot[] = [];
  for (const n of names) {
    if (dead.has(path.join(dir, n))) continue;
    let text: string;
    try {
      text = fs.readFileSync(path.join(dir, n), 'latin1');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    // A root is complete once its NUL is written (the client appends one write per root).
    const parts = text.split('\0');
    for (const p of parts.slice(0, -1)) roots.push({ pid: Number(n), path: p });
  }
  return roots;
}

/**
 * The files among `files` whose exclusive flock could be taken at once: their owners are dead.
 * Each is opened read-only without O_CREAT (a file gone meanwhile is not made again) and its
 * lock dropped at once; a client that creates its file just then waits a moment for it.
 */
function lockableFiles(files: string[]): Promise<Set<string>> {
  // Exit status of one check: 0 lock taken (dead), 75 lock held (live), else opening failed.
  const script = 'for f; do { flock --nonblock --exclusive --conflict-exit-code 75 3; } 2>/dev/null 3<"$f"; echo "$?"; done';
  return new Promise((resolve, reject) => {
    execFile('sh', ['-c', script, 'sh', ...files], (err, stdout) => {
      if (err) { reject(new Error(`cannot check the temp roots files' locks: ${err.message}`)); return; }
      const codes = stdout.trim().split('\n');
      resolve(new Set(files.filter((_, i) => codes[i] === '0')));
    });
  });
}

/**
 * The GC roots socket (`STATE/gc-socket/socket`) of Nix 2.8's GC, served while the GC lock is
 * held exclusively: a client that cannot take the lock shared connects, writes each new temp
 * root as `PATH\n` and waits for the byte `1` before it uses the path. Nix 2.8's client reads
 * a refused connection as "the GC has just ended" and retries the lock; with no socket file at
 * all it goes on without waiting, the root unsent. Roots are answered at once: a holder that
 * removes paths checks `roots` just before each removal, and a removal runs to its end before
 * the next answer (one JS thread), so a client that was answered sees the path removed or kept.
 */
export class GcRootsServer {
  readonly roots: TempRoot[] = [];
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server, readonly socketPath: string) {}

  /** Listens on `STATE/gc-socket/socket`, replacing the file an earlier GC left (it refuses connections). */
  static async listen(stateDir: string): Promise<GcRootsServer> {
    const socketPath = path.join(stateDir, 'gc-socket', 'socket');
    makeDir(path.dirname(socketPath));
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer();
    const s = new GcRootsServer(server, socketPath);
    server.on('connection', (sock) => s.serve(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => { server.off('error', reject); resolve(); });
    });
    // As Nix makes it: any user's client may send its roots.
    fs.chmodSync(socketPath, 0o666);
    return s;
  }

  private serve(sock: net.Socket): void {
    this.sockets.add(sock);
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const p = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (p.startsWith('/')) this.roots.push({ pid: null, path: p });
        else log.warn(`gc roots socket: received garbage instead of a root: ${JSON.stringify(p.slice(0, 80))}`);
        sock.write('1');
      }
    });
    sock.on('error', () => { /* the client went away */ });
    sock.on('close', () => this.sockets.delete(sock));
  }

  /**
   * Stops serving and removes the socket file (libuv does); call it once nothing more is
   * removed, best after the GC lock is released. Connected clients see EOF and retry the lock.
   */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}
