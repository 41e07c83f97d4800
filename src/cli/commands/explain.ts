import type { Argv, CommandModule } from 'yargs';
import { Explainer, formatExplanation } from '../../explain/explain';
import { liveRecord } from '../../mount/records';
import { EXIT, runCommand } from '../run';
import { findRoot } from '../find-root';

interface ExplainArgs { paths: string[]; root?: string; json: boolean }

export const explainCommand: CommandModule<object, ExplainArgs> = {
  command: 'explain <paths..>',
  describe: 'Say which layer each path resolves to and why, and what the upper and lower DBs say about its store object',
  builder: (y: Argv) => y
    .positional('paths', { type: 'string', array: true, demandOption: true, describe: 'paths inside a merged store, store paths (/nix/store/...), names or hash parts' })
    .option('root', { type: 'string', describe: 'the merged root [default: from the path, or the only running mount]' })
    .option('json', { type: 'boolean', default: false, describe: 'print a JSON array (format: docs/explain-json.md)' })
    .example('$0 explain /tmp/m/nix/store/abc...-hello-2.12', '')
    .example('$0 explain --root /tmp/m --json abc0123456789abcdefghijklmnpqrsv', 'a bare hash part')
    .strict() as unknown as Argv<ExplainArgs>,
  handler: (argv) => runCommand(() => explain(argv)),
};

async function explain(argv: ExplainArgs): Promise<number> {
  const { root, rc } = findRoot(argv.root, argv.paths[0]);
  const mounted = liveRecord(root) !== null;
  const ex = new Explainer(rc.config, mounted ? { at: new Date(rc.mountedAt), lowerMaxId: rc.lowerMaxIdAtMount } : null);
  try {
    const results = argv.paths.map((p) => ex.explain(p));
    if (argv.json) process.stdout.write(JSON.stringify({ root, mounted, layers: { lowerRoot: rc.config.lowerRoot, upperDir: rc.config.upperDir }, paths: results }, null, 2) + '\n');
    else process.stdout.write(results.map(formatExplanation).join('\n\n') + '\n');
    return results.every((r) => r.reason !== 'absent') ? EXIT.ok : EXIT.failed;
  } finally {
    ex.close();
  }
}
