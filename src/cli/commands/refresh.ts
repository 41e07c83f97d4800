import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { liveRecord } from '../../mount/records';
import { LocalOverlayError } from '../../util/errno';
import { EXIT, runCommand } from '../run';
import { rootOfPath } from '../find-root';

interface RefreshArgs { root: string }

export const refreshCommand: CommandModule<object, RefreshArgs> = {
  command: 'refresh <root>',
  describe: 'Drop every cache of a running mount (after the upper dir was changed outside the mount), and look at the lower DB at once: a mirror mount has imported its new rows when this returns. Waits up to 10 s for Nix to release the merged DB\'s write lock or, during a garbage collection, its GC lock; exit 1 past it (the follower imports later)',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', demandOption: true, describe: 'the merged root' })
    .example('$0 refresh /tmp/m', 'also usable as the remount-hook of Nix\'s native local-overlay:// store')
    .strict() as unknown as Argv<RefreshArgs>,
  handler: (argv) => runCommand(() => refresh(rootOfPath(argv.root))),
};

export async function refresh(root: string): Promise<number> {
  const rec = liveRecord(root);
  if (!rec) throw new LocalOverlayError('not-mounted', `${root} is not mounted`);
  // The daemon waits up to 10 s for a Nix process that holds the merged DB's write lock.
  const reply = await controlRequest(rec.controlSocket, { cmd: 'refresh' }, 15_000);
  if (!reply.ok) throw new LocalOverlayError('refresh-failed', String(reply.error));
  process.stdout.write(`refreshed ${root}/nix/store\n`);
  return EXIT.ok;
}
