/**
 * Nix 2.8's local-store database, exactly as Nix creates it.
 *
 * A local (or chroot, `--store ROOT`) Nix store keeps its metadata in the *db dir*
 * `ROOT/nix/var/nix/db`: the SQLite file `db.sqlite`, whose tables, indexes and trigger
 * come from executing {@link NIX_SCHEMA_SQL} (Nix's `src/libstore/schema.sql`, compiled into
 * the binary and run by `LocalStore::openDB(state, create = true)` whenever the `schema`
 * file is missing); the `schema` file holding the version `10` (two bytes, no newline); the
 * empty `big-lock` file that every Nix process holds with a shared `flock` (exclusive only
 * during a schema upgrade); and the 8 MiB `reserved` file that the garbage collector
 * deletes first to have room to work on a full disk. Nix puts the DB in WAL journal mode
 * (persistent: recorded in the file header, so `-wal`/`-shm` files sit next to `db.sqlite`
 * while any connection is open and vanish at the last close), sets the per-connection
 * pragmas in {@link NIX_DB_CONNECTION_PRAGMAS}, and never sets `PRAGMA user_version` (0).
 * A DB made by executing NIX_SCHEMA_SQL has a `.schema` (sqlite3 CLI) byte-identical to one
 * made by `nix-store --store ROOT --init` (test/unit/schema.test.ts checks it): SQLite keeps
 * each statement's own text (it only rewrites the leading `create table if not exists` to
 * `CREATE TABLE`), so the whitespace and comments below are significant: do not reformat.
 *
 * Sources, NixOS/nix tag 2.8.0: src/libstore/schema.sql, src/libstore/ca-specific-schema.sql,
 * src/libstore/local-store.cc (LocalStore::LocalStore, LocalStore::openDB, migrateCASchema,
 * getSchema, LocalStore::openGCLock), src/libstore/local-store.hh (nixSchemaVersion),
 * src/libstore/sqlite.cc (SQLite::SQLite, SQLiteTxn, handleSQLiteBusy), src/libstore/sqlite.hh
 * (retrySQLite), src/libstore/globals.hh (gc-reserved-space, use-sqlite-wal, fsync-metadata).
 * Checked against Debian's nix-bin 2.8.0 (see docs/nix-2.8-behaviour.md).
 */

/**
 * The schema version Nix 2.8 writes to `ROOT/nix/var/nix/db/schema` (`nixSchemaVersion`,
 * local-store.hh). Nix refuses a store whose file says more ("current Nix store schema is
 * version %1%, but I only support %2%"), upgrades one that says less (holding `big-lock`
 * exclusively), and treats a missing file as a new store: it runs NIX_SCHEMA_SQL (all
 * `if not exists`, so harmless on an existing DB) and then writes the file.
 */
export const NIX_SCHEMA_VERSION = 10;

/**
 * Exact text of Nix 2.8.0's `src/libstore/schema.sql`: tables ValidPaths, Refs and
 * DerivationOutputs (plus SQLite's own sqlite_sequence, made by AUTOINCREMENT), indexes
 * IndexReferrer, IndexReference and IndexDerivationOutputs, trigger DeleteSelfRefs.
 * Execute it in one `exec` on an empty DB to get Nix's `.schema` byte for byte.
 */
export const NIX_SCHEMA_SQL = `create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to \`on
-- delete restrict' on the \`reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
`;

/**
 * Exact text of Nix 2.8.0's `src/libstore/ca-specific-schema.sql`: tables Realisations and
 * RealisationsRefs and their indexes. Nix runs it only when the experimental feature
 * `ca-derivations` is enabled (`migrateCASchema`), then writes {@link NIX_CA_SCHEMA_FILE}.
 * Stores opened without that feature (everywhere in this project) lack these tables; a DB
 * that has them is still a valid Nix 2.8 DB. NIX_SCHEMA_SQL followed by this gives the
 * `.schema` of a store created with `ca-derivations` enabled.
 */
export const NIX_CA_SCHEMA_SQL = `-- Extension of the sql schema for content-addressed derivations.
-- Won't be loaded unless the experimental feature \`ca-derivations\`
-- is enabled

create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null, -- symbolic output id, usually "out"
    outputPath integer not null,
    signatures text, -- space-separated list
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);

create index if not exists IndexRealisations on Realisations(drvPath, outputName);

create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);

-- used by QueryRealisationReferences
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
-- used by cascade deletion when ValidPaths is deleted
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
`;

/** Version in {@link NIX_CA_SCHEMA_FILE} (`nixCASchemaVersion` in migrateCASchema). */
export const NIX_CA_SCHEMA_VERSION = 3;

/** The db dir relative to a store root (`stateDir + "/db"`, stateDir = ROOT/nix/var/nix). */
export const NIX_DB_DIR = 'nix/var/nix/db';

/** The state dir relative to a store root (LocalFSStoreConfig::stateDir for `--store ROOT`). */
export const NIX_STATE_DIR = 'nix/var/nix';

/** The SQLite file inside the db dir (mode 0644 under umask 022). */
export const NIX_DB_FILE = 'db.sqlite';

/** File in the db dir holding the schema version. */
export const NIX_SCHEMA_FILE = 'schema';

/** What Nix 2.8 writes to {@link NIX_SCHEMA_FILE}: `"10"`, 2 bytes, no newline, mode 0644. */
export const NIX_SCHEMA_FILE_CONTENTS = String(NIX_SCHEMA_VERSION);

/** Only with `ca-derivations`: file in the db dir holding `"3"` (no newline). */
export const NIX_CA_SCHEMA_FILE = 'ca-schema';

/**
 * Empty lock file in the db dir, opened O_RDWR|O_CREAT mode 0600 by every LocalStore and
 * held with flock(LOCK_SH) for the life of the process; LOCK_EX during a schema upgrade
 * (a waiter prints "waiting for the big Nix store lock...").
 */
export const NIX_BIG_LOCK_FILE = 'big-lock';

/**
 * GC reserve in the db dir, mode 0600. On every store open, if it is missing or not
 * {@link NIX_RESERVED_SIZE} bytes, Nix (re)creates it with posix_fallocate (reads as zero
 * bytes; falls back to writing 'X's), ignoring all errors. `collectGarbage` deletes it
 * first whenever it is going to delete anything.
 */
export const NIX_RESERVED_FILE = 'reserved';

/** Size of {@link NIX_RESERVED_FILE}: setting `gc-reserved-space`, default 8 MiB. */
export const NIX_RESERVED_SIZE = 8 * 1024 * 1024;

/**
 * The GC lock, in the *state* dir (ROOT/nix/var/nix), not the db dir: empty, mode 0600,
 * created on first use. `collectGarbage` holds flock(LOCK_EX) on it for the whole GC,
 * `verifyStore` LOCK_SH; each Nix process also registers its temporary roots in
 * `temproots/<pid>` under the state dir.
 */
export const NIX_GC_LOCK_FILE = 'gc.lock';

/** Journal mode Nix 2.8 sets (`use-sqlite-wal`, default true on Linux except WSL1). */
export const NIX_DB_JOURNAL_MODE = 'wal';

/** `PRAGMA user_version` of a Nix DB: Nix never sets it. */
export const NIX_DB_USER_VERSION = 0;

/**
 * Nix's busy timeout, `sqlite3_busy_timeout(db, 60 * 60 * 1000)` (SQLite::SQLite). On top
 * of it every Nix DB operation runs inside retrySQLite, which retries SQLITE_BUSY (and
 * SQLITE_PROTOCOL) forever after a random sleep of at most 0.1 s, warning at most every
 * 10 s ("SQLite database '...' is busy").
 */
export const NIX_DB_BUSY_TIMEOUT_MS = 60 * 60 * 1000;

/**
 * Statements Nix 2.8 runs on every connection it opens, in order (SQLite::SQLite, then
 * LocalStore::openDB). `synchronous` is `off` instead when `fsync-metadata = false`; the
 * journal mode is only set when `pragma main.journal_mode;` reports another mode. Nix
 * opens with SQLITE_OPEN_READWRITE (| SQLITE_OPEN_CREATE for a new store) and the default
 * VFS (`unix-dotfile` only when WAL is off). Its transactions are plain deferred
 * `begin;` ... `commit;`.
 */
export const NIX_DB_CONNECTION_PRAGMAS: readonly string[] = [
  'pragma foreign_keys = 1',
  'pragma synchronous = normal',
  'pragma main.journal_mode = wal',
  'pragma wal_autocheckpoint = 40000',
];

/** The sqlite_master names NIX_SCHEMA_SQL creates, by type (besides sqlite_sequence). */
export const NIX_SCHEMA_OBJECTS = {
  tables: ['ValidPaths', 'Refs', 'DerivationOutputs'],
  indexes: ['IndexReferrer', 'IndexReference', 'IndexDerivationOutputs'],
  triggers: ['DeleteSelfRefs'],
} as const;
