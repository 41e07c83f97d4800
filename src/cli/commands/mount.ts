import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type { Argv, CommandModule } from 'yargs';
import { MetadataMode } from '../../metadata/metadata';
import { canonicalPath, LAZY_GC_WARNING, MountConfig, defaultWorkDir, rootLayout } from '../../mount/config';
import { LocalOverlayError } from '../../util/errno';
import { lineSplitter } from '../../util/lines';
import { readRootConfig, staleMountWarning } from '../../mount/records';
import { log, LogLevel } from '../../util/log';
import { EXIT, runCommand } from '../run';
import { checkRanges } from '../ranges';
import { tracePrefix } from './trace';

interface MountArgs {
  lower: string; upper: string; root: string; work?: string; metadata?: MetadataMode;
  foreground: boolean; log?: string; 'follow-interval': number; 'negative-timeout': number;
  'attr-timeout': number; 'fast-path': boolean; passthrough: boolean; 'poll-us'?: number; 'ready-fd'?: number; trace?: string; 'trace-prefix'?: string; 'log-level': LogLevel;
}

export const mountCommand: CommandModule<object, MountArgs> = {
  command: 'mount',
  describe: 'Mount a merged store: a read-only lower Nix store plus a writable upper layer',
  builder: (y: Argv) => y
    .option('lower', { type: 'string', demandOption: true, describe: 'lower root (a Nix root with nix/store and nix/var/nix/db); never written' })
    .option('upper', { type: 'string', demandOption: true, describe: 'upper dir: holds the objects the merged store adds (kernel OverlayFS upperdir format)' })
    .option('root', { type: 'string', demandOption: true, describe: 'merged root: the store is mounted at ROOT/nix/store, its DB is ROOT/nix/var/nix/db; use as nix --store ROOT' })
    .option('work', { type: 'string', describe: 'work dir on the upper dir\'s filesystem [default: UPPER.work beside UPPER]' })
    .option('metadata', { choices: ['mirror', 'lazy'] as const, describe: 'mirror: import every lower DB row and follow the lower DB (for plain Nix); lazy: copy a closure when a lookup first resolves to the lower layer (for Nix\'s native local-overlay:// store) [default: the mode the root was last mounted with, else mirror]' })
    .option('foreground', { type: 'boolean', default: false, describe: 'serve in this process until SIGINT/SIGTERM instead of starting a daemon' })
    .option('log', { type: 'string', describe: 'daemon log file [default: ROOT/nix/var/log/local-overlay.log; stderr with --foreground]' })
    .option('follow-interval', { type: 'number', default: 500, describe: 'how often (ms, 10-3600000) to look for new rows in the lower DB' })
    .option('negative-timeout', { type: 'number', default: 1, describe: 'seconds (0-86400) a missing name stays cached (the lower store can gain it)' })
    .option('attr-timeout', { type: 'number', default: 60, describe: 'seconds (0-86400) the kernel trusts attributes; also how long another name of a hard-linked upper file can show stale size or contents' })
    .option('fast-path', { type: 'boolean', default: true, describe: 'answer requests inside store objects whose layer is settled, and lookups of absent names, in native code on libfuse\'s threads (native/fastpath.c); --no-fast-path sends every request to the JS handlers (also the case while tracing)' })
    .option('passthrough', { type: 'boolean', default: true, describe: 'let the kernel read lower files itself (FUSE passthrough, Linux 6.9+, as root; otherwise reads go through the daemon as before); --no-passthrough: every read of a file not in the page cache reaches the daemon' })
    .option('poll-us', { type: 'number', describe: '(0-1000000) while requests come close together, poll /dev/fuse this many microseconds for the next one before sleeping: saves a wakeup per request (warm reads ~1.3x faster, native-notes/README.md) for CPU time, at most this much per gap between requests; off while other tasks wait for a CPU (PSI); 0: never [default: 50; 0 with one CPU, under a cgroup CPU quota or without /proc/pressure/cpu]' })
    .option('trace', { type: 'string', describe: 'write a trace line per resolution decision, refused write, closure sync and DB import to FILE (SIGUSR1 or `local-overlay trace` toggle it later)' })
    .option('trace-prefix', { type: 'string', describe: 'trace only store paths starting so: /nix/store/HASH-NAME..., ROOT/nix/store/..., or the start of a name (a hash part)' })
    .option('log-level', { choices: ['error', 'warn', 'info', 'debug'] as const, default: 'info' as LogLevel, describe: 'daemon log level' })
    .option('ready-fd', { type: 'number', hidden: true })
    .check(checkRanges({
      'follow-interval': { min: 10, max: 3_600_000, integer: true, unit: 'milliseconds' },
      'negative-timeout': { min: 0, max: 86_400, unit: 'seconds' },
      'attr-timeout': { min: 0, max: 86_400, unit: 'seconds' },
      'poll-us': { min: 0, max: 1_000_000, integer: true, unit: 'microseconds' },
      'ready-fd': { min: 0, max: 1_000_000, integer: true, unit: 'file descriptors' },
    }))
    .example('$0 mount --lower /shared/nix-root --upper /var/lib/local-overlay/upper --root /tmp/m', 'then: nix-build --store /tmp/m ...')
    .strict(),
  handler: (argv) => runCommand(() => mount(argv)),
};

function configFrom(argv: MountArgs): MountConfig {
  // Canonical: the kernel's mount table and the daemon's command line, which the CLI matches
  // against, name the merged store by its real path (a root under a symlinked dir was taken for
  // unmounted, and the daemon stopped itself).
  const upperDir = canonicalPath(argv.upper);
  const mergedRoot = canonicalPath(argv.root);
  return {
    lowerRoot: canonicalPath(argv.lower),
    upperDir,
    workDir: argv.work ? canonicalPath(argv.work) : defaultWorkDir(upperDir),
    mergedRoot,
    // A remount keeps the root's mode unless told otherwise: mirror imports every lower row.
    metadata: argv.metadata ?? readRootConfig(mergedRoot)?.config.metadata ?? 'mirror',
    logFile: argv.log ? path.resolve(argv.log) : argv.foreground ? undefined : path.join(mergedRoot, 'nix/var/log/local-overlay.log'),
    followIntervalMs: argv['follow-interval'],
    negativeTimeoutS: argv['negative-timeout'],
    attrTimeoutS: argv['attr-timeout'],
    fastPath: argv['fast-path'],
    passthrough: argv.passthrough,
    pollUs: argv['poll-us'],
    traceFile: argv.trace ? path.resolve(argv.trace) : undefined,
    tracePrefix: argv['trace-prefix'] === undefined ? undefined : tracePrefix(argv['trace-prefix'], mergedRoot),
  };
}

async function mount(argv: MountArgs): Promise<number> {
  const cfg = configFrom(argv);
  log.setLevel(argv['log-level']);
  if (argv.foreground) return serve(cfg, argv['ready-fd']);
  return startDaemon(cfg, argv);
}

/** Linux's O_CLOEXEC as /proc/PID/fdinfo shows it in `flags` (octal). */
const O_CLOEXEC = 0o2000000;

/**
 * Closes every descriptor this process inherited, but stdin, stdout, stderr and `keep`: Node,
 * libuv and the native modules open theirs close-on-exec, so one without it came from whoever
 * ran `mount`. Kept for the daemon's life, the write end of a caller's pipe (a CI runner's, a
 * job control's, a make jobserver's) would keep its reader from ever seeing EOF.
 */
function closeInherited(keep: number): void {
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (fd <= 2 || fd === keep) continue;
    let info: string;
    try { info = fs.readFileSync(`/proc/self/fdinfo/${name}`, 'utf8'); } catch { continue; } // the listing's own
    const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(info)?.[1] ?? '', 8);
    if (Number.isNaN(flags) || (flags & O_CLOEXEC) !== 0) continue;
    try { fs.closeSync(fd); } catch { /* already gone */ }
  }
}

/** Serves the mount in this process; returns when it has been unmounted. */
async function serve(cfg: MountConfig, readyFd: number | undefined): Promise<number> {
  // The daemon `mount` started (the ready pipe is its sign) keeps nothing of its caller's.
  if (readyFd !== undefined) closeInherited(readyFd);
  const { Daemon } = await import('../../mount/daemon');
  // A FUSE daemon that dies leaves "Transport endpoint is not connected" behind for every
  // process using the store: log what escaped and keep serving.
  process.on('uncaughtException', (err) => log.error(`uncaught: ${err.stack ?? String(err)}`));
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${err instanceof Error ? err.stack : String(err)}`));
  process.umask(0); // modes come from the kernel request, already masked by the caller's umask
  const daemon = new Daemon(cfg);
  // The ready pipe carries progress lines ({"progress": "..."}) and then one final answer.
  daemon.onProgress = (text) => {
    if (readyFd === undefined) process.stderr.write(`local-overlay: ${text}\n`);
    else try { fs.writeSync(readyFd, JSON.stringify({ progress: text }) + '\n'); } catch { /* parent gone */ }
  };
  const notify = (msg: Record<string, unknown>): void => {
    daemon.onProgress = undefined;
    if (readyFd === undefined) return;
    try { fs.writeSync(readyFd, JSON.stringify(msg) + '\n'); fs.closeSync(readyFd); } catch { /* parent gone */ }
  };
  try {
    await daemon.start();
  } catch (err) {
    await daemon.stop().catch(() => undefined);
    // SQLite's "database or disk is full" does not say which: the merged DB is the one written.
    if (err instanceof Error && (err as { code?: unknown }).code === 'SQLITE_FULL' && !err.message.includes(cfg.mergedRoot)) {
      err.message += ` (the merged DB in ${rootLayout(cfg.mergedRoot).dbDir}: its filesystem has no space left)`;
    }
    notify({ ok: false, code: err instanceof LocalOverlayError ? err.code : 'failed', error: err instanceof Error ? err.message : String(err) });
    throw err;
  }
  notify({ ok: true, pid: process.pid, warnings: daemon.warnings });
  if (readyFd === undefined) for (const w of daemon.warnings) process.stderr.write(`local-overlay: warning: ${w}\n`);
  if (readyFd === undefined) process.stderr.write(`local-overlay: serving ${rootLayout(cfg.mergedRoot).storeDir} (Ctrl-C to unmount)\n`);
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      log.info(`${sig}: unmounting`);
      void daemon.stop().then(resolve);
    };
    daemon.onMountGone = () => onSignal('mount removed from outside');
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    process.once('SIGHUP', onSignal);
    let tracing = cfg.traceFile !== undefined;
    process.on('SIGUSR1', () => {
      tracing = !tracing;
      const f = daemon.trace(tracing);
      log.info(tracing ? `SIGUSR1: tracing on (${f})` : 'SIGUSR1: tracing off');
    });
  });
  // fuse-native keeps libuv handles open after a mount was removed from outside (its native
  // unmount never ran), which would keep this process alive forever: exit explicitly. An
  // ordinary exit also waits for threads that wait on a layer which stopped answering (libuv's
  // pool, libfuse's workers): the mount is gone and the DBs are closed, so it gets 3 s.
  const waiting = process.getActiveResourcesInfo().filter((r) => r.startsWith('FSReq')).length;
  if (waiting > 0) log.warn(`exiting with ${waiting} file system calls unanswered (a layer that stopped answering?); not waiting for them`);
  const { exitWithin } = await import('../../fuse/adapter');
  exitWithin(3000, EXIT.ok);
  process.exit(EXIT.ok);
}

/**
 * The daemon's environment: what it and the tools it runs (sh, flock, fusermount) need, and
 * nothing else of its caller's. Nix takes every store path named in any process's environment
 * for a runtime root (/proc/PID/environ), so a daemon started from a shell that names store
 * paths (a nix-shell or `nix develop`, a script's variables) would keep them from every GC of
 * every store with that store dir, the lower one included, for as long as it is mounted.
 * PATH and LD_LIBRARY_PATH stay whole: the tools and libfuse are found through them.
 * `mount --foreground` keeps its own.
 */
export function daemonEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const keep = (name: string): boolean => ['PATH', 'LD_LIBRARY_PATH', 'NODE_OPTIONS', 'HOME', 'TMPDIR', 'TZ', 'LANG', 'LANGUAGE'].includes(name)
    || name.startsWith('LC_') || name.startsWith('LOCAL_OVERLAY_');
  return Object.fromEntries(Object.entries(env).filter(([name]) => keep(name)));
}

/** Starts the daemon as a detached child and waits until its mount answers (or fails). */
async function startDaemon(cfg: MountConfig, argv: MountArgs): Promise<number> {
  // A 1 MiB young generation: the per-request garbage is small and short-lived, and the walk's
  // peak RSS drops by ~10 MiB at the same speed (bench/README.md).
  const args = ['--max-semi-space-size=1', process.argv[1], 'mount', '--foreground', '--ready-fd', '3',
    '--lower', cfg.lowerRoot, '--upper', cfg.upperDir, '--root', cfg.mergedRoot, '--work', cfg.workDir,
    '--metadata', cfg.metadata, '--follow-interval', String(cfg.followIntervalMs),
    '--negative-timeout', String(cfg.negativeTimeoutS), '--attr-timeout', String(cfg.attrTimeoutS), '--log-level', argv['log-level']];
  if (!cfg.fastPath) args.push('--no-fast-path');
  if (!cfg.passthrough) args.push('--no-passthrough');
  if (cfg.pollUs !== undefined) args.push('--poll-us', String(cfg.pollUs));
  if (cfg.traceFile) args.push('--trace', cfg.traceFile);
  if (cfg.tracePrefix) args.push('--trace-prefix', cfg.tracePrefix);
  if (cfg.logFile) args.push('--log', cfg.logFile);
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe'], env: daemonEnv(process.env) });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const started = Date.now();
  const reply = await new Promise<Record<string, unknown>>((resolve) => {
    let answer: Record<string, unknown> | null = null;
    pipe.setEncoding('utf8');
    pipe.on('data', lineSplitter((line) => {
      let msg: Record<string, unknown>;
      try { msg = JSON.parse(line) as Record<string, unknown>; } catch { return; }
      // Progress shows only when the mount takes a while (a large lower DB).
      if (typeof msg.progress === 'string') {
        if (Date.now() - started > 1000 || process.stderr.isTTY) process.stderr.write(`local-overlay: ${msg.progress}\n`);
      } else {
        answer = msg;
      }
    }));
    pipe.on('end', () => resolve(answer ?? { ok: false, error: `the daemon exited before its mount answered (see ${cfg.logFile ?? 'its log'})` }));
  });
  child.unref();
  if (!reply.ok) throw new LocalOverlayError(String(reply.code ?? 'failed'), String(reply.error));
  process.stdout.write(`mounted ${rootLayout(cfg.mergedRoot).storeDir} (daemon pid ${String(reply.pid)}, metadata ${cfg.metadata}${argv.log || cfg.logFile ? `, log ${cfg.logFile}` : ''})\n`);
  if (cfg.metadata === 'lazy') process.stderr.write(`local-overlay: warning: ${LAZY_GC_WARNING}\n`);
  for (const w of Array.isArray(reply.warnings) ? reply.warnings : []) process.stderr.write(`local-overlay: warning: ${String(w)}\n`);
  const stale = staleMountWarning(rootLayout(cfg.mergedRoot).storeDir, Number(reply.pid));
  if (stale) process.stderr.write(`local-overlay: warning: ${stale}\n`);
  return EXIT.ok;
}
