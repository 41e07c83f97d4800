import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { liveRecord } from '../../mount/records';
import { RootView, STORE_DIR } from '../../maintain/view';
import { LocalOverlayError } from '../../util/errno';
import { findRoot } from '../find-root';
import { EXIT, runCommand } from '../run';

interface SyncArgs { paths: string[]; root?: string; all: boolean }

export const syncCommand: CommandModule<object, SyncArgs> = {
  command: 'sync [paths..]',
  describe: 'Copy the closures of lower store paths into the upper DB now (what a lazy mount does on lookup). Mounted, the daemon copies; not mounted, this command does. Name paths or give --all, not both',
  builder: (y: Argv) => y
    .positional('paths', { type: 'string', array: true, default: [], describe: 'store paths (/nix/store/HASH-NAME), paths in a merged store (ROOT/nix/store/HASH-NAME/..., which also name the root) or names (HASH-NAME)' })
    .option('root', { type: 'string', describe: 'the merged root [default: the one the paths or the current dir are in, else the only running mount]' })
    .option('all', { type: 'boolean', default: false, describe: 'every valid lower path' })
    .example('$0 sync --root /tmp/m /nix/store/abc...-hello-2.12', '')
    .strict() as unknown as Argv<SyncArgs>,
  handler: (argv) => runCommand(async () => {
    const { rc } = findRoot(argv.root, argv.paths[0]);
    const view = new RootView(rc.config);
    try {
      if (argv.all && argv.paths.length > 0) throw new LocalOverlayError('usage', `--all syncs every lower path: name no paths with it (got ${argv.paths.join(' ')})`);
      const paths = argv.all
        ? (view.lowerDb.conn().prepare('SELECT path FROM ValidPaths').pluck().all() as string[])
        : argv.paths.map((p) => {
          const name = p.startsWith('/') ? p.split('/nix/store/')[1]?.split('/')[0] : p;
          if (!name) throw new LocalOverlayError('usage', `${p} names no store path (give /nix/store/HASH-NAME, ROOT/nix/store/HASH-NAME or HASH-NAME)`);
          return `${STORE_DIR}/${name}`;
        });
      if (paths.length === 0) throw new LocalOverlayError('usage', 'name store paths to sync, or --all');
      for (const p of paths) if (!view.lowerDb.pathRow(p)) throw new LocalOverlayError('usage', `${p} is not valid in the lower store`);
      const rec = liveRecord(rc.config.mergedRoot);
      const n = rec ? await syncByDaemon(rec.controlSocket, paths) : view.copyFromLower(paths, sayRemoved).length;
      process.stdout.write(`copied ${n} rows into the upper DB\n`);
      return EXIT.ok;
    } finally {
      view.close();
    }
  }),
};

/**
 * Mounted: the daemon copies (it owns the merged DB's writes while mounted, and it sets aside
 * the upper leftovers the copy makes valid, telling the kernel: Metadata.sync).
 */
export async function syncByDaemon(socket: string, paths: string[]): Promise<number> {
  const reply = await controlRequest(socket, { cmd: 'sync', paths }, 600_000);
  if (!reply.ok) throw new LocalOverlayError('sync-failed', String(reply.error));
  return Number(reply.rows);
}

/** Not mounted: what copyFromLower removed, on stderr. */
export function sayRemoved(storePath: string): void {
  process.stderr.write(`removed the upper copy of ${storePath}: it had no row (an add that did not finish), and the lower store has the path\n`);
}
