import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { log } from '../util/log';

/** WAL size beyond which a write asks for a checkpoint (SQLite's own default: 1000 pages). */
const CHECKPOINT_WAL_BYTES = 1000 * 4096;

/**
 * Moves the upper DB's checkpoints off the daemon's thread. With SQLite's automatic
 * checkpoints, the commit that crosses 1000 WAL pages copies them into the DB file and fsyncs
 * it before returning: a lazy lookup whose closure copy dirties ~1000 pages (a 1,000-path
 * closure) paid for one every few lookups. Here the daemon's connection does not checkpoint
 * (wal_autocheckpoint = 0); after a write, `wrote()` asks a worker thread with its own
 * connection for a PASSIVE checkpoint once the WAL is past SQLite's usual threshold, and never
 * more than one at a time.
 */
export class Checkpointer {
  private readonly worker: Worker;
  private readonly wal: string;
  private busy = false;
  private again = false;

  constructor(dbFile: string) {
    this.wal = `${dbFile}-wal`;
    this.worker = new Worker(path.join(__dirname, 'checkpoint-worker.js'), { workerData: { dbFile } });
    this.worker.unref();
    this.worker.on('message', (m: { ok: boolean; error?: string }) => {
      if (!m.ok) log.debug(`checkpoint: ${m.error ?? 'failed'}`);
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.wrote();
      }
    });
    this.worker.on('error', (err) => log.warn(`checkpoint worker: ${err.message}`));
  }

  /** After a commit on the daemon's connection. */
  wrote(): void {
    const st = fs.statSync(this.wal, { throwIfNoEntry: false });
    if (st === undefined || st.size < CHECKPOINT_WAL_BYTES) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    this.worker.postMessage('checkpoint');
  }

  close(): Promise<number> {
    return this.worker.terminate();
  }
}
