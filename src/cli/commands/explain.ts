import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { Explainer, formatExplanation } from '../../explain/explain';
import { rootLayout } from '../../mount/config';
import { liveRecord, readRootConfig, runningRecords } from '../../mount/records';
import { LocalOverlayError } from '../../util/errno';
import { EXIT, runCommand } from '../run';
import { findRoot, rootOfPath } from '../find-root';

interface ExplainArgs { paths: string[]; root?: string; json: boolean }

const STORE_DIR = '/nix/store';

export const explainCommand: CommandModule<object, ExplainArgs> = {
  command: 'explain <paths..>',
  describe: 'Say which layer each path resolves to and why, and what the upper and lower DBs say about its store object. Works on unmounted roots too. Exits 1 if a path is in neither layer',
  builder: (y: Argv) => y
    .positional('paths', { type: 'string', array: true, default: undefined, describe: 'paths inside a merged store (absolute or relative), store paths (/nix/store/...), full names (HASH-NAME) or hash parts; all of one merged root' })
    .option('root', { type: 'string', describe: 'the merged root [default: from the paths, or the only running mount]' })
    .option('json', { type: 'boolean', default: false, describe: 'print a JSON object: the root, its layers, and one explanation per path (format: docs/explain-json.md)' })
    .example('$0 explain /tmp/m/nix/store/abc...-hello-2.12', '')
    .example('$0 explain --root /tmp/m --json abc0123456789abcdefghijklmnpqrsv', 'a bare hash part')
    .strict() as unknown as Argv<ExplainArgs>,
  handler: (argv) => runCommand(() => explain(argv)),
};

/** `input` as explain takes it: a path (resolved against cwd) names its root; a name or hash part does not. */
function target(input: string): { arg: string; root: string | null } {
  if (!input.includes('/') && input !== '.' && input !== '..') return { arg: input, root: null };
  const abs = path.resolve(input);
  if (abs.startsWith(`${STORE_DIR}/`)) {
    // A store path, or a path in the merged store of a root at /: the root, if there is one there.
    const root = rootOfPath(abs);
    return { arg: abs, root: readRootConfig(root) !== null ? root : null };
  }
  const root = rootOfPath(abs);
  if (readRootConfig(root) !== null) {
    const { storeDir } = rootLayout(root);
    if (abs.startsWith(`${storeDir}/`)) return { arg: abs, root };
    throw new LocalOverlayError('usage', `${input} is ${abs === storeDir ? `the store dir of the merged root ${root}` : abs === root ? `the merged root ${root}` : `in the merged root ${root}, not in its store`}: name an object below ${storeDir}`);
  }
  // A path in a running mount's upper dir or lower store names that mount's root.
  // Several mounts can share a lower store: then the path does not say which (findRoot asks).
  const layers = runningRecords().filter((r) => [r.config.upperDir, rootLayout(r.config.lowerRoot).storeDir].some((d) => abs.startsWith(`${d}/`)));
  return { arg: abs, root: layers.length === 1 ? layers[0]!.config.mergedRoot : null };
}

async function explain(argv: ExplainArgs): Promise<number> {
  const targets = argv.paths.map(target);
  const named = [...new Set(targets.map((x) => x.root).filter((r): r is string => r !== null))];
  const asked = argv.root !== undefined ? rootOfPath(argv.root) : undefined;
  const roots = asked !== undefined ? [...new Set([asked, ...named])] : named;
  if (roots.length > 1) {
    const of = (r: string): string => argv.paths.filter((_, i) => targets[i].root === r).join(', ') || '--root';
    throw new LocalOverlayError('usage', `the paths are in different merged roots (${roots.map((r) => `${r}: ${of(r)}`).join('; ')}): explain the paths of one root at a time`);
  }
  const stray = targets.findIndex((x) => x.root === null && x.arg.startsWith('/') && !x.arg.startsWith(`${STORE_DIR}/`));
  if (roots.length === 0 && stray >= 0) {
    throw new LocalOverlayError('usage', `${argv.paths[stray]} is not in a merged store: name a path below ROOT/nix/store, a store path (/nix/store/...), a name or a hash part`);
  }
  const { root, rc } = findRoot(roots[0]);
  // An absolute path must be in the merged store, or in one of its layers, to name anything.
  const { storeDir } = rootLayout(root);
  const inside = [storeDir, STORE_DIR, rc.config.upperDir, rootLayout(rc.config.lowerRoot).storeDir].map((d) => `${d}/`);
  for (const [i, x] of targets.entries()) {
    if (x.arg.startsWith('/') && !inside.some((d) => x.arg.startsWith(d))) {
      throw new LocalOverlayError('usage', `${argv.paths[i]} is not in a merged store: name a path below ${storeDir}, a store path (/nix/store/...), a name or a hash part`);
    }
  }
  const mounted = liveRecord(root) !== null;
  const ex = new Explainer(rc.config, mounted ? { at: new Date(rc.mountedAt), lowerMaxId: rc.lowerMaxIdAtMount } : null);
  try {
    const results = targets.map((x, i) => ({ ...ex.explain(x.arg), input: argv.paths[i] }));
    if (argv.json) process.stdout.write(JSON.stringify({ root, mounted, layers: { lowerRoot: rc.config.lowerRoot, upperDir: rc.config.upperDir }, paths: results }, null, 2) + '\n');
    else process.stdout.write(results.map(formatExplanation).join('\n\n') + '\n');
    return results.every((r) => r.reason !== 'absent') ? EXIT.ok : EXIT.failed;
  } finally {
    ex.close();
  }
}
