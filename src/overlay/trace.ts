import * as fs from 'node:fs';
import { TraceFn } from './stats';

/**
 * The trace channel: one line per resolution decision, refused write, closure sync and DB
 * import, `<ISO time> <kind> <path> <detail> [<ms> ms]`, appended to a file. Paths are store
 * paths (`/nix/store/NAME/...`); `prefix` keeps only lines whose path starts with it.
 * When tracing is off, no Tracer exists and call sites cost one property read.
 */
export class Tracer {
  private readonly fd: number;

  constructor(readonly file: string, readonly prefix: string | undefined, private readonly storeDir = '/nix/store') {
    this.fd = fs.openSync(file, 'a', 0o644);
  }

  readonly fn: TraceFn = (kind, p, detail, ms) => {
    const storePath = p.startsWith(this.storeDir) ? p : `${this.storeDir}${p === '/' ? '' : p}`;
    if (this.prefix !== undefined && !storePath.startsWith(this.prefix)) return;
    const line = `${new Date().toISOString()} ${kind} ${storePath} ${detail}${ms === undefined ? '' : ` ${ms} ms`}\n`;
    try { fs.writeSync(this.fd, line); } catch { /* a full disk must not break the mount */ }
  };

  close(): void {
    try { fs.closeSync(this.fd); } catch { /* already closed */ }
  }
}
