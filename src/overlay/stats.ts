/** Counters a running mount keeps for `status`; incrementing one is a property add. */
export type Counter =
  | 'upper' | 'lower' | 'miss' | 'refused'
  | 'closureSyncs' | 'rowsMirrored' | 'rowsCopied'
  /** Lazy copies that took more than one transaction, and torn lower reads they read again (closure-pieces.ts). */
  | 'closuresInPieces' | 'tornReads';

export type TraceFn = (kind: string, path: string, detail: string, durationMs?: number) => void;

export class OverlayStats {
  readonly counters: Record<Counter, number> = {
    upper: 0, lower: 0, miss: 0, refused: 0, closureSyncs: 0, rowsMirrored: 0, rowsCopied: 0, closuresInPieces: 0, tornReads: 0,
  };
  readonly ops: Record<string, number> = Object.create(null);
  /** Set only while tracing is on: when off, a call site costs one property read. */
  trace: TraceFn | undefined;

  count(c: Counter, n = 1): void {
    this.counters[c] += n;
  }

  op(name: string): void {
    this.ops[name] = (this.ops[name] ?? 0) + 1;
  }
}
