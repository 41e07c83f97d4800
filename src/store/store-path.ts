/**
 * Nix store path names: `<32-char nix-base32 hash>-<name>`.
 * Nix's base32 alphabet omits e, o, u and t; names use [A-Za-z0-9+-._?=] and do not start
 * with a dot. Anything that does not parse is not a store object (absence, not an error).
 */

export const HASH_LEN = 32;
const NAME_MAX = 211;
const STORE_NAME_RE = /^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]*$/;
const HASH_RE = /^[0-9a-df-np-sv-z]{32}$/;

export function isStoreObjectName(name: string): boolean {
  return name.length <= HASH_LEN + 1 + NAME_MAX && STORE_NAME_RE.test(name);
}

export function isHashPart(s: string): boolean {
  return HASH_RE.test(s);
}

export function hashPart(name: string): string {
  return name.slice(0, HASH_LEN);
}

/**
 * Top-level names that Nix keeps for its own bookkeeping next to store objects. In the lower
 * layer they belong to another store (its locks, its link pool, its build chroots) and are
 * never part of the merged view; in the upper layer they are ordinary entries.
 */
export function isBookkeepingName(name: string): boolean {
  return name === '.links'
    || name.endsWith('.lock')
    || name.endsWith('.chroot')
    || name.endsWith('.check')
    || name.startsWith('.');
}

/** Splits `/nix/store/<name>/rest` (any store dir) into the top-level name, or null. */
export function storeObjectNameOf(storeDir: string, path: string): string | null {
  const prefix = storeDir.endsWith('/') ? storeDir : storeDir + '/';
  if (!path.startsWith(prefix)) return null;
  const rest = path.slice(prefix.length);
  const slash = rest.indexOf('/');
  const name = slash < 0 ? rest : rest.slice(0, slash);
  return isStoreObjectName(name) ? name : null;
}

export function toStorePath(storeDir: string, name: string): string {
  return `${storeDir}/${name}`;
}
