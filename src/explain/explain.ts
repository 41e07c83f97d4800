import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowerDb } from '../metadata/lower-db';
import { PathRow, RowDifference, rowDifferences } from '../metadata/rows';
import { UpperDb } from '../metadata/upper-db';
import { MountConfig, rootLayout } from '../mount/config';
import { isWhiteoutDevice } from '../layers/layers';
import { isBookkeepingName, isHashPart, isStoreObjectName } from '../store/store-path';

const STORE_DIR = '/nix/store';

/** Why a top-level name resolves the way it does. Stable: part of `explain --json`. */
export type Reason =
  | 'upper-object'      // only the upper layer has it
  | 'lower-object'      // only the lower layer has it
  | 'duplicate'         // both layers have it; the upper copy is served
  | 'whiteout'          // an upper whiteout hides a lower object of that name
  | 'bookkeeping'       // a Nix bookkeeping name (.links, *.lock, *.drv.chroot, ...), upper only
  | 'lower-bookkeeping' // the lower store's own bookkeeping entry: never shown
  | 'lower-unregistered' // in the lower dir, not valid in the lower DB: not shown until it is
  | 'absent';

export interface DbRowReport {
  valid: boolean;
  registrationTime?: number;
  narHash?: string;
  narSize?: number | null;
  deriver?: string | null;
  signatures?: string[];
  ca?: string | null;
  references?: string[];
}

export interface Explanation {
  input: string;
  storePath: string | null;
  name: string | null;
  subPath: string;
  layer: 'upper' | 'lower' | null;
  reason: Reason;
  realPath: string | null;
  inUpper: boolean;
  inLower: boolean;
  whiteout: 'device' | 'wh-file' | null;
  appearedAfterMount: boolean;
  upperDb: DbRowReport | null;
  lowerDb: DbRowReport | null;
  dbRowsEqual: boolean | null;
  /** The fields in which the upper row differs from the lower one (as verify's row-differs). */
  dbRowDifferences: RowDifference[] | null;
  closure: { complete: boolean; size: number; missing: string[] } | null;
  references: { path: string; layer: 'upper' | 'lower' | null }[];
}

/** What explain reads: a merged root's layers and DBs, whether mounted or not. */
export class Explainer {
  private readonly upperDb: UpperDb | null;
  private readonly lowerDb: LowerDb | null;
  private readonly lowerStore: string;

  /**
   * `mounted`: the running mount's start, to tell lower objects that appeared after it: by the
   * lower DB row id when the mount recorded the highest one at start (exact), else by
   * registration time (whole seconds).
   */
  constructor(readonly cfg: MountConfig, readonly mounted: { at: Date; lowerMaxId?: number } | null) {
    this.lowerStore = rootLayout(cfg.lowerRoot).storeDir;
    this.upperDb = UpperDb.openSnapshot(rootLayout(cfg.mergedRoot).dbDir);
    const lowerFile = rootLayout(cfg.lowerRoot).dbFile;
    this.lowerDb = fs.existsSync(lowerFile) ? new LowerDb(lowerFile) : null;
  }

  close(): void {
    this.upperDb?.close();
    this.lowerDb?.close();
  }

  /** Explains one path: a merged path, a store path, a name or a bare hash part. */
  explain(input: string): Explanation {
    const { name, subPath } = this.nameOf(input);
    const base: Explanation = {
      input, storePath: null, name, subPath, layer: null, reason: 'absent', realPath: null,
      inUpper: false, inLower: false, whiteout: null, appearedAfterMount: false,
      upperDb: null, lowerDb: null, dbRowsEqual: null, dbRowDifferences: null, closure: null, references: [],
    };
    if (name === null) return base;
    const storePath = `${STORE_DIR}/${name}`;
    base.storePath = isStoreObjectName(name) ? storePath : null;

    const upperEntry = lstat(path.join(this.cfg.upperDir, name));
    const whFile = lstat(path.join(this.cfg.upperDir, `.wh.${name}`)) !== null;
    const whDev = upperEntry !== null && isWhiteoutDevice(path.join(this.cfg.upperDir, name));
    const lowerEntry = lstat(path.join(this.lowerStore, name));
    // As the mount decides (layers.ts, LowerRegistry): a lower entry shows once its DB lists it.
    const lowerVisible = lowerEntry !== null && isStoreObjectName(name)
      && (this.lowerDb ? this.lowerDb.isValid(`${STORE_DIR}/${name}`) : !isBookkeepingName(name));
    base.inUpper = upperEntry !== null && !whDev;
    base.inLower = lowerEntry !== null;
    base.whiteout = whDev ? 'device' : whFile ? 'wh-file' : null;

    if (base.whiteout) {
      base.reason = 'whiteout';
    } else if (base.inUpper) {
      base.layer = 'upper';
      const upperIsObject = isStoreObjectName(name) && (!isBookkeepingName(name) || this.upperDb?.pathRow(`${STORE_DIR}/${name}`) !== undefined);
      base.reason = lowerVisible ? 'duplicate' : upperIsObject ? 'upper-object' : 'bookkeeping';
    } else if (lowerVisible) {
      base.layer = 'lower';
      base.reason = 'lower-object';
    } else if (lowerEntry !== null) {
      base.reason = isStoreObjectName(name) && !isBookkeepingName(name) ? 'lower-unregistered' : 'lower-bookkeeping';
    }
    if (base.layer) base.realPath = path.join(base.layer === 'upper' ? this.cfg.upperDir : this.lowerStore, name, subPath);

    if (base.storePath) {
      const upperRow = this.upperDb?.pathRow(storePath);
      const lowerRow = this.lowerDb?.pathRow(storePath);
      const upperRefs = upperRow ? this.upperDb!.references(upperRow.id) : [];
      const lowerRefs = lowerRow ? this.lowerDb!.references(lowerRow.id) : [];
      base.upperDb = upperRow ? report(upperRow, upperRefs) : { valid: false };
      base.lowerDb = this.lowerDb ? (lowerRow ? report(lowerRow, lowerRefs) : { valid: false }) : null;
      base.dbRowDifferences = upperRow && lowerRow ? rowDifferences(upperRow, upperRefs, lowerRow, lowerRefs) : null;
      base.dbRowsEqual = base.dbRowDifferences ? base.dbRowDifferences.length === 0 : null;
      if (lowerRow && this.mounted) {
        base.appearedAfterMount = this.mounted.lowerMaxId !== undefined
          ? lowerRow.id > this.mounted.lowerMaxId
          : lowerRow.registrationTime * 1000 > this.mounted.at.getTime();
      }
      if (upperRow) base.closure = this.closureIn(storePath);
      const refs = base.upperDb.references ?? base.lowerDb?.references ?? [];
      base.references = refs.map((r) => ({ path: r, layer: this.layerOf(r.slice(STORE_DIR.length + 1)) }));
    }
    return base;
  }

  /** Whether every path in the closure of `storePath` has a row in the upper DB. */
  private closureIn(storePath: string): { complete: boolean; size: number; missing: string[] } {
    const seen = new Set<string>([storePath]);
    const missing: string[] = [];
    const queue = [storePath];
    while (queue.length > 0) {
      const p = queue.pop() as string;
      const row = this.upperDb!.pathRow(p);
      if (!row) { missing.push(p); continue; }
      for (const r of this.upperDb!.references(row.id)) if (!seen.has(r)) { seen.add(r); queue.push(r); }
    }
    return { complete: missing.length === 0, size: seen.size, missing };
  }

  private layerOf(name: string): 'upper' | 'lower' | null {
    const up = path.join(this.cfg.upperDir, name);
    if (lstat(up) !== null && !isWhiteoutDevice(up)) return 'upper';
    if (lstat(path.join(this.cfg.upperDir, `.wh.${name}`)) !== null || isWhiteoutDevice(up)) return null;
    return lstat(path.join(this.lowerStore, name)) !== null ? 'lower' : null;
  }

  /** The top-level name and the rest, from any of the accepted forms of a path. */
  private nameOf(input: string): { name: string | null; subPath: string } {
    const mergedStore = rootLayout(this.cfg.mergedRoot).storeDir;
    const abs = input.startsWith('/') ? path.normalize(input) : input;
    for (const prefix of [mergedStore, STORE_DIR, this.cfg.upperDir, this.lowerStore]) {
      if (abs.startsWith(prefix + '/')) {
        const rest = abs.slice(prefix.length + 1);
        const slash = rest.indexOf('/');
        return slash < 0 ? { name: rest, subPath: '' } : { name: rest.slice(0, slash), subPath: rest.slice(slash + 1) };
      }
    }
    if (isHashPart(input)) return { name: this.byHash(input), subPath: '' };
    if (!input.includes('/')) return { name: input, subPath: '' };
    return { name: null, subPath: '' };
  }

  private byHash(hash: string): string | null {
    for (const db of [this.upperDb?.db, this.lowerDb?.conn()]) {
      const row = db?.prepare('SELECT path FROM ValidPaths WHERE path >= ? AND path < ? LIMIT 1')
        .get(`${STORE_DIR}/${hash}-`, `${STORE_DIR}/${hash}.`) as { path: string } | undefined;
      if (row) return row.path.slice(STORE_DIR.length + 1);
    }
    for (const dir of [this.cfg.upperDir, this.lowerStore]) {
      try {
        const hit = fs.readdirSync(dir).find((n) => n.startsWith(`${hash}-`) && !n.endsWith('.lock'));
        if (hit) return hit;
      } catch { /* layer missing */ }
    }
    return null;
  }
}

function lstat(p: string): fs.Stats | null {
  return fs.lstatSync(p, { throwIfNoEntry: false }) ?? null;
}

function report(row: PathRow, references: string[]): DbRowReport {
  return {
    valid: true, registrationTime: row.registrationTime, narHash: row.hash, narSize: row.narSize,
    deriver: row.deriver, signatures: row.sigs ? row.sigs.split(' ').filter(Boolean) : [], ca: row.ca,
    references: [...references].sort(),
  };
}

const REASON_TEXT: Record<Reason, string> = {
  'upper-object': 'upper object (only the upper layer has it)',
  'lower-object': 'lower object (only the lower layer has it)',
  duplicate: 'duplicate: both layers have it, the upper copy is served (`local-overlay optimise` removes it)',
  whiteout: 'hidden: an upper whiteout hides the lower object',
  bookkeeping: 'Nix bookkeeping name, kept in the upper layer',
  'lower-bookkeeping': 'the lower store\'s own bookkeeping entry, never shown in the merged view',
  'lower-unregistered': 'not shown: the lower store dir has it, but the lower DB does not list it as valid (an add or build there not yet registered, or its garbage); it shows once registered',
  absent: 'in neither layer',
};

/** A row field's value as the human report shows it. */
function value(v: RowDifference['upper']): string {
  if (v === null || v === '') return '(none)';
  if (Array.isArray(v)) return v.length === 0 ? '(none)' : v.join(' ');
  return String(v);
}

/** The short aligned human report. */
export function formatExplanation(e: Explanation): string {
  const lines: string[] = [e.storePath ? `${e.storePath}${e.subPath ? '/' + e.subPath : ''}` : e.input];
  const row = (k: string, v: string): void => { lines.push(`  ${k.padEnd(13)} ${v}`); };
  row('resolves to', `${e.layer ?? 'nothing'}: ${REASON_TEXT[e.reason]}${e.appearedAfterMount ? '; appeared in the lower store after the mount' : ''}`);
  if (e.realPath) row('real path', e.realPath);
  const db = (r: DbRowReport | null): string => {
    if (r === null) return 'unavailable';
    if (!r.valid) return 'no row (not valid)';
    return `valid, registered ${new Date((r.registrationTime ?? 0) * 1000).toISOString()}, ${r.narHash}, ${r.narSize ?? '?'} bytes, ${r.references?.length ?? 0} references`;
  };
  if (e.storePath) {
    const diffs = e.dbRowDifferences ?? [];
    row('upper DB', db(e.upperDb) + (e.dbRowsEqual === true ? ' (equal to the lower row)' : e.dbRowsEqual === false ? ` (DIFFERS from the lower row: ${diffs.map((d) => d.field).join(', ')})` : ''));
    row('lower DB', db(e.lowerDb));
    for (const d of diffs) row(`  ${d.field}`, `upper ${value(d.upper)}, lower ${value(d.lower)}`);
    if (e.closure) row('closure', e.closure.complete ? `complete in the upper DB (${e.closure.size} ${e.closure.size === 1 ? 'path' : 'paths'})` : `INCOMPLETE in the upper DB: missing ${e.closure.missing.join(', ')}`);
    for (const [i, r] of e.references.entries()) row(i === 0 ? 'references' : '', `${r.path} (${r.layer ?? 'missing'})`);
  }
  return lines.join('\n');
}
