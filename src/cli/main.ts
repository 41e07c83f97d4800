#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { mountCommand } from './commands/mount';
import { unmountCommand } from './commands/unmount';
import { explainCommand } from './commands/explain';
import { statusCommand } from './commands/status';
import { refreshCommand } from './commands/refresh';
import { optimiseCommand } from './commands/optimise';
import { verifyCommand } from './commands/verify';
import { syncCommand } from './commands/sync';
import { traceCommand } from './commands/trace';
import { EXIT } from './run';

/** Every command's names (its first word, and its aliases): a usage error within one points at its --help. */
const COMMAND_NAMES = new Set([mountCommand, unmountCommand, statusCommand, explainCommand, refreshCommand, syncCommand, verifyCommand, optimiseCommand, traceCommand]
  .flatMap((c) => [String(c.command).split(' ')[0]!, ...[c.aliases ?? []].flat()]));

void yargs(hideBin(process.argv))
  .scriptName('local-overlay')
  .usage('$0 <command> [options]\n\nA Nix local-overlay store as a FUSE filesystem: a read-only lower store and a writable upper layer merged into one ordinary local store that any Nix can use with --store ROOT.')
  .command(mountCommand)
  .command(unmountCommand)
  .command(statusCommand)
  .command(explainCommand)
  .command(refreshCommand)
  .command(syncCommand)
  .command(verifyCommand)
  .command(optimiseCommand)
  .command(traceCommand)
  .demandCommand(1, 'name a command')
  .strict()
  .recommendCommands()
  .completion('completion', 'print a bash completion script')
  .epilogue('Exit codes: 0 ok, 1 failed, 2 invalid usage or input, 3 not mounted.')
  .fail((msg, err, y) => {
    // A .check() that returns a message passes it as `err` too (a string): a usage error.
    if ((err as unknown) instanceof Error) throw err;
    // Within a command, the error and where the options are; without one, the commands.
    const command = hideBin(process.argv).find((a) => !a.startsWith('-'));
    const known = command !== undefined && COMMAND_NAMES.has(command);
    process.stderr.write(known
      ? `local-overlay: error: ${msg}\n(\`local-overlay ${command} --help\` explains every option)\n`
      : `${y.help().toString()}\n\nlocal-overlay: error: ${msg}\n`);
    process.exit(EXIT.usage);
  })
  .help()
  .version()
  .parseAsync();
