import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { canonicalPath } from '../../mount/config';
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
    .positional('state', { choices: ['on', 'off'] as const, demandOption: true, describe: 'switch tracing on or off' })
    .option('file', { type: 'string', describe: 'trace file [default: the mount\'s --trace, else ROOT/nix/var/local-overlay/trace.log]' })
    .option('prefix', { type: 'string', describe: 'trace only store paths starting so: /nix/store/HASH-NAME..., ROOT/nix/store/..., or the start of a name (a hash part)' })
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
    const prefix = argv.prefix === undefined ? undefined : tracePrefix(argv.prefix, root);
    const reply = await controlRequest(rec.controlSocket, { cmd: 'trace', on: argv.state === 'on', file, prefix });
    if (!reply.ok) throw new LocalOverlayError('trace-failed', `the daemon could not switch tracing: ${String(reply.error)}`);
    process.stdout.write(argv.state === 'on' ? `tracing ${root}/nix/store${prefix ? ` (paths under ${prefix})` : ''} to ${String(reply.file)}\n` : `tracing off for ${root}/nix/store\n`);
    return EXIT.ok;
  }),
};

/**
 * The trace lines name logical store paths (/nix/store/HASH-NAME/...): a prefix given as a path
 * in the merged store, or as a bare name or hash part, is made one. Anything else would match
 * nothing, silently.
 */
export function tracePrefix(given: string, root: string): string {
  const merged = `${root}/nix/store`;
  if (given === '/nix/store' || given.startsWith('/nix/store/')) return given;
  if (given === merged || given.startsWith(`${merged}/`)) return `/nix/store${given.slice(merged.length)}`;
  if (!given.includes('/') && given.length > 0) return `/nix/store/${given}`;
  // The root spelled otherwise: relative to the current dir, or through a symlink. Only the part
  // above nix/store is resolved (below it, a lookup in the mount).
  const abs = path.resolve(given);
  for (let i = abs.indexOf('/nix/store'); i >= 0; i = abs.indexOf('/nix/store', i + 1)) {
    const rest = abs.slice(i + '/nix/store'.length);
    if ((rest === '' || rest.startsWith('/')) && canonicalPath(abs.slice(0, i) || '/') === root) return `/nix/store${rest}`;
  }
  throw new LocalOverlayError('usage', `--prefix ${given}: give a store path prefix (/nix/store/HASH-NAME…), a path below ${merged}, or the start of a name (HASH…)`);
}
