import { registerPosixTable } from './posix-table';

// The POSIX table (posix-table.ts) against mounts as users run them: native fast path on.
registerPosixTable({ title: 'fast path', mountArgs: [] });
