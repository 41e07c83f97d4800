import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { lineSplitter } from '../util/lines';
import { log } from '../util/log';

interface Controlled {
  status(): Promise<Record<string, unknown>>;
  refresh(): Promise<void>;
  sync(paths: string[]): Promise<number>;
  trace(on: boolean, file?: string, prefix?: string): string | null;
  stop(): Promise<void>;
}

/**
 * The daemon's control socket: one JSON request per line (`{"cmd":"status"}`), one JSON reply
 * per line. Its owner's only (mode 0600): it can stop the mount. The daemon's umask is 0, so a
 * socket bound in place would be 0777 until chmod: it is bound in a private (0700) dir, made
 * 0600 there, and only then renamed into place.
 */
export class ControlServer {
  private server: net.Server | null = null;
  /** Open connections: closing the server waits for every one to end, so close() ends them. */
  private readonly clients = new Set<net.Socket>();

  constructor(readonly socketPath: string, private readonly target: Controlled) {}

  listen(): Promise<void> {
    const privateDir = fs.mkdtempSync(path.join(path.dirname(this.socketPath), '.control-'));
    const bound = path.join(privateDir, 'sock');
    const server = net.createServer((sock) => {
      this.clients.add(sock);
      sock.on('close', () => this.clients.delete(sock));
      sock.setEncoding('utf8');
      sock.on('data', lineSplitter((line) => {
        void this.handle(line).then((reply) => sock.write(JSON.stringify(reply) + '\n'));
      }));
      sock.on('error', () => { /* the client went away */ });
    });
    this.server = server;
    return new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(bound, () => {
        fs.chmodSync(bound, 0o600);
        fs.rmSync(this.socketPath, { force: true });
        fs.renameSync(bound, this.socketPath);
        server.unref();
        resolve();
      });
    }).finally(() => fs.rmSync(privateDir, { recursive: true, force: true }));
  }

  private async handle(line: string): Promise<Record<string, unknown>> {
    try {
      const req = JSON.parse(line) as { cmd?: string; on?: boolean; file?: string; prefix?: string; paths?: unknown };
      switch (req.cmd) {
        case 'status': return { ok: true, status: await this.target.status() };
        case 'refresh': await this.target.refresh(); return { ok: true };
        case 'sync': {
          if (!Array.isArray(req.paths) || !req.paths.every((p) => typeof p === 'string')) return { ok: false, error: 'sync: paths must be a list of store paths' };
          return { ok: true, rows: await this.target.sync(req.paths as string[]) };
        }
        case 'trace': return { ok: true, file: this.target.trace(req.on !== false, req.file, req.prefix) };
        case 'stop': setImmediate(() => process.kill(process.pid, 'SIGTERM')); return { ok: true };
        default: return { ok: false, error: `unknown command ${String(req.cmd)}` };
      }
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      log.warn(`control: ${message}`);
      return { ok: false, error: message };
    }
  }

  close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return Promise.resolve();
    // A client that keeps its connection open (a monitor, a forgotten `socat`) must not keep
    // the daemon from unmounting: the server's close waits for every connection to end.
    const closed = new Promise<void>((resolve) => s.close(() => { fs.rmSync(this.socketPath, { force: true }); resolve(); }));
    for (const sock of this.clients) sock.destroy();
    return closed;
  }
}

/** Sends one request to a daemon's control socket and returns its reply. */
export function controlRequest(socketPath: string, req: Record<string, unknown>, timeoutMs = 5000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let answered = false;
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no answer from ${socketPath} in ${timeoutMs} ms`)); }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', lineSplitter((line) => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      sock.end();
      try { resolve(JSON.parse(line) as Record<string, unknown>); } catch (err) { reject(err); }
    }));
    sock.on('error', (err) => { clearTimeout(timer); reject(err); });
    // A daemon killed (or crashed) after it took the request closes the connection unanswered:
    // say so now, rather than wait out the timeout (sync's is 10 minutes). A reply already
    // settled the promise; this then changes nothing.
    sock.on('close', () => {
      clearTimeout(timer);
      if (!answered) reject(new Error(`the daemon closed the connection without answering (${socketPath}): did it exit? \`local-overlay status\` tells; if it is gone, \`local-overlay unmount ROOT\`, mount again and retry`));
    });
  });
}
