// The small part of fuse-native 2.2.6's API that the adapter uses (the package has no types).
declare module 'fuse-native' {
  type Cb = (...args: any[]) => void;
  class Fuse {
    constructor(mnt: string, ops: Record<string, Cb>, opts?: Record<string, unknown>);
    mnt: string;
    opts: Record<string, unknown>;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static isConfigured(cb: (err: Error | null, configured: boolean) => void): void;
    /** The mount's native state; set once mount() has started. */
    _thread: Buffer | null;
    /** The local-overlay patch's fast path (native/fastpath.c). */
    static fastPath: {
      config(thread: Buffer, upperDir: string, lowerDir: string, upperDev: number, lowerDev: number, passthroughMin: number, hiddenDir?: string, lowerMax?: number): void;
      set(thread: Buffer, name: string, kind: number): void;
      reset(thread: Buffer): void;
      enable(thread: Buffer, on: boolean): void;
      poll(thread: Buffer, us: number): void;
      counters(thread: Buffer): number[] | null;
      invalidate(thread: Buffer, all: boolean): void;
      forget(thread: Buffer, names: readonly string[]): void;
    };
    /** The process ends with `code` within `ms` ms, whatever holds up its ordinary exit (native/fastpath.c). */
    static exitAfter(ms: number, code: number): void;
  }
  export = Fuse;
}
