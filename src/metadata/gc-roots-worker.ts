import { parentPort, workerData } from 'node:worker_threads';
import { LowerRoots } from './gc-roots';
import { LowerDb } from './lower-db';

/**
 * LowerRoots.sync in a worker thread (Metadata.syncRootsInBackground), so that the JS thread
 * keeps answering FUSE requests meanwhile. The worker's connection may see rows the lower DB
 * gained since the mount imported; `maxId` and `signature` (the mount's snapshot) keep the sync
 * to the rows the mount knows. Posts `{ added, removed }` or `{ error }`.
 */
export interface RootsJob {
  dir: string; stampFile: string | null; dbFile: string; storeDir: string; duplicates: string[];
  maxId: number; signature: string;
}

const job = workerData as RootsJob;
const db = new LowerDb(job.dbFile);
try {
  parentPort?.postMessage(new LowerRoots(job.dir, db, job.stampFile, job.storeDir).sync(new Set(job.duplicates), { maxId: job.maxId, signature: job.signature }));
} catch (err) {
  parentPort?.postMessage({ error: err instanceof Error ? err.message : String(err) });
} finally {
  db.close();
}
