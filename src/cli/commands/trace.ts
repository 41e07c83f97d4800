import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { liveRecord } from '../../mount/records';
import { LocalOverlayError } from '../../util/errno';
import { EXIT, runCommand } from '../run';
import { rootOfPath } from '../find-root';

interface TraceArgs { root: string; state: 'on' | 'off'; file?: string; prefix?: string }

export const traceCommand: CommandModule<object, TraceArgs> = {
  command: 'trace <root> <state>',
  describe: 'Switch tracing of a running mount on or off',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', demandOption: true, describe: 'the merged root' })
    .positional('state', { choices: ['on', 'off'] as const, demandOption: true })
    .option('file', { type: 'string', describe: 'trace file [default: the mount\'s --trace, else ROOT/nix/var/local-overlay/trace.log]' })
    .option('prefix', { type: 'string', describe: 'trace only store paths under this prefix' })
    .example('$0 trace /tmp/m on --prefix /nix/store/abc', 'then: tail -f /tmp/m/nix/var/local-overlay/trace.log')
    .strict() as unknown as Argv<TraceArgs>,
  handler: (argv) => runCommand(async () => {
    const root = rootOfPath(argv.root);
    const rec = liveRecord(root);
    if (!rec) throw new LocalOverlayError('not-mounted', `${root} is not mounted`);
    const file = argv.file ? path.resolve(argv.file) : undefined;
    if (file !== undefined && argv.state === 'on' && !fs.statSync(path.dirname(file), { throwIfNoEntry: false })?.isDirectory()) {
      throw new LocalOverlayError('usage', `trace file ${file}: its directory ${path.dirname(file)} does not exist`);
    }
    const reply = await controlRequest(rec.controlSocket, { cmd: 'trace', on: argv.state === 'on', file, prefix: argv.prefix });
    if (!reply.ok) throw new LocalOverlayError('trace-failed', `the daemon could not switch tracing: ${String(reply.error)}`);
    process.stdout.write(argv.state === 'on' ? `tracing ${root}/nix/store to ${String(reply.file)}\n` : `tracing off for ${root}/nix/store\n`);
    return EXIT.ok;
  }),
};
