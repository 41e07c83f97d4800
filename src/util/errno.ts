import { constants } from 'node:os';

/**
 * One errno type for the whole filesystem: a positive POSIX error number, 0 meaning success.
 * Layer and overlay functions return an Errno (or a value) instead of throwing on the hot path;
 * the FUSE adapter negates it once at the boundary.
 */
export type Errno = number;

export const E = constants.errno;

export const OK: Errno = 0;

/** A node:fs error (or anything else) as an Errno; anything unexpected becomes EIO. */
export function toErrno(err: unknown): Errno {
  if (err !== null && typeof err === 'object') {
    const errno = (err as { errno?: unknown }).errno;
    if (typeof errno === 'number' && errno !== 0) return Math.abs(errno);
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code in E) return E[code as keyof typeof E];
  }
  return E.EIO;
}

/** True for an Errno, i.e. a plain number, where a function returns `T | Errno`. */
export function isErrno(x: unknown): x is Errno {
  return typeof x === 'number';
}

/** Error with a stable code, for the CLI and setup paths (not the FUSE hot path). */
export class LocalOverlayError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'LocalOverlayError';
  }
}
