import { type ChangedAreas, changedAreasFromBitmap, DIRTY_BITMAP_PREFIX, mark, queryChangedAreas } from '@vd/cbt';
import { type CopyRange, type Disk, debug, isVdError, type OpenDiskOptions, openDisk, type Transport } from '@vd/core';
import { endReadDisk } from './end-disk.js';
import type { Strategy } from './manifest.js';

/** What a previous point tells the source: when it was taken and by which means. */
export interface PreviousPoint {
  id: string;
  changeId: string | null;
  strategy: Strategy;
  size: number;
}

/** Changed areas since the previous point, or why there are none to trust. */
export type Changes = { ranges: AsyncIterable<CopyRange>; reason: string } | { ranges?: undefined; reason: string };

/** A state of the source held still for the duration of one backup. */
export interface SourceState {
  disk: Disk;
  location: string;
  /** How changes are found (`full-read`: they are not; every backup reads all allocated data). */
  strategy: Strategy;
  /** The change ID of this state, recorded so the next backup can ask for changes since it. */
  changeId: string | null;
  /** Extra facts for the manifest (disk name, snapshot id, bitmap). */
  facts?: { disk?: string; snapshot?: string; bitmap?: string };
  changes(previous: PreviousPoint, signal?: AbortSignal): Promise<Changes>;
  /**
   * Closes the disk and releases what was held (deletes the snapshot); called once. With
   * `aborted` (the backup's aborted signal) a disk whose reads may be stuck is destroyed rather
   * than closed gracefully.
   */
  release(opts?: { aborted?: AbortSignal }): Promise<void>;
}

/** Facts a source records in a point being written, so a later run can undo what a killed one held. */
export type SourceFacts = NonNullable<SourceState['facts']>;

/** Where a backup reads from. `open` freezes a state to read (a snapshot, or the disk as it is). */
export interface BackupSource {
  readonly description: string;
  open(signal?: AbortSignal): Promise<SourceState>;
  /** Releases what an interrupted backup left held (a snapshot), given the facts it recorded. */
  cleanup?(facts: SourceFacts): Promise<void>;
}

/** Pages of changed areas as copy ranges. */
async function* pages(query: (startOffset: number) => Promise<ChangedAreas>, size: number): AsyncGenerator<CopyRange> {
  let at = 0;
  while (at < size) {
    const page = await query(at);
    if (page.startOffset !== at || page.length <= 0)
      throw new Error(`changed areas: a page from ${page.startOffset}+${page.length}, asked ${at}`);
    for (const a of page.areas) yield { offset: a.start, length: a.length };
    at += page.length;
  }
}

export interface DiskSourceOptions {
  /** A qemu dirty bitmap the disk exports (`qemu-nbd -B NAME`): changes since the previous point. */
  dirtyBitmap?: string | undefined;
  /** Close the disk after the backup (default true). */
  close?: boolean;
}

/**
 * An open disk read as it is (a file, an NBD export). Incrementals come from a dirty bitmap when
 * one is named and exported; otherwise every backup is a full read, and the manifest says why.
 * The bitmap must record exactly the changes since the previous point: clear or rotate it after
 * each backup (`qemu-img bitmap --clear`), as qemu's own incremental backups do.
 */
export function diskSource(disk: Disk, opts: DiskSourceOptions = {}): BackupSource {
  const bitmap = opts.dirtyBitmap;
  const context = bitmap === undefined ? undefined : bitmap.startsWith(DIRTY_BITMAP_PREFIX) ? bitmap : DIRTY_BITMAP_PREFIX + bitmap;
  return {
    description: disk.location ?? 'disk',
    async open() {
      return {
        disk,
        location: disk.location ?? 'disk',
        strategy: context ? 'dirty-bitmap' : 'full-read',
        changeId: context ? `bitmap:${context.slice(DIRTY_BITMAP_PREFIX.length)}` : null,
        facts: context ? { bitmap: context.slice(DIRTY_BITMAP_PREFIX.length) } : {},
        async changes(previous) {
          if (!context) {
            return {
              reason: `${disk.transport} source without change tracking: a full read (name a qemu dirty bitmap with --dirty-bitmap, or back up through a vd host)`,
            };
          }
          if (!disk.capabilities.extents.includes(context)) {
            return {
              reason: `the source does not export ${context} (offers ${disk.capabilities.extents.join(', ') || 'no contexts'}): a full read`,
            };
          }
          if (previous.size !== disk.size) return { reason: `the disk changed size (${previous.size} → ${disk.size}): a full read` };
          return {
            ranges: pages((startOffset) => changedAreasFromBitmap(disk, context, { startOffset }), disk.size),
            reason: `changed areas from ${context} since point ${previous.id}`,
          };
        },
        async release(how) {
          if (opts.close !== false) await endReadDisk(disk, how?.aborted, 'backup');
        },
      };
    },
  };
}

/**
 * A disk tracked by `@vd/cbt` (`track(disk, …)`) in this process: each backup marks a change ID
 * and copies the areas changed since the previous point's. The caller keeps the disk quiet
 * during the backup (no snapshot here); a host source does that for running disks.
 */
export function trackedSource(disk: Disk, opts: { close?: boolean } = {}): BackupSource {
  return {
    description: disk.location ?? 'tracked disk',
    async open() {
      const changeId = await mark(disk);
      return {
        disk,
        location: disk.location ?? 'tracked disk',
        strategy: 'change-tracking',
        changeId,
        async changes(previous) {
          if (!previous.changeId || previous.strategy !== 'change-tracking') {
            return { reason: `point ${previous.id} carries no change ID of this tracker: a full read` };
          }
          const since = previous.changeId;
          try {
            await queryChangedAreas(disk, since, { upTo: changeId, maxAreas: 1 });
          } catch (err) {
            if (isVdError(err)) return { reason: `the tracker cannot answer since ${since} (${err.code}: ${err.message}): a full read` };
            throw err;
          }
          return {
            ranges: pages((startOffset) => queryChangedAreas(disk, since, { upTo: changeId, startOffset }), disk.size),
            reason: `changed areas from the tracker since ${since}`,
          };
        },
        async release() {
          // close(), even after an abort (unlike the other sources' endReadDisk): destroy() would
          // skip writing the tracker's sidecar back clean, and the next backup would find tracking
          // reset and read everything. The reads of an aborted backup end with its signal.
          if (opts.close !== false) await disk.close();
        },
      };
    },
  };
}

/** The part of `HostClient` (from `@vd/host`) a host backup uses. */
export interface SnapshotHost {
  createSnapshot(disk: string, opts?: { ttl?: number }): Promise<{ id: string; changeId: string; uri?: string; exportName: string }>;
  /** Extends a leased snapshot's lease; a host without it gets snapshots without a lease. */
  renewSnapshot?(disk: string, id: string, opts?: { ttl?: number }): Promise<unknown>;
  deleteSnapshot(disk: string, id: string): Promise<void>;
  changes(
    disk: string,
    since: string,
    opts?: { upTo?: string; startOffset?: number; signal?: AbortSignal },
  ): Promise<{ startOffset: number; length: number; areas: { start: number; length: number }[] }>;
}

export interface HostSourceOptions {
  /** Transports to open the snapshot's export with, in order (e.g. `[nbdssl({ ca }), nbd()]`). */
  transports: readonly Transport[];
  /** More open options (e.g. `format`). */
  open?: Omit<OpenDiskOptions, 'transports'>;
  /** Replace the snapshot URI's host (a host listening on 0.0.0.0, reached by another name). */
  uri?: (snapshotUri: string) => string;
  /**
   * The snapshot's lease in seconds (default 300; `false`: none). The backup renews it every
   * third of that while it runs, so a backup killed at any moment, even before it could record the
   * snapshot, leaves it behind for at most this long: the host then deletes it.
   */
  snapshotTtl?: number | false;
}

/** Default lease of a backup's snapshot, in seconds. */
export const DEFAULT_SNAPSHOT_TTL = 300;

/**
 * A disk on a vd host: each backup takes a snapshot, reads its read-only export, asks the host
 * for the changes between the previous point's change ID and the snapshot's, and deletes the
 * snapshot afterwards (also when the backup fails).
 */
export function hostSource(host: SnapshotHost, diskName: string, opts: HostSourceOptions): BackupSource {
  return {
    description: `${diskName} on a vd host`,
    async cleanup(facts) {
      if (facts.disk !== diskName || facts.snapshot === undefined) return;
      try {
        await host.deleteSnapshot(diskName, facts.snapshot);
      } catch (err) {
        if (!isVdError(err, 'ERR_VD_NOT_FOUND')) throw err;
      }
    },
    async open(signal) {
      const ttl = opts.snapshotTtl === false || !host.renewSnapshot ? undefined : (opts.snapshotTtl ?? DEFAULT_SNAPSHOT_TTL);
      const snap = await host.createSnapshot(diskName, ttl === undefined ? undefined : { ttl });
      const lease = ttl === undefined ? undefined : renewing(host, diskName, snap.id, ttl);
      let disk: Disk;
      try {
        if (!snap.uri) throw new Error(`the host gave snapshot ${snap.id} no NBD URI; is it listening?`);
        const uri = opts.uri ? opts.uri(snap.uri) : snap.uri;
        disk = await openDisk(uri, { readOnly: true, ...opts.open, signal, transports: opts.transports });
      } catch (err) {
        lease?.stop();
        await host.deleteSnapshot(diskName, snap.id).catch(() => {});
        throw err;
      }
      return {
        disk,
        location: disk.location ?? snap.exportName,
        strategy: 'host-snapshot',
        changeId: snap.changeId,
        facts: { disk: diskName, snapshot: snap.id },
        async changes(previous, sig) {
          if (!previous.changeId || previous.strategy !== 'host-snapshot') {
            return { reason: `point ${previous.id} carries no change ID of this host: a full read` };
          }
          const since = previous.changeId;
          const query = (startOffset: number) => host.changes(diskName, since, { upTo: snap.changeId, startOffset, signal: sig });
          let first: ChangedAreas;
          try {
            first = await query(0);
          } catch (err) {
            if (isVdError(err))
              return { reason: `the host cannot answer changes since ${since} (${err.code}: ${err.message}): a full read` };
            throw err;
          }
          return {
            ranges: pages((startOffset) => (startOffset === 0 ? Promise.resolve(first) : query(startOffset)), disk.size),
            reason: `changed areas from the host between ${since} and ${snap.changeId}`,
          };
        },
        async release(how) {
          try {
            lease?.stop();
            await endReadDisk(disk, how?.aborted, 'backup');
          } finally {
            await host.deleteSnapshot(diskName, snap.id);
          }
        },
      };
    },
  };
}

/**
 * Renews a snapshot's lease every third of `ttl` until stopped. A failed renewal is only logged:
 * if the snapshot is gone, reading its export fails and the backup with it.
 */
function renewing(host: SnapshotHost, disk: string, id: string, ttl: number): { stop(): void } {
  const timer = setInterval(
    () => {
      host
        .renewSnapshot?.(disk, id, { ttl })
        .catch((err: unknown) => debug('backup: renewing snapshot %s of %s failed: %s', id, disk, err));
    },
    (ttl * 1000) / 3,
  );
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
