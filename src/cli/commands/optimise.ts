import type { Argv, CommandModule } from 'yargs';
import { optimise, OptimiseReport } from '../../maintain/optimise';
import { RootView } from '../../maintain/view';
import { findRoot } from '../find-root';
import { progress } from '../progress';
import { checkRanges } from '../ranges';
import { EXIT, runCommand } from '../run';

interface OptimiseArgs { root?: string; 'dry-run': boolean; 'check-contents': boolean; 'lock-timeout': number; json: boolean }

export const optimiseCommand: CommandModule<object, OptimiseArgs> = {
  command: 'optimise [root]',
  aliases: ['optimize'],
  describe: 'Remove upper copies of objects the lower store also has; the merged store then serves the lower copy. '
    + 'Runs under Nix\'s GC lock and keeps the copies running Nix processes use (their temp roots)',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', describe: 'the merged root, or a path inside it (also as --root ROOT) [default: the one the current dir is in, else the only running mount]' })
    .option('dry-run', { type: 'boolean', default: false, describe: 'report what would be removed, remove nothing (takes no lock)' })
    .option('check-contents', { type: 'boolean', default: false, describe: 'hash the upper copy too, not only compare the DBs\' NAR hashes' })
    .option('lock-timeout', { type: 'number', default: 60, describe: 'seconds (0-86400) to wait for Nix\'s GC lock while a GC holds it (0: do not wait); past it nothing is removed, exit 1' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .check(checkRanges({ 'lock-timeout': { min: 0, max: 86_400, unit: 'seconds' } }))
    .example('$0 optimise /tmp/m --dry-run', '')
    .strict() as unknown as Argv<OptimiseArgs>,
  handler: (argv) => runCommand(async () => {
    const { rc } = findRoot(argv.root);
    const view = new RootView(rc.config);
    try {
      const r = await optimise(view, {
        dryRun: argv['dry-run'], checkContents: argv['check-contents'], lockTimeoutS: argv['lock-timeout'],
        onLockWait: lockWait, progress: progress('optimise'),
      });
      process.stdout.write(argv.json ? JSON.stringify(r, null, 2) + '\n' : describe(r));
      return r.gcLock === 'unavailable' ? EXIT.failed : EXIT.ok;
    } finally {
      view.close();
    }
  }),
};

export function lockWait(): void {
  process.stderr.write('waiting for Nix\'s GC lock (a garbage collection is running?)...\n');
}

function describe(r: OptimiseReport): string {
  let out = '';
  for (const d of r.duplicates) {
    const verb = d.skipped ? (r.dryRun ? 'would keep  ' : 'kept   ') : r.dryRun ? 'would remove' : 'removed';
    const why = d.skipped ? `: ${d.skipped}` : d.matchedBy === 'damaged' ? ': the upper copy was damaged (its contents do not match the row; the lower copy\'s do)' : '';
    out += `${verb} ${d.path} (${d.bytes} bytes)${why}\n`;
  }
  const bytes = r.dryRun ? r.duplicates.filter((d) => !d.skipped).reduce((a, d) => a + d.bytes, 0) : r.bytesFreed;
  const count = r.dryRun ? r.duplicates.filter((d) => !d.skipped).length : r.removed;
  out += `${r.dryRun ? 'would remove' : 'removed'} ${count} upper ${count === 1 ? 'copy' : 'copies'}, ${bytes} bytes ${r.dryRun ? 'to free' : 'freed'}`;
  if (r.inUse > 0) out += `; ${r.dryRun ? 'would keep' : 'kept'} ${r.inUse} that running Nix processes use (a run after they end removes ${r.inUse === 1 ? 'it' : 'them'})`;
  if (r.gcLock === 'unavailable') out += `; nothing removed: ${r.duplicates.find((d) => d.skipped?.startsWith('not removed: '))?.skipped?.slice(13) ?? 'no GC lock'}`;
  return `${out}\n`;
}
