import { createHash, Hash } from 'node:crypto';
import * as fs from 'node:fs';

/**
 * The NAR serialisation's SHA-256, as Nix stores it in ValidPaths.hash (`sha256:<hex>`), and
 * its size (narSize). Streams file contents; follows no symlinks. Sorting is by byte order of
 * the names, as Nix does.
 */
export function narHash(path: string): { hash: string; size: number } {
  const h = createHash('sha256');
  const w = new NarWriter(h);
  w.str('nix-archive-1');
  w.node(path);
  return { hash: `sha256:${h.digest('hex')}`, size: w.size };
}

const PAD = Buffer.alloc(8);
const CHUNK = 1 << 20;

class NarWriter {
  size = 0;
  private readonly len = Buffer.alloc(8);
  private readonly chunk = Buffer.allocUnsafe(CHUNK);

  constructor(private readonly h: Hash) {}

  private u64(n: number): void {
    this.len.writeBigUInt64LE(BigInt(n));
    this.h.update(this.len);
    this.size += 8;
  }

  private pad(n: number): void {
    const p = (8 - (n % 8)) % 8;
    if (p) { this.h.update(PAD.subarray(0, p)); this.size += p; }
  }

  str(s: string | Buffer): void {
    const b = typeof s === 'string' ? Buffer.from(s) : s;
    this.u64(b.length);
    this.h.update(b);
    this.size += b.length;
    this.pad(b.length);
  }

  node(p: string): void {
    const st = fs.lstatSync(p);
    this.str('(');
    this.str('type');
    if (st.isSymbolicLink()) {
      this.str('symlink');
      this.str('target');
      this.str(fs.readlinkSync(p, { encoding: 'buffer' }));
    } else if (st.isFile()) {
      this.str('regular');
      if (st.mode & 0o100) { this.str('executable'); this.str(''); }
      this.str('contents');
      this.contents(p, st.size);
    } else if (st.isDirectory()) {
      this.str('directory');
      const names = fs.readdirSync(p, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const name of names) {
        this.str('entry');
        this.str('(');
        this.str('name');
        this.str(name);
        this.str('node');
        this.node(`${p}/${name.toString()}`);
        this.str(')');
      }
    } else {
      throw new Error(`${p}: a ${st.isCharacterDevice() ? 'device' : 'special file'} cannot be in a NAR`);
    }
    this.str(')');
  }

  private contents(p: string, size: number): void {
    this.u64(size);
    const fd = fs.openSync(p, 'r');
    try {
      let done = 0;
      while (done < size) {
        const n = fs.readSync(fd, this.chunk, 0, Math.min(CHUNK, size - done), done);
        if (n === 0) throw new Error(`${p}: shorter than its size`);
        this.h.update(this.chunk.subarray(0, n));
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    this.size += size;
    this.pad(size);
  }
}
