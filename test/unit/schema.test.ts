// NIX_SCHEMA_SQL must create exactly the DB that Nix 2.8 creates: compare the sqlite3 CLI's
// `.schema` of a DB made from NIX_SCHEMA_SQL (with better-sqlite3) with that of a DB made
// by the real `nix-store --init` on a fresh chroot store, and check the db-dir constants
// against what Nix leaves on disk.
import test from 'ava';
import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  NIX_BIG_LOCK_FILE,
  NIX_DB_DIR,
  NIX_DB_FILE,
  NIX_DB_JOURNAL_MODE,
  NIX_DB_USER_VERSION,
  NIX_RESERVED_FILE,
  NIX_RESERVED_SIZE,
  NIX_SCHEMA_FILE,
  NIX_SCHEMA_FILE_CONTENTS,
  NIX_SCHEMA_OBJECTS,
  NIX_SCHEMA_SQL,
  NIX_SCHEMA_VERSION,
} from '../../src/metadata/schema';

const NIX_CONFIG = [
  'experimental-features = nix-command',
  'build-users-group =',
  'sandbox = true',
  'sandbox-paths = /bin/sh=/bin/sh /lib /lib64 /usr/lib',
  'substituters =',
  'nix-path =',
].join('\n');

function tempDir(t: { teardown(fn: () => void): void }, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Environment that keeps Nix 2.8 off /etc/nix, ~, /nix/var and the network. */
function nixEnv(scratch: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['NIX_REMOTE', 'NIX_STORE_DIR', 'NIX_STORE', 'NIX_PATH']) delete env[k];
  for (const d of ['home', 'conf', 'cache', 'config', 'data', 'state', 'log', 'tmp']) {
    fs.mkdirSync(path.join(scratch, d), { recursive: true });
  }
  return {
    ...env,
    HOME: path.join(scratch, 'home'),
    NIX_CONF_DIR: path.join(scratch, 'conf'),
    NIX_USER_CONF_FILES: path.join(scratch, 'conf', 'none.conf'),
    XDG_CACHE_HOME: path.join(scratch, 'cache'),
    XDG_CONFIG_HOME: path.join(scratch, 'config'),
    XDG_DATA_HOME: path.join(scratch, 'data'),
    NIX_STATE_DIR: path.join(scratch, 'state'),
    NIX_LOG_DIR: path.join(scratch, 'log'),
    TMPDIR: path.join(scratch, 'tmp'),
    NIX_CONFIG,
  };
}

/** Runs a program; returns stdout, or an error message naming what is missing or failed. */
function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): { ok: true; stdout: string } | { ok: false; error: string } {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 120_000 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const pkg = cmd === 'sqlite3' ? 'sqlite3' : 'nix-bin (Nix 2.8)';
      return { ok: false, error: `${cmd} not found in PATH: install Debian's ${pkg} (make system-packages)` };
    }
    return { ok: false, error: `${cmd} ${args.join(' ')}: ${r.error.message}` };
  }
  if (r.status !== 0) {
    return { ok: false, error: `${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stderr}` };
  }
  return { ok: true, stdout: r.stdout };
}

/** Creates a fresh chroot store with the real nix-store and returns its db dir. */
function nixCreatedDbDir(t: { teardown(fn: () => void): void }): { dbDir: string } | { error: string } {
  const scratch = tempDir(t, 'schema-nix-');
  const root = path.join(scratch, 'root');
  const init = run('nix-store', ['--store', root, '--init'], nixEnv(scratch));
  if (!init.ok) return { error: init.error };
  return { dbDir: path.join(root, NIX_DB_DIR) };
}

function ourDb(t: { teardown(fn: () => void): void }): string {
  const dir = tempDir(t, 'schema-ours-');
  const file = path.join(dir, NIX_DB_FILE);
  const db = new Database(file);
  db.exec(NIX_SCHEMA_SQL);
  db.close();
  return file;
}

function masterRows(file: string): unknown[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('select type, name, tbl_name, sql from sqlite_master order by rowid').all();
  } finally {
    db.close();
  }
}

test('NIX_SCHEMA_SQL gives the same `.schema` as a DB created by nix-store 2.8', (t) => {
  // Even `nix-store --version` opens a store: the default one (NIX_STATE_DIR, /nix/store)
  // unless --store says otherwise. Point it at a scratch root.
  const versionScratch = tempDir(t, 'schema-version-');
  const version = run('nix-store', ['--store', path.join(versionScratch, 'root'), '--version'], nixEnv(versionScratch));
  if (!version.ok) return t.fail(version.error);
  t.regex(version.stdout, /\b2\.8\./, `expected Nix 2.8, got ${version.stdout.trim()}`);

  const nix = nixCreatedDbDir(t);
  if ('error' in nix) return t.fail(nix.error);
  const nixDb = path.join(nix.dbDir, NIX_DB_FILE);
  const mine = ourDb(t);

  const nixSchema = run('sqlite3', [nixDb, '.schema']);
  if (!nixSchema.ok) return t.fail(nixSchema.error);
  const ourSchema = run('sqlite3', [mine, '.schema']);
  if (!ourSchema.ok) return t.fail(ourSchema.error);
  t.true(nixSchema.stdout.includes('CREATE TABLE ValidPaths'), 'nix-store created no ValidPaths table');
  t.is(ourSchema.stdout, nixSchema.stdout, '.schema differs from the DB nix-store created');

  // The same through better-sqlite3: identical sqlite_master, in the same order.
  t.deepEqual(masterRows(mine), masterRows(nixDb));
});

test('sqlite_master holds exactly the objects listed in NIX_SCHEMA_OBJECTS', (t) => {
  const db = new Database(ourDb(t), { readonly: true });
  const names = (type: string): string[] =>
    (db.prepare('select name from sqlite_master where type = ? order by rowid').all(type) as { name: string }[])
      .map((r) => r.name);
  t.deepEqual(names('table'), ['ValidPaths', 'sqlite_sequence', 'Refs', 'DerivationOutputs']);
  // Implicit indexes of UNIQUE / composite PRIMARY KEY constraints are sqlite_autoindex_*.
  t.deepEqual(names('index').filter((n) => !n.startsWith('sqlite_autoindex_')), [...NIX_SCHEMA_OBJECTS.indexes]);
  t.deepEqual(names('trigger'), [...NIX_SCHEMA_OBJECTS.triggers]);
  db.close();
});

test('the db dir Nix 2.8 creates matches the exported constants', (t) => {
  const nix = nixCreatedDbDir(t);
  if ('error' in nix) return t.fail(nix.error);
  t.is(NIX_SCHEMA_VERSION, 10);
  t.is(fs.readFileSync(path.join(nix.dbDir, NIX_SCHEMA_FILE), 'utf8'), NIX_SCHEMA_FILE_CONTENTS);
  const bigLock = fs.statSync(path.join(nix.dbDir, NIX_BIG_LOCK_FILE));
  t.is(bigLock.size, 0);
  t.is(bigLock.mode & 0o777, 0o600);
  const reserved = fs.statSync(path.join(nix.dbDir, NIX_RESERVED_FILE));
  t.is(reserved.size, NIX_RESERVED_SIZE);
  t.is(reserved.mode & 0o777, 0o600);
  // After Nix exits, the last connection is closed: no -wal/-shm left behind.
  t.deepEqual(fs.readdirSync(nix.dbDir).sort(), [NIX_BIG_LOCK_FILE, NIX_DB_FILE, NIX_RESERVED_FILE, NIX_SCHEMA_FILE].sort());

  const db = new Database(path.join(nix.dbDir, NIX_DB_FILE), { readonly: true });
  t.is(db.pragma('journal_mode', { simple: true }), NIX_DB_JOURNAL_MODE);
  t.is(db.pragma('user_version', { simple: true }), NIX_DB_USER_VERSION);
  db.close();
});

test('nix-store 2.8 accepts and keeps a DB created from NIX_SCHEMA_SQL', (t) => {
  const scratch = tempDir(t, 'schema-accept-');
  const root = path.join(scratch, 'root');
  const dbDir = path.join(root, NIX_DB_DIR);
  fs.mkdirSync(dbDir, { recursive: true });
  const file = path.join(dbDir, NIX_DB_FILE);
  const db = new Database(file);
  db.exec(NIX_SCHEMA_SQL);
  db.pragma(`journal_mode = ${NIX_DB_JOURNAL_MODE}`);
  db.close();
  fs.writeFileSync(path.join(dbDir, NIX_SCHEMA_FILE), NIX_SCHEMA_FILE_CONTENTS);
  const before = run('sqlite3', [file, '.schema']);
  if (!before.ok) return t.fail(before.error);

  const input = path.join(scratch, 'hello.txt');
  fs.writeFileSync(input, 'hello\n');
  const env = nixEnv(path.join(scratch, 'env'));
  const added = run('nix-store', ['--store', root, '--add', input], env);
  if (!added.ok) return t.fail(added.error);
  const storePath = added.stdout.trim();
  t.regex(storePath, /^\/nix\/store\/[0-9a-z]{32}-hello\.txt$/);
  const verify = run('nix-store', ['--store', root, '--verify', '--check-contents'], env);
  if (!verify.ok) return t.fail(verify.error);

  const after = run('sqlite3', [file, '.schema']);
  if (!after.ok) return t.fail(after.error);
  t.is(after.stdout, before.stdout);
  const check = new Database(file, { readonly: true });
  t.deepEqual(check.prepare('select path from ValidPaths').all(), [{ path: storePath }]);
  check.close();
});
