import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  type ChangedAreas,
  changedExtents,
  DEFAULT_BITMAP,
  DEFAULT_MAX_AREAS,
  DIRTY_BITMAP_PREFIX,
  type Durability,
  fileFingerprint,
  mark,
  parseChangeId,
  queryChangedAreas,
  type Tracker,
  track,
  trackerOf,
} from '@vd/cbt';
import { type BlockSource, Disk, debug, type Extent, file, isVdError, VdError } from '@vd/core';
import {
  formatNbdUri,
  type ListenOptions,
  type NbdExport,
  NbdServer,
  type NbdServerAddress,
  type NbdServerLimits,
  type NbdServerTls,
} from '@vd/nbd';
import { ChangeSet } from './change-set.js';
import { checkDiskName, Datastore } from './datastore.js';
import { GateSource } from './gate.js';
import { FrozenSource, LiveSource } from './live-source.js';
import { lockDatastore } from './lock.js';
import { Overlay } from './overlay.js';
import {
  type ChainLink,
  type DiskRecord,
  type HostState,
  MAX_TTL,
  readState,
  type SnapshotRecord,
  STATE_FILE,
  writeState,
} from './state.js';

export interface DiskHostOptions {
  /** The datastore directory: every regular file directly inside is a disk (VMDK extent files aside). */
  datastore: string;
  /** TLS for the NBD listeners (`await nbdServerTls({...})` from `@vd/nbdssl`). */
  tls?: NbdServerTls | undefined;
  /** Track changes of writable disks (default true), or of those the function picks by name. Snapshots need it. */
  track?: boolean | ((disk: string) => boolean);
  /** Tracker granularity in bytes for new sidecars (default 64 KiB); also the redo log's grain. */
  granularity?: number;
  durability?: Durability;
  /** Dirty-bitmap name: exports offer `qemu:dirty-bitmap:<bitmap>` (default `vd-cbt`). */
  bitmap?: string;
  limits?: NbdServerLimits;
  /**
   * Milliseconds between checks for snapshots whose lease ran out (default 15 000); they are also
   * checked at start. An expired snapshot is deleted (consolidated) as if its owner had asked.
   */
  leaseCheckInterval?: number;
}

export interface SnapshotOptions {
  /**
   * A lease in seconds (1 … 30 days): unless renewed (`renewSnapshot`) within it, the host deletes
   * the snapshot, so one whose owner died (a killed backup) does not hold a redo log forever.
   * Without it the snapshot lives until deleted.
   */
  ttl?: number | undefined;
}

export interface SkippedDisk {
  name: string;
  code: string;
  message: string;
}

export interface SnapshotInfo {
  id: string;
  disk: string;
  /** Changes up to the snapshot: pass it as `since` next time, or as `upTo` for this backup. */
  changeId: string;
  created: string;
  status: 'active' | 'deleting';
  /** When its lease runs out (ISO time), for a snapshot taken with a `ttl`. */
  expires?: string;
  /** The NBD export of the frozen disk (read-only), `<disk>@<id>`. */
  exportName: string;
  /** Its URI on the host's first listener, once listening. */
  uri?: string;
}

export interface DiskSummary {
  name: string;
  size: number;
  readOnly: boolean;
  tracked: boolean;
  exportName: string;
  uri?: string;
  /** Granularity of changed areas, in bytes. */
  granularity?: number;
  /** The newest change ID handed out (the last snapshot's), if any. */
  changeId?: string;
  /** The dirty-bitmap extents context of the export (changes since the last snapshot). */
  bitmapContext?: string;
  snapshots: SnapshotInfo[];
}

export interface ChangesQuery {
  since: string;
  upTo?: string | undefined;
  startOffset?: number | undefined;
  maxAreas?: number | undefined;
}

interface Snapshot {
  record: SnapshotRecord;
  /** Blocks changed from the previous snapshot to this one, captured when it was taken. */
  changes?: ChangeSet | undefined;
  /** The read-only export of the frozen base (absent while deleting). */
  disk?: Disk;
}

interface Served {
  name: string;
  path: string;
  /** The exported disk (the gate over the tracked disk). */
  disk: Disk;
  gate: GateSource;
  live: LiveSource | undefined;
  tracked: Disk | undefined;
  snapshots: Snapshot[];
  /** Captured change sets by snapshot change ID, loaded as needed. */
  sets: Map<string, ChangeSet>;
  /** Snapshot operations on one disk run one at a time. */
  queue: Promise<unknown>;
  consolidation?: Promise<void>;
}

/** The redo log's grain: the unit of copy-on-write and of consolidation. */
const GRAIN = 64 * 1024;
const DEFAULT_LEASE_CHECK = 15_000;

function checkTtl(ttl: unknown): number | undefined {
  if (ttl === undefined) return undefined;
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 1 || ttl > MAX_TTL) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `snapshot ttl ${String(ttl)} is not a whole number of seconds from 1 to ${MAX_TTL}`, {
      details: { ttl },
    });
  }
  return ttl;
}

/** Whether a snapshot's lease has run out (one without a lease never does). */
function leaseRanOut(r: SnapshotRecord): boolean {
  return r.expires !== undefined && Date.parse(r.expires) <= Date.now();
}

/**
 * A disk host: the disks of a datastore directory served over NBD (and NBDSSL with `tls`), each
 * read-write under its file name and change-tracked; snapshots freeze a disk's state (new writes
 * go to a redo log) and export it read-only as `<disk>@<id>`; deleting one consolidates the redo
 * log back while writes continue. Its state (snapshots) lives in `<datastore>/.vd-host/`.
 *
 * The HTTP control API (`createApiServer`) and the `HostClient` speak to one of these.
 */
export class DiskHost {
  readonly datastore: Datastore;
  readonly server: NbdServer;
  readonly bitmap: string;
  /** Files of the datastore that could not be opened as disks, and why. */
  skipped: readonly SkippedDisk[] = [];
  readonly #served = new Map<string, Served>();
  readonly #statePath: string;
  #state: HostState;
  readonly #tls: boolean;
  /** `fsync` durability: redo-log grain data is synced before its map byte (see Overlay). */
  readonly #syncData: boolean;
  #stateWrite: Promise<void> = Promise.resolve();
  #closing: Promise<void> | undefined;
  #unlock: () => Promise<void> = async () => {};
  #leaseTimer: NodeJS.Timeout | undefined;

  private constructor(datastore: Datastore, state: HostState, served: Served[], opts: DiskHostOptions) {
    this.datastore = datastore;
    this.bitmap = opts.bitmap ?? DEFAULT_BITMAP;
    this.#state = state;
    this.#statePath = join(datastore.hostDir, STATE_FILE);
    this.#tls = opts.tls !== undefined;
    this.#syncData = opts.durability === 'fsync';
    for (const s of served) this.#served.set(s.name, s);
    const exports: NbdExport[] = [];
    for (const s of served) {
      exports.push({ name: s.name, disk: s.disk, description: `vd disk ${s.name}` });
      for (const snap of s.snapshots) if (snap.disk) exports.push(snapshotExport(s.name, snap));
    }
    if (exports.length === 0) {
      throw new VdError('ERR_VD_NOT_FOUND', `datastore ${datastore.dir} holds no disks; put a disk image in it first`, {
        details: { dir: datastore.dir },
      });
    }
    this.server = new NbdServer({ exports, limits: opts.limits, tls: opts.tls });
  }

  /** Opens every disk of `opts.datastore`, recovers snapshots from the state file, resumes interrupted deletions. */
  static async open(opts: DiskHostOptions): Promise<DiskHost> {
    const every = opts.leaseCheckInterval ?? DEFAULT_LEASE_CHECK;
    if (!Number.isSafeInteger(every) || every < 1) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `leaseCheckInterval ${every} is not a positive number of milliseconds`);
    }
    const datastore = await Datastore.open(opts.datastore);
    await datastore.makeHostDir();
    const unlock = await lockDatastore(datastore.hostDir);
    const served: Served[] = [];
    const skipped: SkippedDisk[] = [];
    let state: HostState;
    try {
      state = await readState(join(datastore.hostDir, STATE_FILE));
      for (const name of await datastore.list()) {
        try {
          served.push(await openServed(datastore, name, state.disks[name], opts));
        } catch (err) {
          // One unreadable image must not take the other disks offline; its state records stay.
          if (!isVdError(err)) throw err;
          debug('host: not serving %s: %s', name, err.message);
          skipped.push({ name, code: err.code, message: err.message });
        }
      }
      await removeOrphans(datastore, state);
    } catch (err) {
      await Promise.allSettled(served.map((s) => closeServed(s)));
      await unlock();
      throw err;
    }
    const host = new DiskHost(datastore, state, served, opts);
    host.skipped = skipped;
    host.#unlock = unlock;
    for (const s of served) {
      const deleting = s.snapshots.find((x) => x.record.status === 'deleting');
      if (deleting) host.#startConsolidation(s, deleting);
    }
    // Leases that ran out while the host was down go now; the rest when they run out.
    host.#expireLeases();
    host.#leaseTimer = setInterval(() => host.#expireLeases(), every);
    host.#leaseTimer.unref();
    return host;
  }

  /** Starts an NBD listener (TCP on 127.0.0.1:0 by default, a unix socket, or a fd). */
  listen(opts: ListenOptions = {}): Promise<NbdServerAddress> {
    return this.server.listen(opts);
  }

  /** Names of the served disks. */
  get diskNames(): string[] {
    return [...this.#served.keys()];
  }

  /** The disk as exported (for in-process use: tests, benchmarks). */
  exportedDisk(name: string): Disk {
    return this.#get(name).disk;
  }

  disks(): DiskSummary[] {
    return [...this.#served.values()].map((s) => this.#summary(s));
  }

  disk(name: string): DiskSummary {
    return this.#summary(this.#get(name));
  }

  snapshots(name: string): SnapshotInfo[] {
    const s = this.#get(name);
    return s.snapshots.map((x) => this.#snapshotInfo(s.name, x.record));
  }

  /**
   * Takes a snapshot: pauses the disk's requests (in-flight ones drain), marks a change ID,
   * starts a redo log that takes every later write, records it, resumes, and exports the frozen
   * state read-only. One snapshot per disk at a time (ERR_VD_EXISTS for a second).
   */
  createSnapshot(name: string, opts: SnapshotOptions = {}): Promise<SnapshotInfo> {
    const s = this.#get(name);
    const ttl = checkTtl(opts.ttl);
    return this.#serialize(s, async () => {
      if (!s.live || !s.tracked) {
        throw new VdError('ERR_VD_NOT_SUPPORTED', `disk ${name} is not tracked (read-only or tracking off); it cannot be snapshotted`, {
          details: { disk: name },
        });
      }
      if (s.snapshots.length > 0) {
        throw new VdError('ERR_VD_EXISTS', `disk ${name} already has snapshot ${s.snapshots[0]!.record.id}; delete it first`, {
          details: { disk: name, snapshot: s.snapshots[0]!.record.id },
        });
      }
      const tracker = trackerOf(s.tracked);
      const id = randomBytes(6).toString('hex');
      const resume = await s.gate.pause();
      let record: SnapshotRecord;
      let overlay: Overlay | undefined;
      let changes: ChangeSet | undefined;
      const dropped: string[] = [];
      try {
        const changeId = await mark(s.tracked);
        let nextChain: ChainLink[] | undefined;
        const files = redoFiles(this.datastore, name, id);
        const d = this.#diskRecord(name);
        const now = Date.now();
        record = { id, changeId, created: new Date(now).toISOString(), status: 'active' };
        if (ttl !== undefined) Object.assign(record, { ttl, expires: new Date(now + ttl * 1000).toISOString() });
        if (d.lastChangeId) {
          record.previousChangeId = d.lastChangeId;
          // Nothing was written since the mark: "since the previous snapshot" is exactly "up to this one" now.
          changes = await captureChanges(s.tracked, tracker, d.lastChangeId);
          if (changes) {
            await changes.save(chainFile(this.datastore, name, changeId));
            // Links of an earlier epoch can never be asked for again (the tracker refuses their IDs).
            const epoch = `${tracker.epoch}/`;
            const chain = [...(d.chain ?? []), { changeId, previousChangeId: d.lastChangeId }];
            for (const old of chain.filter((l) => !l.changeId.startsWith(epoch))) dropped.push(old.changeId);
            const current = chain.filter((l) => l.changeId.startsWith(epoch));
            for (const old of current.splice(0, Math.max(0, current.length - CHAIN_LENGTH))) dropped.push(old.changeId);
            nextChain = current;
          }
        }
        overlay = await Overlay.create(files.data, files.map, s.live.size, GRAIN, { syncData: this.#syncData });
        const before = { snapshots: d.snapshots, lastChangeId: d.lastChangeId, chain: d.chain };
        d.snapshots = [...d.snapshots, record];
        d.lastChangeId = changeId;
        if (nextChain) d.chain = nextChain;
        try {
          await this.#saveState();
        } catch (err) {
          // Not recorded, it never was: the next snapshot's changes must start at the last recorded one.
          Object.assign(d, before);
          throw err;
        }
        if (changes) s.sets.set(changeId, changes);
        s.live.switchTo(overlay);
      } catch (err) {
        await overlay?.close().catch(() => {});
        await removeRedo(this.datastore, name, id);
        throw err;
      } finally {
        resume();
      }
      for (const id of dropped) {
        s.sets.delete(id);
        await rm(chainFile(this.datastore, name, id), { force: true });
      }
      const snap: Snapshot = { record, changes, disk: frozenDisk(s, changes, record, this.bitmap) };
      s.snapshots.push(snap);
      this.server.addExport(snapshotExport(name, snap));
      debug('host: snapshot %s of %s at %s', id, name, record.changeId);
      return this.#snapshotInfo(name, record);
    });
  }

  /**
   * Deletes a snapshot: withdraws its export, then consolidates the redo log into the disk while
   * writes continue (resolves when done). Interrupted by a crash, it resumes at the next start.
   */
  deleteSnapshot(name: string, id: string): Promise<void> {
    const s = this.#get(name);
    return this.#serialize(s, () => this.#delete(s, this.#snapshot(s, id)));
  }

  /**
   * Extends a snapshot's lease to `ttl` seconds from now (default: the ttl it was taken with).
   * A snapshot being deleted, or gone (its lease ran out), is ERR_VD_NOT_FOUND: its owner must
   * not go on reading it.
   */
  renewSnapshot(name: string, id: string, opts: SnapshotOptions = {}): Promise<SnapshotInfo> {
    const s = this.#get(name);
    const asked = checkTtl(opts.ttl);
    return this.#serialize(s, async () => {
      const snap = this.#snapshot(s, id);
      const r = snap.record;
      if (r.status !== 'active') {
        throw new VdError('ERR_VD_NOT_FOUND', `snapshot ${id} of ${name} is being deleted; take a new one`, {
          details: { disk: name, id },
        });
      }
      // Ran out but not yet collected by the periodic check: too late, as if it were gone.
      if (leaseRanOut(r)) {
        throw new VdError('ERR_VD_NOT_FOUND', `the lease of snapshot ${id} of ${name} ran out at ${r.expires}; take a new one`, {
          details: { disk: name, id, expired: r.expires },
        });
      }
      const ttl = asked ?? r.ttl;
      if (ttl === undefined) {
        throw new VdError('ERR_VD_INVALID_ARGUMENT', `snapshot ${id} of ${name} has no lease; pass a ttl to give it one`, {
          details: { disk: name, id },
        });
      }
      const before = { ttl: r.ttl, expires: r.expires };
      Object.assign(r, { ttl, expires: new Date(Date.now() + ttl * 1000).toISOString() });
      try {
        await this.#saveState();
      } catch (err) {
        Object.assign(r, before);
        throw err;
      }
      return this.#snapshotInfo(name, r);
    });
  }

  #snapshot(s: Served, id: string): Snapshot {
    const snap = s.snapshots.find((x) => x.record.id === id);
    if (!snap) {
      throw new VdError('ERR_VD_NOT_FOUND', `disk ${s.name} has no snapshot ${JSON.stringify(id)}`, { details: { disk: s.name, id } });
    }
    return snap;
  }

  async #delete(s: Served, snap: Snapshot): Promise<void> {
    if (snap.record.status === 'active') {
      this.server.removeExport(exportNameOf(s.name, snap.record.id));
      await snap.disk?.close().catch(() => {});
      snap.disk = undefined;
      snap.record.status = 'deleting';
      await this.#saveState();
    }
    this.#startConsolidation(s, snap);
    await s.consolidation;
  }

  /** Deletes every active snapshot whose lease has run out (checked again in the disk's queue: a renewal may come first). */
  #expireLeases(): void {
    if (this.#closing) return;
    const expired = (snap: Snapshot) => snap.record.status === 'active' && leaseRanOut(snap.record);
    for (const s of this.#served.values()) {
      for (const snap of s.snapshots) {
        if (!expired(snap)) continue;
        this.#serialize(s, async () => {
          if (!s.snapshots.includes(snap) || !expired(snap)) return;
          debug('host: lease of snapshot %s of %s ran out at %s; deleting it', snap.record.id, s.name, snap.record.expires);
          await this.#delete(s, snap);
        }).catch((err) => debug('host: expiring snapshot %s of %s failed: %s', snap.record.id, s.name, err?.message));
      }
    }
  }

  /** Changed areas of a disk since `since` (optionally up to `upTo`, e.g. a snapshot's change ID), one page of at most DEFAULT_MAX_AREAS. */
  async changes(name: string, q: ChangesQuery): Promise<ChangedAreas> {
    const s = this.#get(name);
    if (!s.tracked) throw new VdError('ERR_VD_NOT_SUPPORTED', `disk ${name} is not tracked`, { details: { disk: name } });
    if (q.maxAreas !== undefined && (!Number.isSafeInteger(q.maxAreas) || q.maxAreas < 1)) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `maxAreas ${q.maxAreas} < 1`, { details: { maxAreas: q.maxAreas } });
    }
    // A page stays bounded whatever a client asks for; its length says where to ask on.
    const maxAreas = Math.min(q.maxAreas ?? DEFAULT_MAX_AREAS, DEFAULT_MAX_AREAS);
    const opts = { startOffset: q.startOffset, maxAreas };
    if (q.upTo === undefined) return queryChangedAreas(s.tracked, q.since, opts);
    // Checks both change IDs (ERR_VD_CBT_RESET, ERR_VD_INVALID_ARGUMENT) before anything is answered.
    await queryChangedAreas(s.tracked, q.since, { upTo: q.upTo, startOffset: q.startOffset, maxAreas: 1 });
    if (q.upTo === q.since) {
      const start = q.startOffset ?? 0;
      return { startOffset: start, length: s.disk.size - start, areas: [] };
    }
    const exact = await this.#chainChanges(s, q.since, q.upTo);
    if (exact) {
      const start = q.startOffset ?? 0;
      return exact.areas(start, s.disk.size - start, maxAreas);
    }
    // The tracker keeps the newest change of each block only: a block changed before `upTo` and
    // again after it would be missed. Answer up to now instead, which covers it (over-reports).
    return queryChangedAreas(s.tracked, q.since, opts);
  }

  /** The changes from `since` to `upTo` from the captured sets of the snapshots between them; undefined when the chain has a gap. */
  async #chainChanges(s: Served, since: string, upTo: string): Promise<ChangeSet | undefined> {
    const chain = this.#state.disks[s.name]?.chain ?? [];
    const sets: ChangeSet[] = [];
    for (let at = upTo; at !== since; ) {
      const link = chain.find((l) => l.changeId === at);
      // No link, or more links than the chain has: a gap, or a loop a damaged state file made.
      if (!link || sets.length === chain.length) return undefined;
      let set = s.sets.get(at);
      if (!set) {
        set = await ChangeSet.load(chainFile(this.datastore, s.name, at), s.disk.size).catch(() => undefined);
        if (!set) return undefined;
        s.sets.set(at, set);
      }
      sets.push(set);
      at = link.previousChangeId;
    }
    return sets.length > 0 ? ChangeSet.union(sets) : undefined;
  }

  /** The URI of an export on the first listener (undefined before `listen`). */
  uriOf(exportName: string): string | undefined {
    const a = this.server.addresses.find((x) => x.kind !== 'fd' || x.port !== undefined);
    if (!a) return undefined;
    if (a.kind === 'unix') return formatNbdUri({ kind: 'unix', path: a.path!, exportName, tls: this.#tls });
    if (a.host === undefined || a.port === undefined) return undefined;
    return formatNbdUri({ kind: 'tcp', host: a.host, port: a.port, exportName, tls: this.#tls });
  }

  /** Stops serving (graceful), finishes running consolidations, closes every disk cleanly. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#leaseTimer);
      await this.server.close();
      const served = [...this.#served.values()];
      await Promise.allSettled(served.map((s) => s.queue));
      await Promise.allSettled(served.map((s) => s.consolidation));
      const results = await Promise.allSettled(served.map((s) => closeServed(s)));
      await this.#stateWrite;
      await this.#unlock();
      for (const r of results) if (r.status === 'rejected') throw r.reason;
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #get(name: string): Served {
    checkDiskName(name);
    const s = this.#served.get(name);
    if (!s) throw new VdError('ERR_VD_NOT_FOUND', `no disk ${JSON.stringify(name)} in the datastore`, { details: { disk: name } });
    return s;
  }

  #serialize<T>(s: Served, op: () => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(new VdError('ERR_VD_CLOSED', 'the host is shutting down'));
    const run = s.queue.then(op, op);
    s.queue = run.catch(() => {});
    return run;
  }

  #diskRecord(name: string): DiskRecord {
    this.#state.disks[name] ??= { snapshots: [] };
    return this.#state.disks[name]!;
  }

  #saveState(): Promise<void> {
    const next = this.#stateWrite.then(() => writeState(this.#statePath, this.#state));
    this.#stateWrite = next.catch(() => {});
    return next;
  }

  #startConsolidation(s: Served, snap: Snapshot): void {
    if (s.consolidation) return;
    const live = s.live!;
    s.consolidation = (async () => {
      try {
        const ov = live.overlay;
        await live.consolidate(() => s.gate.pause(), {
          // Saved before writes go to the base again: a restart must not replay the redo log over them.
          recorded: async () => {
            const d = this.#diskRecord(s.name);
            const before = d.snapshots;
            d.snapshots = before.filter((x) => x.id !== snap.record.id);
            try {
              await this.#saveState();
            } catch (err) {
              d.snapshots = before;
              throw err;
            }
          },
        });
        await ov?.close();
        s.snapshots = s.snapshots.filter((x) => x !== snap);
        await removeRedo(this.datastore, s.name, snap.record.id);
        debug('host: snapshot %s of %s consolidated', snap.record.id, s.name);
      } finally {
        s.consolidation = undefined;
      }
    })();
    // A failure is reported to the deleting caller; a resumed one only to the log.
    s.consolidation.catch((err) => debug('host: consolidating %s of %s failed: %s', snap.record.id, s.name, err?.message));
  }

  #summary(s: Served): DiskSummary {
    const tracker = s.tracked ? trackerOf(s.tracked) : undefined;
    const out: DiskSummary = {
      name: s.name,
      size: s.disk.size,
      readOnly: s.disk.capabilities.readOnly,
      tracked: tracker !== undefined,
      exportName: s.name,
      snapshots: s.snapshots.map((x) => this.#snapshotInfo(s.name, x.record)),
    };
    const uri = this.uriOf(s.name);
    if (uri) out.uri = uri;
    if (tracker) {
      out.granularity = tracker.granularity;
      const id = tracker.latestChangeId;
      if (id) out.changeId = id;
      out.bitmapContext = DIRTY_BITMAP_PREFIX + this.bitmap;
    }
    return out;
  }

  #snapshotInfo(name: string, r: SnapshotRecord): SnapshotInfo {
    const exportName = exportNameOf(name, r.id);
    const info: SnapshotInfo = { id: r.id, disk: name, changeId: r.changeId, created: r.created, status: r.status, exportName };
    if (r.expires !== undefined) info.expires = r.expires;
    const uri = r.status === 'active' ? this.uriOf(exportName) : undefined;
    if (uri) info.uri = uri;
    return info;
  }
}

export function exportNameOf(disk: string, id: string): string {
  return `${disk}@${id}`;
}

function snapshotExport(name: string, snap: Snapshot): NbdExport {
  return {
    name: exportNameOf(name, snap.record.id),
    disk: snap.disk!,
    readOnly: true,
    description: `snapshot ${snap.record.id} of ${name}`,
  };
}

function redoFiles(ds: Datastore, name: string, id: string): { data: string; map: string } {
  const base = join(ds.hostDir, `${name}@${id}`);
  return { data: `${base}.redo`, map: `${base}.map` };
}

/** Snapshots in a disk's chain whose captured changes are kept. */
const CHAIN_LENGTH = 16;

/** Where the changes captured for the snapshot with `changeId` are kept (named by its parsed epoch and point only). */
function chainFile(ds: Datastore, name: string, changeId: string): string {
  return join(ds.hostDir, `${name}.chain.${chainKey(changeId)}.changes`);
}

function chainKey(changeId: string): string {
  const { epoch, point } = parseChangeId(changeId);
  return `${epoch}-${point}`;
}

async function removeRedo(ds: Datastore, name: string, id: string): Promise<void> {
  const f = redoFiles(ds, name, id);
  await rm(f.data, { force: true });
  await rm(f.map, { force: true });
}

/** Redo logs no state record names: left by a crash during a snapshot's creation. */
async function removeOrphans(ds: Datastore, state: HostState): Promise<void> {
  const known = new Set<string>();
  for (const [name, d] of Object.entries(state.disks)) {
    for (const s of d.snapshots) known.add(`${name}@${s.id}`);
    for (const l of d.chain ?? []) known.add(`${name}.chain.${chainKey(l.changeId)}`);
  }
  for (const entry of await readdir(ds.hostDir)) {
    const m = /^(.+@[0-9a-f]{12}|.+\.chain\.[0-9a-f-]+)\.(redo|map|changes|changes\.tmp)$/.exec(entry);
    if (m && !known.has(m[1]!)) {
      debug('host: removing orphaned %s', entry);
      await rm(join(ds.hostDir, entry), { force: true });
    }
  }
}

async function openServed(ds: Datastore, name: string, record: DiskRecord | undefined, opts: DiskHostOptions): Promise<Served> {
  const path = await ds.resolve(name);
  const url = pathToFileURL(path);
  let base: BlockSource;
  let readOnly = false;
  try {
    base = await file().open(url, {});
  } catch (err) {
    if (!isVdError(err) || (err.code !== 'ERR_VD_PERMISSION' && err.code !== 'ERR_VD_READ_ONLY')) throw err;
    base = await file().open(url, { readOnly: true });
    readOnly = true;
  }
  if (
    readOnly ||
    base.capabilities.readOnly ||
    !base._write ||
    (typeof opts.track === 'function' ? !opts.track(name) : opts.track === false)
  ) {
    const disk = new Disk(base, { transport: 'file', location: url.href });
    const gate = new GateSource(disk);
    if (record?.snapshots.length) {
      await disk.close();
      throw new VdError(
        'ERR_VD_CORRUPT',
        `disk ${name} has snapshots recorded but cannot be tracked now; open it writable with tracking on`,
        {
          details: { disk: name },
        },
      );
    }
    return {
      name,
      path,
      disk: new Disk(gate, { transport: 'host', location: url.href }),
      gate,
      live: undefined,
      tracked: undefined,
      snapshots: [],
      sets: new Map(),
      queue: Promise.resolve(),
    };
  }
  const snaps = record?.snapshots ?? [];
  if (snaps.length > 1) throw new VdError('ERR_VD_CORRUPT', `disk ${name} has ${snaps.length} snapshots recorded; this host keeps one`);
  let overlay: Overlay | undefined;
  let live: LiveSource | undefined;
  let tracked: Disk | undefined;
  try {
    const snap = snaps[0];
    if (snap) {
      const files = redoFiles(ds, name, snap.id);
      overlay = await Overlay.open(files.data, files.map, base.size, GRAIN, { syncData: opts.durability === 'fsync' });
    }
    live = new LiveSource(base, overlay);
    const source = live;
    // Covers the redo log in use too: a change to any of the files outside the host resets tracking.
    const fingerprint = async () => {
      const parts = [await fileFingerprint(path)()];
      const ov = source.overlay;
      if (ov) parts.push(await fileFingerprint(ov.dataPath)(), await fileFingerprint(ov.mapPath)());
      return parts.join('|');
    };
    tracked = await track(live, {
      path: join(ds.hostDir, `${name}.cbt`),
      granularity: opts.granularity,
      durability: opts.durability,
      bitmap: opts.bitmap ?? DEFAULT_BITMAP,
      fingerprint,
    });
    const gate = new GateSource(tracked);
    const served: Served = {
      name,
      path,
      disk: new Disk(gate, { transport: 'host', location: url.href }),
      gate,
      live,
      tracked,
      snapshots: [],
      sets: new Map(),
      queue: Promise.resolve(),
    };
    if (snap) {
      const changes = snap.previousChangeId
        ? await ChangeSet.load(chainFile(ds, name, snap.changeId), base.size).catch(() => undefined)
        : undefined;
      if (changes) served.sets.set(snap.changeId, changes);
      const s: Snapshot = { record: snap, changes };
      if (snap.status === 'active') s.disk = frozenDisk(served, changes, snap, opts.bitmap ?? DEFAULT_BITMAP);
      served.snapshots.push(s);
    }
    return served;
  } catch (err) {
    if (tracked) await tracked.close().catch(() => {});
    else if (live) await live._close().catch(() => {});
    else await base._close().catch(() => {});
    throw err;
  }
}

async function closeServed(s: Served): Promise<void> {
  for (const snap of s.snapshots) await snap.disk?.close().catch(() => {});
  // Closing the exported disk closes the gate's tracked disk, the tracker (clean), the redo log and the base.
  await s.disk.close();
}

/** Extents per bitmap answer; the Disk wrapper asks again for the rest. */
const MAX_EXTENTS = 65_536;

/** Every area changed since `since`, as a ChangeSet; undefined when tracking cannot answer (a reset). */
async function captureChanges(tracked: Disk, tracker: Tracker, since: string): Promise<ChangeSet | undefined> {
  const set = ChangeSet.fromAreas([], tracker.granularity, tracked.size);
  try {
    for (let at = 0; at < tracked.size; ) {
      const page = await queryChangedAreas(tracked, since, { startOffset: at });
      set.add(page.areas); // page by page: a bit per block, never every area at once
      at += page.length;
    }
  } catch (err) {
    if (isVdError(err, 'ERR_VD_CBT_RESET')) return undefined;
    throw err;
  }
  return set;
}

/**
 * The read-only disk of a snapshot. With the changes captured from the snapshot before it, it
 * also offers `qemu:dirty-bitmap:<bitmap>`: what changed between that snapshot and this one, so
 * an incremental backup can read the snapshot export alone.
 */
function frozenDisk(s: Served, changes: ChangeSet | undefined, record: SnapshotRecord, bitmap: string): Disk {
  const contexts: Record<string, (offset: number, length: number) => Extent[]> = {};
  if (changes) {
    contexts[DIRTY_BITMAP_PREFIX + bitmap] = (offset, length) => changedExtents(changes.areas(offset, length, MAX_EXTENTS));
  }
  return new Disk(new FrozenSource(s.live!.base, { contexts }), { transport: 'host', location: `${s.path}@${record.id}` });
}
