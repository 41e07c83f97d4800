import { parentPort, workerData } from 'node:worker_threads';
import { LowerRoots } from './gc-roots';
import { LowerDb } from './lower-db';

/**
 * LowerRoots.sync in a worker thread (Metadata.syncRootsInBackground), so that the JS thread
 * keeps answering FUSE requests meanwhile. workerData: { dir, stampFile, dbFile, storeDir, duplicates }.
 * Posts `{ added, removed }` or `{ error }`.
 */
export interface RootsJob { dir: string; stampFile: string | null; dbFile: string; storeDir: string; duplicates: string[] }

const job = workerData as RootsJob;
const db = new LowerDb(job.dbFile);
try {
  parentPort?.postMessage(new LowerRoots(job.dir, db, job.stampFile, job.storeDir).sync(new Set(job.duplicates)));
} catch (err) {
  parentPort?.postMessage({ error: err instanceof Error ? err.message : String(err) });
} finally {
  db.close();
}
