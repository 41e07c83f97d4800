import { registerPosixTable } from './posix-table';

// The POSIX table (posix-table.ts) with every request answered by the JS handlers, as while
// tracing: the fallback behind the native fast path must keep every row too.
registerPosixTable({ title: 'JS only', mountArgs: ['--no-fast-path'] });
