import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VdError } from '@vd/core';

/** The longest snapshot lease, in seconds: 30 days. */
export const MAX_TTL = 30 * 24 * 3600;

/** A snapshot as the host records it. */
export interface SnapshotRecord {
  id: string;
  /** The change ID marked when the snapshot was taken: its state is "changes up to" this ID. */
  changeId: string;
  /** The change ID of the snapshot taken before this one, if any (its export's dirty bitmap starts there). */
  previousChangeId?: string;
  /** ISO time it was taken. */
  created: string;
  /** `active`: exported read-only. `deleting`: being consolidated into the disk (resumed after a restart). */
  status: 'active' | 'deleting';
  /** The lease in seconds (1 … MAX_TTL), when the snapshot was taken with one (renewals default to it). */
  ttl?: number;
  /** ISO time the lease runs out: after it the host deletes the snapshot (at its next check, or start). */
  expires?: string;
}

export interface ChainLink {
  changeId: string;
  previousChangeId: string;
}

export interface DiskRecord {
  snapshots: SnapshotRecord[];
  /** The change ID of the newest snapshot ever taken, kept after it is deleted (the snapshot export's bitmap starts there). */
  lastChangeId?: string;
  /**
   * The newest snapshots' change IDs, each with the one before it, oldest first: each has its
   * changes captured in `<disk>.chain.<point>.changes`, so "since one of them up to a later one"
   * is answered exactly even after the snapshots are gone.
   */
  chain?: ChainLink[];
}

export interface HostState {
  version: 1;
  disks: Record<string, DiskRecord>;
}

export const STATE_FILE = 'state.json';

export function emptyState(): HostState {
  return { version: 1, disks: {} };
}

/** Reads the state file; a missing one is an empty state, a damaged one ERR_VD_CORRUPT (never guessed at). */
export async function readState(path: string): Promise<HostState> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw new VdError('ERR_VD_IO', `cannot read host state ${path}`, { cause: err, details: { path } });
  }
  const corrupt = (why: string, cause?: unknown) =>
    new VdError('ERR_VD_CORRUPT', `host state ${path} is damaged (${why}); restore it or move it away to forget every snapshot`, {
      cause,
      details: { path },
    });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw corrupt('not JSON', err);
  }
  const s = parsed as HostState;
  if (!s || typeof s !== 'object' || s.version !== 1 || !s.disks || typeof s.disks !== 'object') throw corrupt('unknown layout');
  for (const [name, d] of Object.entries(s.disks)) {
    if (!d || !Array.isArray(d.snapshots)) throw corrupt(`disk ${name} has no snapshot list`);
    for (const snap of d.snapshots) {
      if (typeof snap?.id !== 'string' || !/^[0-9a-f]{12}$/.test(snap.id) || typeof snap.changeId !== 'string') {
        throw corrupt(`disk ${name} has a malformed snapshot`);
      }
      if (snap.status !== 'active' && snap.status !== 'deleting') throw corrupt(`snapshot ${snap.id} has status ${String(snap.status)}`);
      const badExpiry = snap.expires !== undefined && (typeof snap.expires !== 'string' || Number.isNaN(Date.parse(snap.expires)));
      const badTtl = snap.ttl !== undefined && !(Number.isSafeInteger(snap.ttl) && snap.ttl >= 1 && snap.ttl <= MAX_TTL);
      if (badExpiry || badTtl) throw corrupt(`snapshot ${snap.id} has a malformed lease`);
    }
    if (d.chain !== undefined) {
      if (!Array.isArray(d.chain)) throw corrupt(`disk ${name} has a malformed chain`);
      for (const l of d.chain) {
        if (typeof l?.changeId !== 'string' || typeof l.previousChangeId !== 'string')
          throw corrupt(`disk ${name} has a malformed chain link`);
      }
    }
  }
  return s;
}

/**
 * Replaces the state file atomically: write a temporary file beside it, fsync, rename over, fsync
 * the directory. A crash leaves the old state or the new one, never a torn file.
 */
export async function writeState(path: string, state: HostState): Promise<void> {
  const tmp = join(dirname(path), `.${STATE_FILE}.${process.pid}.tmp`);
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(state, null, 2)}\n`);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
