/**
 * Progress for anything that can take more than a second: a bar redrawn in place on a
 * terminal, a plain line every 10% otherwise (logs, CI). Always on stderr.
 */
export function progress(label: string): (done: number, total: number) => void {
  const tty = process.stderr.isTTY === true;
  let lastPct = -1;
  let shown = false;
  const started = Date.now();
  return (done, total) => {
    // Nothing for a run that ends within its first second; once shown, shown to the end.
    if (!shown && Date.now() - started < 1000) return;
    shown = true;
    const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
    if (tty) {
      const width = 30;
      const fill = Math.round((pct / 100) * width);
      process.stderr.write(`\r${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${done}/${total}`);
      if (done >= total) process.stderr.write('\n');
    } else if (pct >= lastPct + 10 || (done >= total && pct !== lastPct)) {
      process.stderr.write(`${label}: ${done}/${total} (${pct}%)\n`);
      lastPct = pct;
    }
  };
}
