import { MachineInfo } from './machine';
import { FollowerResult, LazyLookupResult, MirrorImportResult } from './metadata';
import { PeerName } from './peers';
import { StoreManifest } from './store';
import { FsWorkloadId, Phase } from './workloads';

/** One filesystem measurement: a workload, phase, peer and repetition. */
export interface FsSample {
  workload: FsWorkloadId;
  phase: Phase;
  peer: PeerName;
  rep: number;
  /** Throughput in the workload's unit; absent when the run failed. */
  value?: number;
  seconds?: number;
  count?: number;
  /** The FUSE daemon's CPU time (user + system) and peak RSS during the run. */
  cpuS: number | null;
  peakRssKiB: number | null;
  /** Its private memory (RssAnon) at the end of the run; absent in results from before it was kept. */
  anonKiB?: number | null;
  note?: string;
  error?: string;
}

export interface ProfileParams {
  name: string;
  storeProfile: 'small' | 'default';
  missingLookups: number;
  writeFiles: number;
  mirrorRows: number;
  lazy: Record<number, number>;
  followerSamples: number;
}

/** Everything a run produced: written as JSON under bench/results/ and rendered as Markdown. */
export interface Results {
  version: 1;
  profile: ProfileParams;
  reps: number;
  command: string;
  startedAt: string;
  finishedAt: string;
  durationS: number;
  machine: MachineInfo;
  store: StoreManifest;
  peers: PeerName[];
  workloads: string[];
  fs: FsSample[];
  mirror: MirrorImportResult[];
  lazy: LazyLookupResult[];
  follower: FollowerResult[];
  errors: string[];
  warnings: string[];
}
