/** Order statistics over the repetitions of one measurement. */

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Nearest-rank percentile (p in 0..100): with few samples p99 is the maximum. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

export function min(xs: readonly number[]): number {
  return xs.length ? Math.min(...xs) : NaN;
}

export function max(xs: readonly number[]): number {
  return xs.length ? Math.max(...xs) : NaN;
}

/** A number with 3 significant digits (thousands separated), or "–" when missing. */
export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  if (a === 0) return '0';
  return x.toPrecision(2);
}

/** "median (min–max)" of a sample list. */
export function fmtRange(xs: readonly number[]): string {
  if (xs.length === 0) return '–';
  if (xs.length === 1) return fmt(xs[0]);
  return `${fmt(median(xs))} (${fmt(min(xs))}–${fmt(max(xs))})`;
}

/** Rotates `xs` left by `k`: repetition k starts with peer k. */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  if (xs.length === 0) return [];
  const r = ((k % xs.length) + xs.length) % xs.length;
  return [...xs.slice(r), ...xs.slice(0, r)];
}
