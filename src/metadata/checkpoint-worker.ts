import { parentPort, workerData } from 'node:worker_threads';
import { openDb } from './sqlite';

/**
 * Checkpoints the upper DB's WAL on its own connection and thread (Checkpointer), so that the
 * daemon's thread never waits for one. workerData: { dbFile }. Message 'checkpoint' asks for
 * one PASSIVE checkpoint (it never blocks writers or readers); the answer is posted back.
 * Message 'idle' asks for a TRUNCATE checkpoint that waits for nobody (busy timeout 0): the
 * WAL file a burst of writes made large goes back to 0 bytes, and the worker ends. When a
 * reader or a writer is using the WAL at that moment, SQLite reports it busy (the pragma's row,
 * not an error): the file keeps its size, the worker stays and says so ({ cut: false }), and
 * is asked again later. Message 'end' ends it without a checkpoint.
 */
const TIMEOUT_MS = 100;
const db = openDb((workerData as { dbFile: string }).dbFile, { timeoutMs: TIMEOUT_MS });

function end(): never {
  db.close();
  process.exit(0);
}

parentPort?.on('message', (m: string) => {
  if (m === 'end') end();
  if (m === 'idle') {
    let cut = false;
    try {
      db.pragma(`busy_timeout = 0`);
      const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
      cut = r?.busy === 0;
    } catch { /* failed: as busy, the file keeps its size until the next time */ }
    if (cut) end();
    db.pragma(`busy_timeout = ${TIMEOUT_MS}`);
    parentPort?.postMessage({ ok: true, cut: false });
    return;
  }
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
    parentPort?.postMessage({ ok: true });
  } catch (err) {
    parentPort?.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) });
  }
});
