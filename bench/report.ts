import { PEER_LABEL, PeerName } from './peers';
import { FsSample, Results } from './results';
import { fmt, fmtRange, max, median, percentile } from './stats';
import { LAZY_BASE, LAZY_EXTENSION } from './synth';
import { FS_WORKLOAD_DEFS, FS_WORKLOADS, FsWorkloadId, Phase } from './workloads';

/**
 * Renders a run as Markdown: where it ran, the throughput table (median and min–max over the
 * repetitions), ratios local-overlay / peer of the medians, the FUSE daemons' CPU and peak
 * RSS, the metadata workloads, and the issue's targets with a verdict each.
 */
const LO: PeerName = 'local-overlay';
const FO: PeerName[] = ['fuse-overlayfs', 'fuse-overlayfs-tuned'];
const MiB = 2 ** 20;

type Row = { workload: FsWorkloadId; phase: Phase };

function rows(r: Results): Row[] {
  const out: Row[] = [];
  for (const w of FS_WORKLOADS) {
    for (const phase of FS_WORKLOAD_DEFS[w].phases) {
      if (r.fs.some((s) => s.workload === w && s.phase === phase)) out.push({ workload: w, phase });
    }
  }
  return out;
}

function samples(r: Results, row: Row, peer: PeerName): FsSample[] {
  return r.fs.filter((s) => s.workload === row.workload && s.phase === row.phase && s.peer === peer);
}

function values(r: Results, row: Row, peer: PeerName): number[] {
  return samples(r, row, peer).flatMap((s) => (s.value === undefined ? [] : [s.value]));
}

/** local-overlay's median throughput over the peer's (higher is better for local-overlay). */
function ratio(r: Results, row: Row, peer: PeerName): number {
  return median(values(r, row, LO)) / median(values(r, row, peer));
}

function rowLabel(row: Row): string {
  const d = FS_WORKLOAD_DEFS[row.workload];
  const phase = d.phases.length > 1 ? ` (${row.phase})` : '';
  return `${row.workload}${phase}`;
}

function table(head: string[], body: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map((_, i) => (i === 0 ? '---' : '---:'))), ...body.map(line)].join('\n');
}

function header(r: Results): string {
  const m = r.machine;
  const s = r.store;
  const when = r.startedAt.replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  return [
    `Run: ${when}, profile \`${r.profile.name}\`, ${r.reps} repetitions, ${(r.durationS / 60).toFixed(1)} min in all (\`${r.command}\`), commit ${m.commit}.`,
    `Machine: ${m.cpu}, nproc ${m.nproc}, ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, disk ${m.disk}; ${m.node}, ${m.nix}, ${m.fuseOverlayfs}.`,
    `Lower store: ${s.objects.toLocaleString('en-US')} objects (${s.validPaths.toLocaleString('en-US')} valid paths, ${s.derivationOutputs} derivation outputs, ${s.refs.toLocaleString('en-US')} references), ` +
      `${s.regularFiles.toLocaleString('en-US')} files, ${s.directories.toLocaleString('en-US')} directories, ${s.symlinks.toLocaleString('en-US')} symlinks, ` +
      `${(s.bytes / MiB).toFixed(0)} MiB in files (NAR ${(s.narBytes / MiB).toFixed(0)} MiB), big file ${(s.bigFile.size / MiB).toFixed(0)} MiB.`,
  ].join('\n');
}

function throughputTable(r: Results): string {
  const body = rows(r).map((row) => [
    rowLabel(row), FS_WORKLOAD_DEFS[row.workload].unit,
    ...r.peers.map((p) => {
      const errs = samples(r, row, p).filter((s) => s.error).length;
      const notes = samples(r, row, p).filter((s) => s.note).length;
      return fmtRange(values(r, row, p)) + (errs ? ` (${errs} failed)` : '') + (notes ? ' †' : '');
    }),
  ]);
  return table(['workload', 'unit', ...r.peers.map((p) => PEER_LABEL[p])], body);
}

function ratioTable(r: Results): string {
  const others = r.peers.filter((p) => p !== LO);
  const body = rows(r).map((row) => [rowLabel(row), ...others.map((p) => `${fmt(ratio(r, row, p))}×`)]);
  return table(['workload', ...others.map((p) => `÷ ${PEER_LABEL[p]}`)], body);
}

function resourceTable(r: Results): string {
  const daemons = r.peers.filter((p) => p === LO || FO.includes(p));
  const body = rows(r).map((row) => [
    rowLabel(row),
    ...daemons.map((p) => fmt(median(samples(r, row, p).flatMap((s) => (s.cpuS === null ? [] : [s.cpuS]))))),
    ...daemons.map((p) => fmt(median(samples(r, row, p).flatMap((s) => (s.peakRssKiB === null ? [] : [s.peakRssKiB / 1024]))))),
    ...daemons.map((p) => fmt(median(samples(r, row, p).flatMap((s) => (s.anonKiB === null || s.anonKiB === undefined ? [] : [s.anonKiB / 1024]))))),
  ]);
  return table(['workload', ...daemons.map((p) => `CPU s ${PEER_LABEL[p]}`), ...daemons.map((p) => `peak RSS MiB ${PEER_LABEL[p]}`),
    ...daemons.map((p) => `private MiB ${PEER_LABEL[p]}`)], body);
}

function metadataTable(r: Results): string {
  const body: string[][] = [];
  if (r.mirror.length) {
    const rowsN = r.mirror[0].rows.toLocaleString('en-US');
    body.push([`mirror import at mount, ${rowsN}-path lower DB: rows ÷ (mount time − mount time over an empty DB)`, `${fmtRange(r.mirror.map((m) => m.mountRowsPerS))} rows/s`]);
    body.push(['mount --metadata mirror over it / over an empty lower DB (wall)', `${fmtRange(r.mirror.map((m) => m.mountSeconds))} s / ${fmtRange(r.mirror.map((m) => m.baselineMountSeconds))} s`]);
    body.push([`Mirror.importNew alone, row by row into a new upper DB (own process)`, `${fmtRange(r.mirror.map((m) => m.moduleRowsPerS))} rows/s`]);
    body.push([`daemon peak RSS after that mount`, `${fmt(median(r.mirror.flatMap((m) => (m.daemonPeakRssKiB ? [m.daemonPeakRssKiB / 1024] : []))))} MiB`]);
  }
  if (r.lazy.length) {
    const sizes = Object.keys(r.lazy[0].firstMs).map(Number).sort((a, b) => a - b);
    for (const s of sizes) {
      const all = r.lazy.flatMap((l) => l.firstMs[s] ?? []);
      body.push([`lazy first lookup, ${s.toLocaleString('en-US')}-path closure (${all.length} lookups)`, `p50 ${fmt(percentile(all, 50))} ms, p99 ${fmt(percentile(all, 99))} ms, max ${fmt(max(all))} ms`]);
    }
    const ext = r.lazy.flatMap((l) => l.extensionMs ?? []);
    if (ext.length) {
      body.push([`lazy first lookup, ${LAZY_EXTENSION} new paths over a copied ${LAZY_BASE.toLocaleString('en-US')}-path closure (${ext.length} lookups)`, `p50 ${fmt(percentile(ext, 50))} ms, p99 ${fmt(percentile(ext, 99))} ms, max ${fmt(max(ext))} ms`]);
    }
    const k = r.lazy.flatMap((l) => l.kernelCachedMs);
    const d = r.lazy.flatMap((l) => l.daemonCachedMs);
    body.push([`cached lookup, kernel entry cache (${k.length} lookups)`, `p50 ${fmt(percentile(k, 50) * 1000)} µs, p99 ${fmt(percentile(k, 99) * 1000)} µs`]);
    body.push([`cached lookup after dropping dentries, answered by the daemon (${d.length})`, `p50 ${fmt(percentile(d, 50) * 1000)} µs, p99 ${fmt(percentile(d, 99) * 1000)} µs`]);
    const bad = r.lazy.filter((l) => l.upperRows !== l.expectedRows);
    body.push(['rows in the merged DB after the lazy lookups', bad.length ? `MISMATCH: ${bad.map((l) => `${l.upperRows}≠${l.expectedRows}`).join(', ')}` : `${r.lazy[0].expectedRows.toLocaleString('en-US')} (= every closure)`]);
    const wal = r.lazy.flatMap((l) => (typeof l.walBytes === 'number' ? [l.walBytes / 1024 / 1024] : []));
    if (wal.length) body.push(['the merged DB\'s WAL file after the first lookups', `${fmt(median(wal))} MiB (${fmt(Math.min(...wal))}–${fmt(max(wal))})`]);
    body.push(['lazy daemon during first lookups: CPU, peak RSS', `${fmt(median(r.lazy.flatMap((l) => (l.daemonCpuS === null ? [] : [l.daemonCpuS]))))} s, ${fmt(median(r.lazy.flatMap((l) => (l.daemonPeakRssKiB ? [l.daemonPeakRssKiB / 1024] : []))))} MiB`]);
  }
  if (r.follower.length) {
    const lag = r.follower.flatMap((f) => f.lagMs);
    const db = r.follower.flatMap((f) => f.dbMs);
    body.push([`follower lag: path added to the lower store → valid in merged DB and visible (${lag.length} paths)`,
      `p50 ${fmt(percentile(lag, 50))} ms, max ${fmt(max(lag))} ms (DB row p50 ${fmt(percentile(db, 50))} ms)${r.follower.every((f) => f.nixValid) ? '; nix-store --check-validity agrees' : '; NIX DISAGREES'}`]);
  }
  return body.length ? table(['measurement', 'result'], body) : '';
}

interface Verdict { target: string; measured: string; pass: boolean | null }

function targets(r: Results): Verdict[] {
  const out: Verdict[] = [];
  const has = (p: PeerName): boolean => r.peers.includes(p) && r.peers.includes(LO);
  const fos = FO.filter(has);
  const vs = (row: Row, min: number, peers: PeerName[]): { text: string; pass: boolean | null } => {
    const parts: string[] = [];
    let pass: boolean | null = null;
    for (const p of peers) {
      const x = ratio(r, row, p);
      if (!Number.isFinite(x)) continue;
      parts.push(`${fmt(x)}× ${PEER_LABEL[p]}`);
      pass = (pass ?? true) && x >= min;
    }
    return { text: parts.join(', ') || '–', pass };
  };
  const present = (row: Row): boolean => r.fs.some((s) => s.workload === row.workload && s.phase === row.phase);
  for (const w of ['walk', 'ls', 'lstat', 'big'] as FsWorkloadId[]) {
    const row: Row = { workload: w, phase: 'warm' };
    if (!present(row)) continue;
    const a = vs(row, 1.0, fos);
    const b = vs(row, 0.8, has('kernel') ? ['kernel'] : []);
    out.push({ target: `warm ${w} ≥1.0× fuse-overlayfs and ≥0.8× kernel`, measured: `${a.text}; ${b.text}`, pass: a.pass === null && b.pass === null ? null : (a.pass ?? true) && (b.pass ?? true) });
  }
  for (const w of ['read', 'verify'] as FsWorkloadId[]) {
    const row: Row = { workload: w, phase: 'warm' };
    if (!present(row)) continue;
    const a = vs(row, 1.0, fos);
    out.push({ target: `warm ${w} ≥1.0× fuse-overlayfs`, measured: a.text, pass: a.pass });
  }
  for (const row of rows(r).filter((x) => x.phase === 'cold' || x.workload === 'missing')) {
    const a = vs(row, 0.8, fos);
    out.push({ target: `${rowLabel(row)} ≥0.8× fuse-overlayfs`, measured: a.text, pass: a.pass });
  }
  if (present({ workload: 'write', phase: 'warm' })) {
    const a = vs({ workload: 'write', phase: 'warm' }, 1.0, fos);
    out.push({ target: `write ${r.profile.writeFiles.toLocaleString('en-US')} files + sync ≥1.0× fuse-overlayfs`, measured: a.text, pass: a.pass });
  }
  const walkRss = (p: PeerName): number => max((['cold', 'warm'] as Phase[]).map((phase) =>
    median(samples(r, { workload: 'walk', phase }, p).flatMap((s) => (s.peakRssKiB === null ? [] : [s.peakRssKiB])))).filter(Number.isFinite));
  if (present({ workload: 'walk', phase: 'cold' }) && fos.length) {
    const parts = fos.map((p) => ({ p, x: walkRss(LO) / walkRss(p) })).filter((e) => Number.isFinite(e.x));
    out.push({
      target: 'daemon peak RSS during walk ≤1.5× fuse-overlayfs',
      measured: `${fmt(walkRss(LO) / 1024)} MiB: ${parts.map((e) => `${fmt(e.x)}× ${PEER_LABEL[e.p]}`).join(', ')}`,
      pass: parts.length ? parts.every((e) => e.x <= 1.5) : null,
    });
  }
  if (r.mirror.length) {
    const v = median(r.mirror.map((m) => m.mountRowsPerS));
    const rowByRow = median(r.mirror.map((m) => m.moduleRowsPerS));
    out.push({ target: 'mirror import ≥200k rows/s (at mount)', measured: `${fmt(v)} rows/s (row-by-row importNew: ${fmt(rowByRow)} rows/s)`, pass: v >= 200_000 });
  }
  if (r.lazy.length && r.lazy[0].firstMs[1000]) {
    const p99 = percentile(r.lazy.flatMap((l) => l.firstMs[1000] ?? []), 99);
    out.push({ target: 'lazy first lookup, 1,000-path closure, p99 ≤20 ms', measured: `${fmt(p99)} ms`, pass: p99 <= 20 });
  }
  if (r.follower.length) {
    const m = max(r.follower.flatMap((f) => f.lagMs));
    out.push({ target: 'path added to the lower store visible and valid ≤2 s', measured: `max ${fmt(m)} ms`, pass: m <= 2000 && r.follower.every((f) => f.nixValid) });
  }
  return out;
}

function targetTable(r: Results): string {
  const t = targets(r);
  const mark = (p: boolean | null): string => (p === null ? 'n/a' : p ? 'met' : '**not met**');
  return table(['target', 'measured (local-overlay ÷ peer, medians)', 'verdict'], t.map((v) => [v.target, v.measured, mark(v.pass)]));
}

export function renderMarkdown(r: Results): string {
  const parts = [header(r)];
  if (rows(r).length) {
    parts.push(
      '',
      `Throughput, median (min–max) over ${r.reps} repetitions; higher is better. † = a run reported a problem (see the JSON).`,
      '',
      throughputTable(r),
      '',
      'Ratios local-overlay ÷ peer (of the medians above; >1 means local-overlay is faster).',
      '',
      ratioTable(r),
      '',
      'FUSE daemons during each workload: CPU time (user + system), peak RSS, and private memory (RssAnon: RSS without file pages such as the program itself) at its end; medians.',
      '',
      resourceTable(r),
    );
  }
  const meta = metadataTable(r);
  if (meta) parts.push('', 'Metadata (local-overlay only).', '', meta);
  parts.push('', 'Targets (issue #4; against each fuse-overlayfs variant measured).', '', targetTable(r));
  if (r.warnings?.length) parts.push('', ...r.warnings.map((w) => `Warning: ${w}.`));
  if (r.errors.length) parts.push('', 'Errors during the run:', '', ...r.errors.map((e) => `- ${e.replace(/\n/g, ' ').slice(0, 300)}`));
  return parts.join('\n') + '\n';
}
