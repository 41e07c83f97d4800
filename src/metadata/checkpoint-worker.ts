import { parentPort, workerData } from 'node:worker_threads';
import { openDb } from './sqlite';

/**
 * Checkpoints the upper DB's WAL on its own connection and thread (Checkpointer), so that the
 * daemon's thread never waits for one. workerData: { dbFile }. Message 'checkpoint' asks for
 * one PASSIVE checkpoint (it never blocks writers or readers); the answer is posted back.
 * Message 'idle' ends the worker after a TRUNCATE checkpoint that waits for nobody (busy
 * timeout 0): the WAL file a burst of writes made large goes back to 0 bytes, unless a writer
 * or a reader is using the WAL at that moment.
 */
const db = openDb((workerData as { dbFile: string }).dbFile, { timeoutMs: 100 });
parentPort?.on('message', (m: string) => {
  if (m === 'idle') {
    try {
      db.pragma('busy_timeout = 0');
      db.pragma('wal_checkpoint(TRUNCATE)');
    } catch { /* busy or failed: the file keeps its size until the next time */ }
    db.close();
    process.exit(0);
  }
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
    parentPort?.postMessage({ ok: true });
  } catch (err) {
    parentPort?.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) });
  }
});
