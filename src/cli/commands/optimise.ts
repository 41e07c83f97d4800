import type { Argv, CommandModule } from 'yargs';
import { optimise } from '../../maintain/optimise';
import { RootView } from '../../maintain/view';
import { findRoot } from '../find-root';
import { progress } from '../progress';
import { EXIT, runCommand } from '../run';

interface OptimiseArgs { root?: string; 'dry-run': boolean; 'check-contents': boolean; json: boolean }

export const optimiseCommand: CommandModule<object, OptimiseArgs> = {
  command: 'optimise [root]',
  aliases: ['optimize'],
  describe: 'Remove upper copies of objects the lower store also has; the merged store then serves the lower copy',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', describe: 'the merged root [default: the only running mount]' })
    .option('dry-run', { type: 'boolean', default: false, describe: 'report what would be removed, remove nothing' })
    .option('check-contents', { type: 'boolean', default: false, describe: 'hash the upper copy too, not only compare the DBs\' NAR hashes' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .example('$0 optimise /tmp/m --dry-run', '')
    .strict() as unknown as Argv<OptimiseArgs>,
  handler: (argv) => runCommand(async () => {
    const { rc } = findRoot(argv.root);
    const view = new RootView(rc.config);
    try {
      const r = optimise(view, { dryRun: argv['dry-run'], checkContents: argv['check-contents'], progress: progress('optimise') });
      if (argv.json) {
        process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      } else {
        for (const d of r.duplicates) process.stdout.write(`${d.skipped ? 'kept   ' : r.dryRun ? 'would remove' : 'removed'} ${d.path} (${d.bytes} bytes)${d.skipped ? `: ${d.skipped}` : ''}\n`);
        const bytes = r.dryRun ? r.duplicates.filter((d) => !d.skipped).reduce((a, d) => a + d.bytes, 0) : r.bytesFreed;
        const count = r.dryRun ? r.duplicates.filter((d) => !d.skipped).length : r.removed;
        process.stdout.write(`${r.dryRun ? 'would remove' : 'removed'} ${count} upper ${count === 1 ? 'copy' : 'copies'}, ${bytes} bytes ${r.dryRun ? 'to free' : 'freed'}\n`);
      }
      return EXIT.ok;
    } finally {
      view.close();
    }
  }),
};
