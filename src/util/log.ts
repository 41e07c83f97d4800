import { appendFileSync } from 'node:fs';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/**
 * A small leveled logger: lines go to stderr, or appended to a file when one is set.
 * The daemon logs operational events here; per-operation tracing has its own channel.
 */
export class Logger {
  constructor(private level: LogLevel = 'info', private file?: string) {}

  setLevel(level: LogLevel): void { this.level = level; }
  setFile(file: string | undefined): void { this.file = file; }
  enabled(level: LogLevel): boolean { return ORDER[level] <= ORDER[this.level]; }

  error(msg: string): void { this.write('error', msg); }
  warn(msg: string): void { this.write('warn', msg); }
  info(msg: string): void { this.write('info', msg); }
  debug(msg: string): void { this.write('debug', msg); }

  private write(level: LogLevel, msg: string): void {
    if (!this.enabled(level)) return;
    const line = `${new Date().toISOString()} ${level.padEnd(5)} ${msg}\n`;
    if (this.file) {
      try { appendFileSync(this.file, line, { mode: 0o644 }); return; } catch { /* fall back to stderr */ }
    }
    process.stderr.write(line);
  }
}

export const log = new Logger((process.env.LOCAL_OVERLAY_LOG_LEVEL as LogLevel) || 'info');
