import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  type ByteStore,
  type CopyProgress,
  type CopyRange,
  copyDisk,
  createVmdkIn,
  debug,
  FileStore,
  fileResolver,
  throwIfAborted,
  type VmdkCreateOptions,
  writeStreamOptimized,
} from '@vd/core';
import { allocationOf, withKnownAllocation } from './allocation.js';
import { endReadDisk } from './end-disk.js';
import { hashingReader } from './hashing.js';
import type { ManifestBody, PointSource } from './manifest.js';
import { serializeManifest } from './manifest.js';
import { openPointDisk } from './point-disk.js';
import { alignRanges, totalLength } from './ranges.js';
import { DISK_FILE, MANIFEST_FILE, PARTIAL_PREFIX, Repository, writeDurably } from './repository.js';
import type { BackupSource, Changes, SourceFacts, SourceState } from './sources.js';

/** In a point being written: what the source holds (a snapshot), for cleanup after a kill. */
const SOURCE_FILE = 'source.json';

/** The child VMDK's grain (64 KiB, the VMDK default): changed areas are rounded out to it. */
export const GRAIN_SIZE = 64 * 1024;

export interface BackupProgress extends CopyProgress {
  point: string;
  kind: 'full' | 'incremental';
}

export interface BackupOptions {
  signal?: AbortSignal | undefined;
  /** Take a full backup even when an incremental is possible. */
  full?: boolean | undefined;
  onProgress?: ((p: BackupProgress) => void) | undefined;
  /** Called once the kind is decided, before any data is read. */
  onStart?: ((info: { point: string; kind: 'full' | 'incremental'; reason: string; bytesTotal: number }) => void) | undefined;
  /** Requests in flight (default 16). */
  inFlight?: number | undefined;
  /** Minimum milliseconds between progress events (default 100). */
  progressInterval?: number | undefined;
  /**
   * Layout of a full point: `monolithicSparse` (default) or `streamOptimized` (compressed grains,
   * the OVF/OVA layout; smaller, slower to write). Incrementals are always sparse children.
   */
  fullFormat?: 'monolithicSparse' | 'streamOptimized' | undefined;
}

export interface BackupResult {
  point: string;
  kind: 'full' | 'incremental';
  parent: string | null;
  /** Why this kind: the change source used, or why a full read was needed. */
  reason: string;
  strategy: PointSource['strategy'];
  changeId: string | null;
  size: number;
  /** Bytes the point covers: changed areas rounded to grains (incremental) or the disk (full). */
  bytesCovered: number;
  bytesRead: number;
  bytesWritten: number;
  seconds: number;
  /** Half-written points of interrupted runs that were removed first. */
  removedPartials: string[];
}

/**
 * Takes one restore point of `source` into the repository at `repoDir` (created when missing):
 * a full point (a sparse VMDK of the allocated data) when there is no earlier point or no
 * trustworthy change list, else an incremental (a sparse child VMDK of the latest point holding
 * only the changed ∩ allocated grains, changed zero ranges as zero grains).
 *
 * The point is written under `points/.partial-<id>` and renamed into place only when complete
 * and synced, so an interruption leaves the repository as it was; the next run cleans up.
 */
export async function backup(repoDir: string, source: BackupSource, opts: BackupOptions = {}): Promise<BackupResult> {
  const started = performance.now();
  const phase = (what: string) => debug('backup: %s at %d ms', what, Math.round(performance.now() - started));
  const { signal } = opts;
  throwIfAborted(signal, 'backup');
  const repo = await Repository.open(repoDir, { create: true });
  const unlock = await repo.lock();
  let state: SourceState | undefined;
  let partial: string | undefined;
  try {
    // What a killed run held (a snapshot) is released before its directory goes.
    for (const p of await repo.partials()) {
      const facts = await readFile(join(repo.pointsDir, p, SOURCE_FILE), 'utf8').then(
        (t) => JSON.parse(t) as SourceFacts,
        () => undefined,
      );
      if (facts && source.cleanup) await source.cleanup(facts);
    }
    const removedPartials = await repo.removePartials();
    const ids = await repo.ids();
    const latest = ids.length > 0 ? await repo.point(ids[ids.length - 1]) : undefined;
    const id = repo.nextId(ids);
    partial = repo.partialDir(id);
    await mkdir(partial);
    state = await source.open(signal);
    phase('source open');
    await writeFile(join(partial, SOURCE_FILE), JSON.stringify(state.facts ?? {}));
    const { disk } = state;
    let changes: Changes;
    if (!latest) changes = { reason: 'the repository holds no point yet: a full backup' };
    else if (opts.full) changes = { reason: 'a full backup was asked for' };
    else if (latest.manifest.size !== disk.size) {
      changes = { reason: `the disk is now ${disk.size} bytes, point ${latest.id} has ${latest.manifest.size}: a full backup` };
    } else {
      const m = latest.manifest;
      changes = await state.changes({ id: latest.id, changeId: m.changeId, strategy: m.source.strategy, size: m.size }, signal);
    }
    const incremental = latest !== undefined && changes.ranges !== undefined;
    const kind = incremental ? 'incremental' : 'full';
    let ranges: CopyRange[];
    if (incremental) {
      const unit = Math.max(GRAIN_SIZE, disk.capabilities.blockSize.minimum);
      ranges = await alignRanges(changes.ranges!, unit, disk.size);
    } else ranges = [{ offset: 0, length: disk.size }];
    const bytesCovered = totalLength(ranges);
    phase(`${kind}, ranges known`);
    opts.onStart?.({ point: id, kind, reason: changes.reason, bytesTotal: bytesCovered });

    const name = posix.join(`${PARTIAL_PREFIX}${id}`, DISK_FILE);
    const resolver = fileResolver(repo.pointsDir);
    const subformat = incremental ? 'monolithicSparse' : (opts.fullFormat ?? 'monolithicSparse');
    let copied: { bytesRead: number; bytesWritten: number };
    let extents: [number, number, string][];
    if (subformat === 'streamOptimized') {
      // The stream writer reads the source itself; a hashing reader records what it read.
      const hashing = hashingReader(disk);
      const store = await resolver.create(name);
      try {
        const w = await writeStreamOptimized(hashing.disk, store, {
          name: DISK_FILE,
          signal,
          onProgress: opts.onProgress
            ? (p) =>
                opts.onProgress!({
                  point: id,
                  kind,
                  bytesDone: p.bytesRead,
                  bytesTotal: p.size,
                  bytesRead: p.bytesRead,
                  bytesWritten: p.bytesWritten,
                  bytesZeroed: 0,
                  bytesSkipped: 0,
                })
            : undefined,
        });
        copied = { bytesRead: hashing.bytesRead(), bytesWritten: w.bytesWritten };
      } finally {
        await store.close();
        await endReadDisk(hashing.disk, signal, 'backup');
      }
      extents = hashing.digests.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < extents.length; i++) {
        if (extents[i]![0] < extents[i - 1]![0] + extents[i - 1]![1]) throw new Error('backup: the stream writer read a range twice');
      }
    } else {
      if (incremental) {
        await createPointVmdk(repo.pointsDir, name, {
          parent: posix.join(latest!.id, latest!.manifest.disk.file),
          subformat: 'monolithicSparse',
          zeroedGrain: true,
          grainSize: GRAIN_SIZE / 512,
        });
      } else {
        await createPointVmdk(repo.pointsDir, name, { size: disk.size, subformat: 'monolithicSparse', grainSize: GRAIN_SIZE / 512 });
      }
      const target = await openPointDisk(partial, DISK_FILE, { writable: true, signal });
      phase('point VMDK created');
      let reader = disk;
      try {
        if (incremental) {
          // The allocation of every changed range is asked for in parallel first.
          reader = withKnownAllocation(disk, await allocationOf(disk, ranges, { signal }));
          phase('allocation of the changed ranges known');
        }
        const c = await copyDisk(reader, target, {
          signal,
          inFlight: opts.inFlight,
          progressInterval: opts.progressInterval,
          extents: incremental ? ranges : undefined,
          targetIsZero: !incremental,
          checksums: true,
          // The commit syncs every file of the point once; a flush here would only add a sync.
          flush: false,
          onProgress: opts.onProgress ? (p) => opts.onProgress!({ ...p, point: id, kind }) : undefined,
        });
        copied = c;
        extents = (c.checksums ?? []).map((x) => [x.offset, x.length, x.sha256]);
      } finally {
        await target.close();
        if (reader !== disk) await endReadDisk(reader, signal, 'backup');
      }
    }
    // The CIDs as written (the VMDK's own, and the parent's it was made from).
    const written = await openPointDisk(partial, DISK_FILE, { signal });
    const info = written.info();
    await written.close();
    phase('copied');
    const seconds = (performance.now() - started) / 1000;
    const body: ManifestBody = {
      format: 'vd-backup-point',
      version: 1,
      id,
      kind,
      parent: incremental ? latest!.id : null,
      created: new Date().toISOString(),
      size: disk.size,
      changeId: state.changeId,
      source: {
        location: redact(state.location),
        transport: disk.transport,
        strategy: state.strategy,
        reason: changes.reason,
        ...state.facts,
      },
      disk: {
        file: DISK_FILE,
        subformat,
        cid: String(info.cid),
        parentCid: incremental ? String(info.parentCid) : null,
        grainSize: GRAIN_SIZE,
      },
      stats: { bytesRead: copied.bytesRead, bytesWritten: copied.bytesWritten, bytesCovered, seconds },
      ranges: ranges.map((r) => [r.offset, r.length]),
      extents,
    };
    throwIfAborted(signal, 'backup');
    await writeDurably(`${partial}/${MANIFEST_FILE}`, serializeManifest(body));
    await rm(join(partial, SOURCE_FILE));
    await repo.commit(id);
    phase('committed');
    partial = undefined;
    return {
      point: id,
      kind,
      parent: body.parent,
      reason: changes.reason,
      strategy: body.source.strategy,
      changeId: body.changeId,
      size: disk.size,
      bytesCovered,
      bytesRead: copied.bytesRead,
      bytesWritten: copied.bytesWritten,
      seconds: (performance.now() - started) / 1000,
      removedPartials,
    };
  } finally {
    // Earlier points are untouched either way. The half-made one goes once the source is
    // released; if releasing fails, it stays with its facts, and the next run retries.
    let released = state === undefined;
    try {
      if (state) {
        await state.release(signal?.aborted ? { aborted: signal } : undefined);
        released = true;
      }
    } finally {
      if (partial && released) await rm(partial, { recursive: true, force: true }).catch(() => {});
      await unlock();
    }
  }
}

/**
 * Lays out a new point VMDK without syncing it on the way: the commit syncs every file of the
 * point once, so the creation's own sync would only add latency (tens of ms on a busy disk).
 */
async function createPointVmdk(pointsDir: string, name: string, opts: VmdkCreateOptions): Promise<void> {
  const store = await FileStore.open(join(pointsDir, name), { create: true });
  try {
    const unsynced: ByteStore = {
      name: store.name,
      readOnly: false,
      size: () => store.size(),
      read: (position, into) => store.read(position, into),
      write: (position, data) => store.write(position, data),
      truncate: (size) => store.truncate(size),
      flush: async () => {},
      close: async () => {},
    };
    await createVmdkIn(unsynced, fileResolver(pointsDir), name, opts);
  } finally {
    await store.close();
  }
}

/** A location without credentials or query secrets (PSK, tokens) for the manifest. */
function redact(location: string): string {
  try {
    const u = new URL(location);
    u.username = '';
    u.password = '';
    for (const k of [...u.searchParams.keys()]) if (/psk|key|token|secret|password/i.test(k)) u.searchParams.set(k, 'redacted');
    return u.href;
  } catch {
    return location;
  }
}
