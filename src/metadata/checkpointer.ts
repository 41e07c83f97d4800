import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { log } from '../util/log';

/** WAL frames since the WAL last started over beyond which a write asks for a checkpoint (SQLite's own default: 1000 pages). */
const CHECKPOINT_FRAMES = 1000;
/** The wal-index header and checkpoint info, up to and including nBackfill. */
const WAL_INDEX_HEADER_BYTES = 100;
/**
 * WAL frames past which a write waits for the checkpoints to catch up, so that it starts the WAL
 * over (`settle`): 65,536 frames of 4 KiB pages, 256 MiB. A wait costs the lookup the rest of a
 * checkpoint: in-process over the lazy bench's closures, 8.5 and 10.7 ms at 1,000-path
 * closures (whose copies take ~12 ms) and 30 ms at a 10,000-path one. With 64 MiB two of every
 * 50 1,000-path lookups waited, which is the lazy bench's p99 (21.5 ms, max 22.6, in a full
 * run); with 256 MiB none of them does, and the WAL ends at 126 MiB there as without a bound.
 */
const WAL_BOUND_FRAMES = 65_536;
/** How long the worker outlives its last checkpoint. */
const IDLE_MS = 10_000;
/**
 * How many times an idle worker tries to cut the WAL file back (every `idleMs`) while Nix keeps
 * using the WAL, before it ends with the file as it is (the next write's worker tries again).
 */
const IDLE_TRIES = 6;
/** How long an idle worker has to end by itself. */
const STOP_MS = 10_000;
/** How long after a worker failed no other is started (each costs an isolate). */
const RESTART_MS = 10_000;

/**
 * Moves the upper DB's checkpoints off the daemon's thread. With SQLite's automatic
 * checkpoints, the commit that crosses 1000 WAL pages copies them into the DB file and fsyncs
 * it before returning: a lazy lookup whose closure copy dirties ~1000 pages (a 1,000-path
 * closure) paid for one every few lookups. Here the daemon's connection does not checkpoint
 * (wal_autocheckpoint = 0); after a write, `wrote()` asks a worker thread with its own
 * connection for a PASSIVE checkpoint, never more than one at a time. It asks as SQLite's own
 * automatic checkpoint would: when the WAL holds 1000 frames or more since it last started
 * over, some of them not yet checkpointed. Frames written during a checkpoint are so asked for
 * again (counting only the frames not yet copied left them, and the WAL never started over).
 * A writer starts the WAL over only when its transaction begins with every frame copied. Under
 * back-to-back writes, with a checkpoint running beside each, that moment never comes: the WAL
 * grew to 132 MB over the lazy bench's 1-, 100- and 1,000-path phases. So past `boundFrames` a
 * write first waits for the checkpoints to catch up (`settle`), and then starts the WAL over.
 *
 * The frames are counted in the wal-index header, not by the WAL file's size: SQLite reuses
 * the WAL from its start without shrinking the file, so once the file had passed the
 * threshold its size asked for a checkpoint (two fsyncs) after every write.
 *
 * The worker (a V8 isolate with better-sqlite3 loaded: ~15 MiB of RSS) starts with the first
 * checkpoint and ends `idleMs` after the last, so a mount whose closures are copied stops
 * paying for it. Ending, it cuts the WAL file back to nothing: SQLite keeps the file at the size
 * a burst gave it. A Nix client reading or writing at that moment keeps the cut from happening
 * (it waits for nobody); the worker then tries again every `idleMs`, up to IDLE_TRIES times
 * (one try, as before, left a 40 MB WAL for good behind a reader; found by review). Writes too
 * small to ask for a checkpoint (under 1000 frames) also get one cut, `idleMs` after the last
 * of them, from a worker started for it. Not with `journal_size_limit` on the
 * daemon's connection: the commit that truncated a 126 MiB WAL then held one lookup ~30 ms (the
 * lazy bench's p99 of 100 new paths over a copied closure, 29–38 ms against 5–6).
 */
export class Checkpointer {
  private worker: Worker | null = null;
  /** A worker that was idle, cutting the WAL file back before it ends. */
  private stopping: Worker | null = null;
  private readonly shm: string;
  private readonly header = Buffer.alloc(WAL_INDEX_HEADER_BYTES);
  /** `-shm`, open from the first read on (wal()). */
  private shmFd: number | null = null;
  private checkpointsAsked = 0;
  private busy = false;
  private again = false;
  private idle: NodeJS.Timeout | null = null;
  private closed = false;
  /** When a worker last failed (its 'error' event). */
  private failedAt = 0;
  /** settle()s waiting for the running checkpoint, or the stopping worker, to end. */
  private waiters: (() => void)[] = [];
  /** Cuts of the WAL file tried since the last checkpoint asked for. */
  private idleTries = 0;

  constructor(private readonly dbFile: string, private readonly idleMs = IDLE_MS, private readonly boundFrames = WAL_BOUND_FRAMES) {
    this.shm = `${dbFile}-shm`;
  }

  /** After a commit on the daemon's connection. */
  wrote(): void {
    if (this.closed) return;
    const wal = this.wal();
    if (wal.frames < CHECKPOINT_FRAMES || wal.checkpointed >= wal.frames) {
      if (wal.frames > 0 && this.worker === null && this.stopping === null) this.cutWhenIdle();
      return;
    }
    if (this.busy) {
      this.again = true;
      return;
    }
    this.ask();
  }

  /**
   * Before a write on the daemon's connection: null when it may go ahead, else a promise to
   * wait for first:
   * - the WAL is past `boundFrames` and not all copied: it resolves once the checkpoints have
   *   caught up, so that the write starts the WAL over; or without that when no checkpoint can
   *   run (the worker failed), or after three checkpoints that another writer kept from
   *   catching up;
   * - an idle worker is cutting the WAL file back: it holds SQLite's write lock meanwhile (48–54
   *   ms for a 158 MiB file, measured by review), and the write would wait for it in SQLite's
   *   busy handler, holding up every FUSE request; this waits for the worker's end without
   *   blocking the thread.
   */
  settle(): Promise<void> | null {
    if (this.stopping === null && !this.behind()) return null;
    return (async (): Promise<void> => {
      for (let i = 0; i < 3 && (this.stopping !== null || this.behind()); i++) {
        if (this.stopping === null) {
          if (!this.busy) this.ask();
          if (!this.busy) return;
        }
        await new Promise<void>((resolve) => this.waiters.push(resolve));
      }
    })();
  }

  /** Whether the WAL is past the bound with frames not yet copied. */
  private behind(): boolean {
    if (this.closed) return false;
    const wal = this.wal();
    return wal.frames >= this.boundFrames && wal.checkpointed < wal.frames;
  }

  private ask(): void {
    if (this.worker === null && Date.now() - this.failedAt < RESTART_MS) return; // the daemon's connection keeps the WAL meanwhile
    this.busy = true;
    this.checkpointsAsked++;
    this.idleTries = 0;
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    (this.worker ??= this.start()).postMessage('checkpoint');
  }

  /**
   * The WAL's frames since it last started over (mxFrame) and how many of them a checkpoint
   * has copied into the DB file (nBackfill), from the wal-index header in `-shm` (SQLite's
   * walformat.html: bytes 16 and 96, in the host's byte order). Zeros when there is no
   * wal-index yet. A read that meets a writer updating the header can be off; the next write
   * reads it again.
   *
   * The file is opened once and closed only after the connections (close()): closing any
   * descriptor of a file drops every POSIX lock the process holds on it, SQLite's own among
   * them. Opened and closed per read, it dropped the daemon connection's lock on `-shm` that
   * tells other processes the wal-index is in use, and the next Nix client to open the DB
   * rebuilt it under the daemon (nBackfill went from 547 to 0; found by review).
   */
  wal(): { frames: number; checkpointed: number } {
    try {
      this.shmFd ??= fs.openSync(this.shm, 'r');
      if (fs.readSync(this.shmFd, this.header, 0, WAL_INDEX_HEADER_BYTES, 0) < WAL_INDEX_HEADER_BYTES) return { frames: 0, checkpointed: 0 };
    } catch {
      return { frames: 0, checkpointed: 0 };
    }
    const le = os.endianness() === 'LE';
    return {
      frames: le ? this.header.readUInt32LE(16) : this.header.readUInt32BE(16),
      checkpointed: le ? this.header.readUInt32LE(96) : this.header.readUInt32BE(96),
    };
  }

  /** Checkpoints asked for so far (tests). */
  get asked(): number {
    return this.checkpointsAsked;
  }

  /** Whether the worker thread is running (tests, status). */
  running(): boolean {
    return this.worker !== null || this.stopping !== null;
  }

  private start(): Worker {
    const w = new Worker(path.join(__dirname, 'checkpoint-worker.js'), { workerData: { dbFile: this.dbFile } });
    w.unref();
    w.on('message', (m: { ok: boolean; error?: string; cut?: boolean }) => {
      if (m.cut === false) {
        this.notCut(w);
        return;
      }
      if (!m.ok) log.debug(`checkpoint: ${m.error ?? 'failed'}`);
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.wrote();
      }
      if (!this.busy && this.worker === w) {
        this.idle = setTimeout(() => this.stop(w), this.idleMs);
        this.idle.unref();
      }
      this.wake();
    });
    w.on('error', (err) => {
      log.warn(`checkpoint worker: ${err.message}`);
      this.failedAt = Date.now();
    });
    // Ended (idle, closed, or it failed): the next checkpoint starts another, and one asked
    // for meanwhile is not lost. One that failed is not started again for RESTART_MS.
    w.on('exit', () => {
      if (this.stopping === w) {
        this.stopping = null;
        this.wake();
      }
      if (this.worker !== w) return;
      this.worker = null;
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.wrote();
      }
      this.wake();
    });
    return w;
  }

  /** A checkpoint ended: settle()s look again. */
  private wake(): void {
    const waiting = this.waiters;
    this.waiters = [];
    for (const resolve of waiting) resolve();
  }

  /** Idle: the worker cuts the WAL file back and ends (checkpoint-worker.ts). */
  private stop(w: Worker): void {
    if (this.worker !== w || this.busy) return;
    this.worker = null;
    this.idle = null;
    this.stopping = w;
    this.idleTries++;
    w.postMessage('idle');
    const ended = setTimeout(() => { if (this.stopping === w) void w.terminate(); }, STOP_MS);
    ended.unref();
    w.once('message', () => clearTimeout(ended));
  }

  /**
   * A Nix client was using the WAL when the idle worker tried to cut it back: the worker is
   * idle again, and tries again later (IDLE_TRIES); a worker started meanwhile takes over.
   */
  private notCut(w: Worker): void {
    if (this.stopping === w) this.stopping = null;
    this.wake();
    if (this.closed || this.worker !== null || this.idleTries >= IDLE_TRIES) {
      w.postMessage('end');
      return;
    }
    this.worker = w;
    this.idle = setTimeout(() => this.stop(w), this.idleMs);
    this.idle.unref();
  }

  /** Writes too small to ask for a checkpoint: a worker cuts the WAL file back once they stop. */
  private cutWhenIdle(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      this.idle = null;
      if (this.closed || this.worker !== null || this.stopping !== null) return;
      if (Date.now() - this.failedAt < RESTART_MS) return;
      this.worker = this.start();
      this.idleTries = 0;
      this.stop(this.worker);
    }, this.idleMs);
    this.idle.unref();
  }

  /**
   * Ends the workers. `-shm` is closed once they have ended: call the daemon connection's
   * close() right after this one, before the promise resolves (wal() says why).
   */
  close(): Promise<void> {
    this.closed = true;
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    const ws = [this.worker, this.stopping].filter((w): w is Worker => w !== null);
    this.worker = null;
    this.stopping = null;
    this.wake();
    return Promise.all(ws.map((w) => w.terminate())).then(() => {
      if (this.shmFd !== null) fs.closeSync(this.shmFd);
      this.shmFd = null;
    });
  }
}
