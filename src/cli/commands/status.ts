import type { Argv, CommandModule } from 'yargs';
import { controlRequest } from '../../mount/control';
import { rootLayout } from '../../mount/config';
import { DaemonRecord, daemonByCommandLine, isStale, liveRecord, processAlive, readRecord, runningRecords, staleMountWarning, staleRoots, stuckWhere } from '../../mount/records';
import { rootOfPath } from '../find-root';
import { LocalOverlayError } from '../../util/errno';
import { EXIT, runCommand } from '../run';
import { upperUsage } from '../../mount/usage';

interface StatusArgs { root?: string; json: boolean }

export const statusCommand: CommandModule<object, StatusArgs> = {
  command: 'status [root]',
  describe: 'Show running mounts: settings, uptime, counters, follower state, upper layer size and health; exits 1 if a mount is unhealthy (its daemon does not answer, or a layer or DB does not, within 2 s; or its follower\'s checks of the lower DB fail)',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', describe: 'one merged root, or a path inside it such as ROOT/nix/store [default: every running mount]' })
    .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
    .example('$0 status', '')
    .example('$0 status /tmp/m --json', '')
    .strict() as unknown as Argv<StatusArgs>,
  handler: (argv) => runCommand(() => status(argv)),
};

async function status(argv: StatusArgs): Promise<number> {
  let recs: DaemonRecord[];
  let stale: string[];
  if (argv.root) {
    const root = rootOfPath(argv.root);
    const rec = liveRecord(root);
    stale = rec === null && isStale(root) ? [root] : [];
    if (!rec && stale.length === 0) {
      if (argv.json) process.stdout.write(JSON.stringify({ root, mounted: false }, null, 2) + '\n'); // for scripts: the answer, and exit 3
      throw new LocalOverlayError('not-mounted', `${root} is not mounted`);
    }
    recs = rec ? [rec] : [];
  } else {
    recs = runningRecords();
    stale = staleRoots();
  }
  const out: Record<string, any>[] = stale.map(staleStatus);
  for (const rec of recs) {
    let live: Record<string, unknown> = {};
    let healthy = true;
    try {
      const reply = await controlRequest(rec.controlSocket, { cmd: 'status' });
      live = (reply.status as Record<string, unknown>) ?? {};
      live = withFollowerHealth(live);
      // A daemon that answers but finds a layer or DB unreadable, or whose follower's checks
      // fail, is not healthy either.
      if ((live.health as { ok?: boolean } | undefined)?.ok === false) healthy = false;
    } catch (err) {
      healthy = false;
      live = { answering: false, config: rec.config, error: notAnswering(rec, err) };
    }
    // Not the mount's health: processes elsewhere that need a restart to see it (records.ts staleMountWarning).
    const staleMount = staleMountWarning(rootLayout(rec.config.mergedRoot).storeDir, rec.pid);
    out.push({ root: rec.config.mergedRoot, pid: rec.pid, healthy, upper: upperUsage(rec.config.upperDir), ...live, ...(staleMount ? { staleMount } : {}) });
  }
  if (argv.json) {
    process.stdout.write(JSON.stringify(argv.root ? out[0] : out, null, 2) + '\n');
  } else if (out.length === 0) {
    process.stdout.write('no local-overlay mounts are running\n');
  } else {
    for (const s of out) process.stdout.write((s.answering === false ? formatStale(s) : formatStatus(s)) + '\n');
  }
  return out.every((s) => s.healthy) ? EXIT.ok : EXIT.failed;
}

/**
 * The daemon's health, with the follower's failing checks added as a problem: while they fail
 * (the merged DB locked past the busy timeout, its filesystem full, ...), new lower paths stay
 * invisible and unimported. Healthy again once a check succeeds (the daemon resets the count).
 */
function withFollowerHealth(live: Record<string, unknown>): Record<string, unknown> {
  const failing = (live.follower as { failing?: { count?: unknown; message?: unknown } } | undefined)?.failing;
  if (typeof failing?.count !== 'number' || failing.count === 0) return live;
  const health = (live.health as { ok?: boolean; problems?: string[] } | undefined) ?? {};
  const problem = `follower failing: its last ${failing.count} checks failed: ${String(failing.message)}`;
  return { ...live, health: { ...health, ok: false, problems: [...health.problems ?? [], problem] } };
}

/**
 * A mount whose daemon is gone (killed, crashed) while its store dir is still mounted: every
 * access fails with "Transport endpoint is not connected" until it is unmounted.
 */
function staleStatus(root: string): Record<string, unknown> {
  const rec = readRecord(root);
  const running = daemonByCommandLine(root);
  if (running !== null) {
    return {
      root, pid: running, healthy: false, answering: false,
      error: `its daemon, pid ${running}, runs, but ${rec === null ? 'its daemon.json is gone' : 'its control socket does not answer'} (was ${rootLayout(root).stateDir} removed or moved?): \`local-overlay unmount ${root}\` stops it`,
    };
  }
  const who = rec === null ? 'no daemon.json' : processAlive(rec.pid) ? `pid ${rec.pid} in daemon.json is not its daemon` : `its daemon, pid ${rec.pid}, is not running`;
  return {
    root, pid: rec?.pid ?? null, healthy: false, answering: false,
    error: `the daemon does not answer (${who}); ${root}/nix/store is still mounted: run \`local-overlay unmount ${root}\``,
  };
}

/**
 * A daemon that runs but does not answer its control socket: busy (its JS thread in a long
 * import, a layer that does not answer) or hung; where its threads wait tells which.
 */
function notAnswering(rec: DaemonRecord, err: unknown): string {
  const root = rec.config.mergedRoot;
  return `the daemon does not answer its control socket (${err instanceof Error ? err.message : String(err)}); ${stuckWhere(rec.pid)}. `
    + `It may be busy; if processes using ${root}/nix/store hang too, \`local-overlay unmount --force ${root}\` aborts the mount's connection and kills the daemon`;
}

function formatStale(s: Record<string, any>): string {
  const lines = [`${s.root}/nix/store  ${s.config ? `pid ${s.pid}  ` : ''}NOT ANSWERING`];
  if (s.config) lines.push(`  lower      ${s.config.lowerRoot}    upper ${s.config.upperDir}    metadata ${s.config.metadata}`);
  lines.push(`  error      ${s.error}`);
  return lines.join('\n');
}

/** `on: 12345 requests answered natively, 67 passed to JS (2,100 names known); listings served for the kernel to keep 40 (12 directories still known to it), READDIRPLUS 80, passthrough opens 9; reader handed over 70 times, taken by the watchdog 0, found 900 requests while polling`. */
function fastPathLine(f: Record<string, number | boolean>): string {
  let answered = 0;
  for (const [k, v] of Object.entries(f)) {
    if (typeof v === 'number' && !['upper', 'lower', 'passed', 'entries', 'listedDirs', 'listings', 'passthrough', 'handoffs', 'stalls', 'polled'].includes(k)) answered += v;
  }
  return `${f.on ? 'on' : 'off'}: ${answered} requests answered natively, ${String(f.passed)} passed to JS (${String(f.entries)} names known); listings served for the kernel to keep ${String(f.listings ?? 0)} (${String(f.listedDirs ?? 0)} directories still known to it), READDIRPLUS ${String(f.readdirplus ?? 0)}, passthrough opens ${String(f.passthrough ?? 0)}; reader handed over ${String(f.handoffs ?? 0)} times, taken by the watchdog ${String(f.stalls ?? 0)}, found ${String(f.polled ?? 0)} requests while polling`;
}

/** The follower's check of the lower DB files, when it has waited long (a hung server). */
function followerWait(ms: unknown): string {
  return typeof ms === 'number' && ms >= 1000 ? ` (its check of the lower DB has waited ${(ms / 1000).toFixed(1)} s)` : '';
}

/** New lower paths waiting for a garbage collection to end (it holds Nix's GC lock). */
function followerGc(ms: unknown): string {
  return typeof ms === 'number' && ms > 0 ? ` (new lower paths wait for a garbage collection, for ${(ms / 1000).toFixed(1)} s now)` : '';
}

/** New lower paths held back while a client of the mount holds their lock (or one they refer to). */
function followerLocks(n: unknown): string {
  return typeof n === 'number' && n > 0 ? ` (${n} new lower paths wait for a lock a client of the mount holds)` : '';
}

/** The follower's checks that failed in a row (the merged DB locked by Nix, say), if any. */
function followerFailing(f: { count?: unknown; message?: unknown } | undefined): string {
  return typeof f?.count === 'number' && f.count > 0 ? ` (its last ${f.count} checks failed: ${String(f.message)})` : '';
}

/** `follow 500 ms, negative timeout 1 s, attr timeout 60 s, fast path on, passthrough on, poll auto`. */
function settingsLine(c: Record<string, unknown>): string {
  const onOff = (v: unknown): string => (v === false ? 'off' : 'on');
  return `follow ${String(c.followIntervalMs)} ms, negative timeout ${String(c.negativeTimeoutS)} s, attr timeout ${String(c.attrTimeoutS)} s, `
    + `fast path ${onOff(c.fastPath)}, passthrough ${onOff(c.passthrough)}, poll ${c.pollUs === undefined ? 'auto' : `${String(c.pollUs)} µs`}`;
}

/** `getattr 1200, open 300, read 290, ...`: operations by kind, most frequent first. */
function opsLine(ops: Record<string, number>): string {
  return Object.entries(ops).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([op, n]) => `${op} ${n}`).join(', ');
}

function formatStatus(s: Record<string, any>): string {
  const c = s.counters ?? {};
  const lines = [
    `${s.root}/nix/store  pid ${s.pid}  up ${s.uptimeS ?? '?'} s  ${s.healthy ? 'healthy' : 'UNHEALTHY'}${s.health && !s.health.ok ? ` (${s.health.problems.join('; ')})` : ''}`,
    `  lower      ${s.config?.lowerRoot}    upper ${s.config?.upperDir}    metadata ${s.config?.metadata}`,
    ...(s.config ? [`  settings   ${settingsLine(s.config)}`] : []),
    `  upper      ${s.upper.objects} objects, ${(s.upper.bytes / 1048576).toFixed(1)} MiB`,
    ...(s.ops && Object.keys(s.ops).length > 0 ? [`  ops        ${opsLine(s.ops)}`] : []),
    `  lookups    upper ${c.upper ?? 0}  lower ${c.lower ?? 0}  missing ${c.miss ?? 0}  refused writes ${c.refused ?? 0}`,
    `  metadata   rows mirrored ${c.rowsMirrored ?? 0}  closure syncs ${c.closureSyncs ?? 0} (${c.rowsCopied ?? 0} rows${c.closuresInPieces ? `, ${c.closuresInPieces} in pieces` : ''}${c.tornReads ? `, ${c.tornReads} torn reads read again` : ''})  follower lag ${s.follower?.failing?.count > 0 ? '?' : s.follower?.lagMs ?? '?'} ms${followerWait(s.follower?.checkWaitingMs)}${followerGc(s.follower?.waitingForGcMs)}${followerLocks(s.follower?.waitingForLocks)}${followerFailing(s.follower?.failing)}`,
  ];
  if (s.fastPath) lines.push(`  fast path  ${fastPathLine(s.fastPath)}`);
  if (s.tracing) lines.push(`  tracing    to ${s.tracing.file}${s.tracing.prefix ? ` (paths under ${s.tracing.prefix})` : ''}`);
  if (s.staleMount) lines.push(`  warning    ${s.staleMount}`);
  if (s.error) lines.push(`  error      ${s.error}`);
  return lines.join('\n');
}
