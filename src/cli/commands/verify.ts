import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { liveRecord } from '../../mount/records';
import { verify } from '../../maintain/verify';
import { RootView } from '../../maintain/view';
import { findRoot } from '../find-root';
import { progress } from '../progress';
import { checkRanges } from '../ranges';
import { EXIT, runCommand } from '../run';
import { lockWait } from './optimise';
import { syncByDaemon } from './sync';
import { LocalOverlayError } from '../../util/errno';

interface VerifyArgs { root?: string; 'check-contents': boolean; repair: boolean; 'lock-timeout': number; json: boolean }

export const verifyCommand: CommandModule<object, VerifyArgs> = {
  command: 'verify [root]',
  describe: 'Check the upper DB against both layers: vanished objects, duplicates, rows that differ from the lower DB, broken closures, whiteouts hiding valid objects. Exits 1 while a problem remains (after --repair: one it could not fix)',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', describe: 'the merged root, or a path inside it (also as --root ROOT) [default: the one the current dir is in, else the only running mount]' })
    .option('check-contents', { type: 'boolean', default: false, describe: 'also hash every upper object and compare with its row' })
    .option('repair', { type: 'boolean', default: false, describe: 'fix what can be fixed without touching the lower layer (duplicates as optimise removes them)' })
    .option('lock-timeout', { type: 'number', default: 60, describe: 'with --repair: seconds (0-86400) to wait for Nix\'s GC lock while a GC holds it, to remove duplicates (0: do not wait; as optimise)' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .check(checkRanges({ 'lock-timeout': { min: 0, max: 86_400, unit: 'seconds' } }))
    .example('$0 verify /tmp/m --check-contents', '')
    .strict() as unknown as Argv<VerifyArgs>,
  handler: (argv) => runCommand(async () => {
    const { root, rc } = findRoot(argv.root);
    const view = new RootView(rc.config);
    let r;
    try {
      r = await verify(view, {
        checkContents: argv['check-contents'], repair: argv.repair, lockTimeoutS: argv['lock-timeout'],
        onLockWait: lockWait, progress: progress('verify'),
        copyMissing: (paths) => {
          const rec = liveRecord(root);
          if (!rec) throw new LocalOverlayError('not-mounted', `${root} stopped being mounted during verify; run it again`);
          return syncByDaemon(rec.controlSocket, paths);
        },
      });
    } finally {
      view.close();
    }
    if (argv.repair && view.mounted) {
      const rec = liveRecord(root);
      if (rec) await controlRequest(rec.controlSocket, { cmd: 'refresh' }).catch(() => undefined);
    }
    if (argv.json) {
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    } else {
      for (const p of r.problems) process.stdout.write(`${p.repaired ? 'repaired' : 'problem '} ${p.kind.padEnd(20)} ${p.path}: ${p.detail}\n`);
      process.stdout.write(`checked ${r.checked} rows: ${r.problems.length} problems, ${r.repaired} repaired\n`);
    }
    return r.problems.every((p) => p.repaired) ? EXIT.ok : EXIT.failed;
  }),
};
