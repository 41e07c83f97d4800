import { LocalOverlayError } from '../util/errno';

/**
 * Exit codes (README "Exit codes"):
 *   0  success
 *   1  the operation failed (I/O, a daemon that did not answer, a check that found problems)
 *   2  invalid usage or input (bad flags, missing or unsuitable lower/upper/merged dirs)
 *   3  not mounted / no such mount
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, notMounted: 3 } as const;

const USAGE_CODES = /^(lower-|upper-|work-|merged-|log-|schema-|inside-|contains-|mountpoint-|usage|no-dev-fuse|dev-fuse-access|no-fusermount|no-libfuse|fuse-native)/;

/** The one error path of every command: handlers return an exit code or throw. */
export async function runCommand(f: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await f();
  } catch (err) {
    if (err instanceof LocalOverlayError) {
      process.stderr.write(`local-overlay: error: ${err.message}\n`);
      process.exitCode = err.code === 'not-mounted' ? EXIT.notMounted : USAGE_CODES.test(err.code) ? EXIT.usage : EXIT.failed;
    } else {
      process.stderr.write(`local-overlay: error: ${err instanceof Error ? err.message : String(err)}\n`);
      if (process.env.LOCAL_OVERLAY_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
      process.exitCode = EXIT.failed;
    }
  }
}
