import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Db } from '../metadata/sqlite';
import { mergedSignatures, PathRow, rowDifferences } from '../metadata/rows';
import { isWhiteoutDevice } from '../layers/layers';
import { narHash } from '../store/nar';
import { optimise } from './optimise';
import { ifPresent, RootView, STORE_DIR } from './view';

export type ProblemKind =
  | 'row-without-object'    // an upper DB row whose object is in neither layer
  | 'duplicate'             // an object in both layers
  | 'row-differs'           // an upper row that disagrees with the lower DB for a lower object
  | 'broken-closure'        // a valid path whose reference has no row
  | 'missing-row'           // a visible lower object the upper DB does not know (mirror mode)
  | 'object-without-row'    // an upper object (not also a lower one) the upper DB does not list
  | 'whiteout-hides-valid'  // a whiteout hides a lower object the upper DB says is valid
  | 'contents-differ';      // --check-contents: an upper object's NAR hash differs from its row

export interface Problem { kind: ProblemKind; path: string; detail: string; repaired: boolean }

export interface VerifyReport { checked: number; problems: Problem[]; repaired: number }

/**
 * Drops the rows of vanished objects (the lower store's GC deleted them) that no other valid
 * path refers to, once those referrers' rows are dropped too: a whole deleted chain goes in
 * one run, referrers first (Nix's schema restricts deleting a row that is referred to). Rows
 * that a path with an object still refers to stay, and say so.
 */
function dropVanished(db: Db, vanished: Map<number, Problem>, root: string): void {
  const referrers = db.prepare('SELECT referrer FROM Refs WHERE reference = ? AND referrer != ?').pluck();
  const droppable = new Set(vanished.keys());
  for (let changed = true; changed;) {
    changed = false;
    for (const id of droppable) {
      if ((referrers.all(id, id) as number[]).some((r) => !droppable.has(r))) { droppable.delete(id); changed = true; }
    }
  }
  const del = db.prepare('DELETE FROM ValidPaths WHERE id = ?');
  db.transaction(() => {
    // Newest first: Nix registers references before their referrers, so one pass mostly does.
    const left = new Set([...droppable].sort((a, b) => b - a));
    for (let progress = true; left.size > 0 && progress;) {
      progress = false;
      for (const id of left) {
        if ((referrers.all(id, id) as number[]).some((r) => left.has(r))) continue;
        del.run(id);
        left.delete(id);
        vanished.get(id)!.repaired = true;
        progress = true;
      }
    }
  })();
  for (const [id, pr] of vanished) {
    if (pr.repaired) continue;
    const kept = (referrers.all(id, id) as number[]).filter((r) => !droppable.has(r));
    pr.detail += ` (not dropped: ${kept.length} valid path${kept.length === 1 ? '' : 's'} that stay${kept.length === 1 ? 's' : ''} refer${kept.length === 1 ? 's' : ''} to it. Delete those, `
      + `\`nix-store --store ${root} --delete\` each one \`nix-store --store ${root} --query --referrers-closure ${pr.path}\` lists but this path and others verify calls row-without-object, `
      + 'rebuild what you need, then repair again)';
  }
}

/**
 * Checks the upper DB against both layers. `repair` fixes what it can without touching the
 * lower layer: rows of vanished objects are dropped unless a path with an object refers to them
 * (dropVanished), duplicates are optimised away, rows that differ from the lower DB for lower-only objects are replaced by
 * the lower's, missing rows and broken closures are copied from the lower DB, and whiteouts
 * that hide objects the DB calls valid are removed. Duplicates that running Nix clients use are
 * kept (optimise), and stay problems until a later repair removes them.
 */
export interface VerifyOptions {
  checkContents: boolean;
  repair: boolean;
  lockTimeoutS: number;
  onLockWait?: () => void;
  progress?: (done: number, total: number) => void;
  /** Mounted: has the daemon copy the closures of lower paths (it owns the merged DB's writes). */
  copyMissing?: (paths: string[]) => Promise<unknown>;
}

export async function verify(view: RootView, opts: VerifyOptions): Promise<VerifyReport> {
  const problems: Problem[] = [];
  const add = (kind: ProblemKind, p: string, detail: string): Problem => {
    const pr = { kind, path: p, detail, repaired: false };
    problems.push(pr);
    return pr;
  };
  const up = view.upperDb;
  const upperDir = view.cfg.upperDir;
  const rows = up.db.prepare('SELECT * FROM ValidPaths').all() as PathRow[];
  const inUpper = (n: string): boolean => {
    const p = path.join(upperDir, n);
    return fs.lstatSync(p, { throwIfNoEntry: false }) !== undefined && !isWhiteoutDevice(p);
  };
  const vanished = new Map<number, Problem>();
  const whiteout = (n: string): boolean => isWhiteoutDevice(path.join(upperDir, n)) || fs.existsSync(path.join(upperDir, `.wh.${n}`));

  for (const [i, row] of rows.entries()) {
    if (i % 256 === 0) opts.progress?.(i, rows.length);
    const name = row.path.slice(STORE_DIR.length + 1);
    const upper = inUpper(name);
    const lower = view.lowerServes(name);
    if (!upper && (!lower || whiteout(name))) {
      if (lower) {
        const pr = add('whiteout-hides-valid', row.path, 'a whiteout in the upper dir hides the lower object, but the upper DB says the path is valid');
        if (opts.repair) {
          // The merged DB keeps every lower path's row (the mirror imports them, and lower paths
          // refer to it): the whiteout is what cannot stay.
          for (const p of [path.join(upperDir, name), path.join(upperDir, `.wh.${name}`)]) fs.rmSync(p, { force: true });
          pr.detail += ': the whiteout was removed, and the lower object shows again';
          pr.repaired = true;
        }
        continue;
      }
      vanished.set(row.id, add('row-without-object', row.path, 'the upper DB has a row, but neither layer has the object'));
      continue;
    }
    if (lower && !upper) {
      const lrow = view.lowerDb.pathRow(row.path);
      if (lrow) {
        const diffs = rowDifferences(row, up.references(row.id), lrow, view.lowerDb.references(lrow.id));
        if (diffs.length > 0) {
          const pr = add('row-differs', row.path, `the upper DB row differs from the lower DB row of the object it serves (${diffs.map((d) => d.field).join(', ')}; \`local-overlay explain\` shows both)`);
          if (opts.repair) {
            // The merged store's own signatures stay only while they sign what the row says: a
            // signature covers the NAR hash, size and references.
            const otherContent = diffs.some((d) => d.field === 'narHash' || d.field === 'narSize' || d.field === 'references');
            up.db.prepare('UPDATE ValidPaths SET hash = ?, narSize = ?, deriver = ?, ca = ?, sigs = ?, ultimate = ?, registrationTime = ? WHERE id = ?')
              .run(lrow.hash, lrow.narSize, lrow.deriver, lrow.ca, otherContent ? lrow.sigs : mergedSignatures(row, lrow), lrow.ultimate, lrow.registrationTime, row.id);
            pr.repaired = !diffs.some((d) => d.field === 'references');
            if (!pr.repaired) pr.detail += ' (its references differ too: not rewritten)';
          }
        }
      }
    }
    if (opts.checkContents && upper) {
      // null: deleted by Nix since (a GC of the mount meanwhile); its row went with it.
      const actual = ifPresent(() => narHash(path.join(upperDir, name)));
      if (actual !== null && actual.hash !== row.hash) {
        add('contents-differ', row.path, `the upper object's NAR hash is ${actual.hash}, the DB says ${row.hash}`
          + (view.lowerServes(name) ? '' : `: damaged. Delete it (\`nix-store --store ${view.cfg.mergedRoot} --delete ${row.path}\`, after what refers to it), then build or add it again`));
      }
    }
  }

  if (opts.repair) dropVanished(up.db, vanished, view.cfg.mergedRoot);

  // Closures: a reference without a row cannot exist with foreign keys on, but a DB written
  // with them off can hold one.
  const broken = up.db.prepare(`
    SELECT v.path AS path, r.reference AS ref FROM Refs r JOIN ValidPaths v ON v.id = r.referrer
    WHERE NOT EXISTS (SELECT 1 FROM ValidPaths w WHERE w.id = r.reference)`).all() as { path: string; ref: number }[];
  for (const b of broken) add('broken-closure', b.path, `references a row (id ${b.ref}) that does not exist`);

  // Visible lower objects the upper DB does not know (mirror mode keeps them all).
  if (view.cfg.metadata === 'mirror') {
    const known = new Set(rows.map((r) => r.path));
    const missing = (view.lowerDb.conn().prepare('SELECT path FROM ValidPaths').pluck().all() as string[])
      .filter((p) => !known.has(p) && !whiteout(p.slice(STORE_DIR.length + 1)));
    const found = missing.map((p) => add('missing-row', p, 'the lower store has it, the upper DB does not'));
    if (opts.repair && missing.length > 0) {
      // As `sync` copies: the upper objects of paths the copy makes valid had no row, and go.
      if (view.mounted) {
        if (!opts.copyMissing) throw new Error('verify --repair: the root is mounted, and no way to ask its daemon to copy was given');
        await opts.copyMissing(missing);
      } else {
        const copied = view.copyFromLower(missing, (p) => {
          add('object-without-row', p, 'in the upper layer without a row (an add that did not finish) while the lower store has the path: removed, or the lower row would have made it valid').repaired = true;
        });
        // Rooted like the follower's imports, or Nix's GC would drop the rows again.
        view.lowerRoots().added(copied, new Set());
      }
      for (const pr of found) pr.repaired = view.upperDb.idOf(pr.path) !== undefined;
    }
  }

  // Upper objects Nix does not know: an add that did not finish, or a lost merged DB. Ones the
  // lower store has too are duplicates (below).
  const known = new Set(rows.map((r) => r.path.slice(STORE_DIR.length + 1)));
  for (const name of view.upperObjects()) {
    if (known.has(name) || view.lowerServes(name)) continue;
    add('object-without-row', `${STORE_DIR}/${name}`, 'in the upper layer, but the upper DB does not list it: Nix takes it for invalid, and its GC deletes it (add or build it again to keep it)');
  }

  const dups = await optimise(view, { dryRun: !opts.repair, checkContents: opts.checkContents, lockTimeoutS: opts.lockTimeoutS, onLockWait: opts.onLockWait });
  for (const d of dups.duplicates) {
    const damaged = d.matchedBy === 'damaged' ? '; the upper copy is damaged, the lower copy matches the row' : '';
    const pr = add('duplicate', d.path, d.skipped ? `in both layers; ${d.skipped}` : `in both layers (${d.bytes} bytes in the upper copy)${damaged}`);
    pr.repaired = d.removed;
    // The damaged upper copy went: the merged store serves the lower copy, which matches.
    if (d.removed && d.matchedBy === 'damaged') {
      for (const c of problems) if (c.kind === 'contents-differ' && c.path === d.path) c.repaired = true;
    }
  }
  opts.progress?.(rows.length, rows.length);
  return { checked: rows.length, problems, repaired: problems.filter((p) => p.repaired).length };
}
