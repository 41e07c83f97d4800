import { parentPort, workerData } from 'node:worker_threads';
import { openDb } from './sqlite';

/**
 * Checkpoints the upper DB's WAL on its own connection and thread (Checkpointer), so that the
 * daemon's thread never waits for one. workerData: { dbFile }. Each message asks for one
 * PASSIVE checkpoint (it never blocks writers or readers); the answer is posted back.
 */
const db = openDb((workerData as { dbFile: string }).dbFile, { timeoutMs: 100 });
parentPort?.on('message', () => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
    parentPort?.postMessage({ ok: true });
  } catch (err) {
    parentPort?.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) });
  }
});
