/** A ValidPaths row as Nix 2.8 stores it (column names as in the schema). */
export interface PathRow {
  id: number;
  path: string;
  hash: string;
  registrationTime: number;
  deriver: string | null;
  narSize: number | null;
  ultimate: number | null;
  sigs: string | null;
  ca: string | null;
}

export const PATH_COLUMNS = 'path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca';

export interface OutputRow { drv: number; id: string; path: string }
