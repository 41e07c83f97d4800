import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { Argv, CommandModule } from 'yargs';
import { rootLayout } from '../../mount/config';
import { controlRequest } from '../../mount/control';
import { controlSocketPath, daemonByCommandLine, isDaemonOf, isMountPoint, liveRecord, mountType, otherNamespaceUsers, procState, processAlive, readRecord, removeLeftovers, stuckWhere } from '../../mount/records';
import { abortConnection } from '../../mount/fusectl';
import { rootOfPath } from '../find-root';
import { LocalOverlayError } from '../../util/errno';
import { EXIT, runCommand } from '../run';
import { checkRanges } from '../ranges';

interface UnmountArgs { root: string; timeout: number; force: boolean }

export const unmountCommand: CommandModule<object, UnmountArgs> = {
  command: 'unmount <root>',
  aliases: ['umount'],
  describe: 'Unmount a merged store: the daemon finishes its DB work, unmounts and exits',
  builder: (y: Argv) => y
    .positional('root', { type: 'string', demandOption: true, describe: 'the merged root given to mount --root, or a path inside it such as ROOT/nix/store' })
    .option('timeout', { type: 'number', default: 30, describe: 'seconds (0.1-86400) to wait for the daemon to exit; past it: exit 1, the daemon left running, where its threads wait said (see --force)' })
    .option('force', {
      type: 'boolean',
      default: false,
      describe: 'for a mount that hangs: when the daemon has not exited within --timeout (or no daemon serves the mount), abort the mount\'s FUSE connection (every waiting request fails: "Software caused connection abort"), kill the daemon and detach the mount. The DB is left as a crash leaves it; the next mount checks it. Needs root',
    })
    .check(checkRanges({ timeout: { min: 0.1, max: 86_400, unit: 'seconds' } }))
    .example('$0 unmount /tmp/m', '')
    .example('$0 unmount --force --timeout 5 /tmp/m', 'a mount whose processes hang')
    .strict() as unknown as Argv<UnmountArgs>,
  handler: (argv) => runCommand(() => unmount(rootOfPath(argv.root), argv.timeout, argv.force)),
};

export async function unmount(root: string, timeoutS: number, force = false): Promise<number> {
  const storeDir = rootLayout(root).storeDir;
  const rec = liveRecord(root);
  const pid = rec?.pid ?? await pidFromControl(root) ?? daemonByCommandLine(root);
  if (pid !== null) {
    // The daemon unmounts lazily (fuse-native's `fusermount -uz`): whoever still uses the store
    // loses it at once (ENOTCONN), a build in progress included. Say who, while it can be seen.
    const users = storeUsers(storeDir, pid);
    if (users.length > 0) {
      process.stderr.write(`local-overlay: warning: ${users.length} process${users.length === 1 ? '' : 'es'} still use${users.length === 1 ? 's' : ''} ${storeDir} and lose${users.length === 1 ? 's' : ''} it now: ${users.slice(0, 8).join(', ')}${users.length > 8 ? ', ...' : ''}\n`);
    }
    // Those in mount namespaces of their own (a nix-daemon run as root) keep a copy of this
    // mount, dead once the daemon exits, also after the next mount here.
    const elsewhere = otherNamespaceUsers(storeDir, pid, 'current').filter((u) => u.usesRoot);
    if (elsewhere.length > 0) {
      process.stderr.write(`local-overlay: warning: ${elsewhere.length === 1 ? 'a process that uses' : `${elsewhere.length} processes that use`} ${root} ${elsewhere.length === 1 ? 'sees' : 'see'} this mount from a mount namespace of ${elsewhere.length === 1 ? 'its' : 'their'} own: ${elsewhere.slice(0, 8).map((u) => `${u.pid} (${u.comm})`).join(', ')}${elsewhere.length > 8 ? ', ...' : ''}. `
        + `${elsewhere.length === 1 ? 'It loses' : 'They lose'} it now and ${elsewhere.length === 1 ? 'sees' : 'see'} it dead ("Transport endpoint is not connected") until restarted, after the next mount too\n`);
    }
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + timeoutS * 1000;
    while (processAlive(pid) && Date.now() < deadline) await sleep(50);
    if (processAlive(pid)) {
      if (force) return forceUnmount(root, storeDir, pid);
      const stopped = isStopped(pid) ? `; it is stopped (SIGSTOP, a debugger): \`kill -CONT ${pid}\` lets it act on the SIGTERM sent, or` : ';';
      throw new LocalOverlayError('timeout', `daemon ${pid} did not exit within ${timeoutS} s; ${stuckWhere(pid)}${rec?.logFile ? `; its log: ${rec.logFile}` : ''}${stopped} \`unmount --force\` aborts the mount's connection and kills it`);
    }
    if (!isMountPoint(storeDir)) {
      process.stdout.write(`unmounted ${storeDir}\n`);
      return EXIT.ok;
    }
  }
  // No daemon of this root runs (killed, crashed): its record and socket are leftovers.
  const leftovers = readRecord(root) !== null || fs.existsSync(controlSocketPath(root));
  if (leftovers) removeLeftovers(root);
  if (isMountPoint(storeDir)) {
    // A stale mount: detach it, if it is one of ours.
    const type = mountType(storeDir);
    if (type !== 'fuse.local-overlay') {
      throw new LocalOverlayError('not-local-overlay', `${storeDir} is a ${type ?? 'unknown'} mount, not a local-overlay one: not unmounted`);
    }
    if (force) return forceUnmount(root, storeDir, null);
    execFileSync('fusermount', ['-uz', storeDir], { stdio: 'pipe' });
    process.stdout.write(`unmounted ${storeDir} (no daemon was serving it)\n`);
    return EXIT.ok;
  }
  throw new LocalOverlayError('not-mounted', `${storeDir} is not mounted`);
}

/**
 * The end of `unmount --force`: aborts the mount's FUSE connection first, so that every request
 * waiting on the daemon fails and no thread of the daemon stays in the kernel waiting for one
 * (which would keep the device open, and the mount hung, after a kill), then kills the daemon
 * and detaches the mount. What the daemon had not committed is rolled back by SQLite at the
 * next open, as after a crash.
 */
async function forceUnmount(root: string, storeDir: string, pid: number | null): Promise<number> {
  const done: string[] = [];
  let abortError = '';
  try {
    done.push(`aborted FUSE connection ${abortConnection(storeDir)}`);
  } catch (e) {
    // Killing the daemon is then all there is; it frees the mount unless a thread of it waits in the kernel.
    abortError = (e as Error).message;
    process.stderr.write(`local-overlay: warning: ${abortError}\n`);
  }
  if (pid !== null && processAlive(pid)) {
    process.kill(pid, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while (processAlive(pid) && Date.now() < deadline) await sleep(50);
    if (processAlive(pid)) {
      throw new LocalOverlayError('timeout', `daemon ${pid} did not exit within 5 s of SIGKILL${abortError ? ` (its connection could not be aborted: ${abortError})` : ', its connection aborted'}; ${stuckWhere(pid)}`);
    }
    done.push(`killed daemon ${pid}`);
  }
  removeLeftovers(root);
  if (isMountPoint(storeDir)) {
    execFileSync('fusermount', ['-uz', storeDir], { stdio: 'pipe' });
    done.push('detached the mount');
  }
  process.stdout.write(`unmounted ${storeDir} (forced: ${done.join(', ')})\n`);
  return EXIT.ok;
}

/** Whether every thread of `pid` is stopped (state T or t). */
function isStopped(pid: number): boolean {
  try {
    const tasks = fs.readdirSync(`/proc/${pid}/task`);
    return tasks.length > 0 && tasks.every((tid) => /^[Tt]$/.test(procState(`/proc/${pid}/task/${tid}/stat`)));
  } catch {
    return false;
  }
}

/**
 * The daemon's pid as its control socket tells it, when daemon.json does not name it (a record
 * damaged or rewritten): only if that pid is this root's daemon (isDaemonOf).
 */
async function pidFromControl(root: string): Promise<number | null> {
  try {
    const reply = await controlRequest(controlSocketPath(root), { cmd: 'status' }, 2000);
    const pid = (reply.status as { pid?: unknown } | undefined)?.pid;
    return typeof pid === 'number' && isDaemonOf(pid, root) ? pid : null;
  } catch {
    return null;
  }
}

/**
 * Processes (other than the daemon and this one) with their working dir, root, an open file or
 * a mapping inside `storeDir`, as `PID (comm)`. Reads /proc only: nothing touches the mount.
 */
export function storeUsers(storeDir: string, daemonPid: number): string[] {
  const inside = (p: string): boolean => p === storeDir || p.startsWith(`${storeDir}/`);
  const users: string[] = [];
  for (const ent of fs.readdirSync('/proc')) {
    const pid = Number(ent);
    if (!Number.isInteger(pid) || pid === daemonPid || pid === process.pid) continue;
    const link = (l: string): string => { try { return fs.readlinkSync(`/proc/${pid}/${l}`); } catch { return ''; } };
    let uses = inside(link('cwd')) || inside(link('root'));
    if (!uses) {
      try { uses = fs.readdirSync(`/proc/${pid}/fd`).some((fd) => inside(link(`fd/${fd}`))); } catch { /* gone, or not ours to see */ }
    }
    if (!uses) {
      try { uses = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').includes(` ${storeDir}/`); } catch { /* likewise */ }
    }
    if (!uses) continue;
    let comm = '?';
    try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* gone */ }
    users.push(`${pid} (${comm})`);
  }
  return users;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
