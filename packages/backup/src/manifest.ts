import { createHash } from 'node:crypto';
import { VdError } from '@vd/core';

/** The manifest's format name and version; a reader refuses versions it does not know. */
export const MANIFEST_FORMAT = 'vd-backup-point';
export const MANIFEST_VERSION = 1;

/** How the data of a point was found. */
export type Strategy = 'host-snapshot' | 'dirty-bitmap' | 'change-tracking' | 'full-read';

export interface PointSource {
  /** Where the data came from (URI or path; secrets never recorded). */
  location: string;
  /** The transport that read it (`nbdssl`, `file`, …). */
  transport: string;
  strategy: Strategy;
  /** Why a full read was made, or how the changed areas were found. */
  reason: string;
  /** Host disk name and snapshot id, for a host snapshot. */
  disk?: string;
  snapshot?: string;
  /** Dirty bitmap name, for a qemu dirty bitmap. */
  bitmap?: string;
}

export interface PointStats {
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes of data written into the point's VMDK (zero ranges excluded). */
  bytesWritten: number;
  /** Bytes of the source's changed areas (incremental) or its size (full). */
  bytesCovered: number;
  seconds: number;
}

/**
 * One restore point. `ranges` are the byte ranges this point's VMDK holds (the whole disk for a
 * full point); `extents` are SHA-256 digests of the data read from the source within them, in
 * offset order; whatever of `ranges` no extent covers read as zeroes.
 */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  id: string;
  kind: 'full' | 'incremental';
  /** The point this one is a child of (incremental only). */
  parent: string | null;
  created: string;
  /** Virtual size of the disk in bytes. */
  size: number;
  /** The source's change ID at this point (the next incremental asks for changes since it). */
  changeId: string | null;
  source: PointSource;
  disk: { file: string; subformat: string; cid: string; parentCid: string | null; grainSize: number };
  stats: PointStats;
  ranges: [offset: number, length: number][];
  extents: [offset: number, length: number, sha256: string][];
  /** `sha256:` of the manifest's JSON without this member. */
  checksum: string;
}

export type ManifestBody = Omit<Manifest, 'checksum'>;

function digestOf(body: ManifestBody): string {
  return `sha256:${createHash('sha256').update(JSON.stringify(body)).digest('hex')}`;
}

/** The manifest's bytes: the body with its checksum last, one JSON document. */
export function serializeManifest(body: ManifestBody): string {
  const m: Manifest = { ...body, checksum: digestOf(body) };
  return `${JSON.stringify(m, null, 1)}\n`;
}

function bad(where: string, what: string): VdError {
  return new VdError('ERR_VD_CORRUPT', `${where}: ${what}; the point is damaged — restore an earlier point or take a new full backup`, {
    details: { manifest: where },
  });
}

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Parses and checks a manifest: its checksum, its version, and that every range and extent lies
 * inside the disk, in order and without overlap. Anything else is ERR_VD_CORRUPT naming `where`.
 */
export function parseManifest(text: string, where: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (err) {
    throw bad(where, `not JSON (${(err as Error).message})`);
  }
  if (!m || typeof m !== 'object' || Array.isArray(m)) throw bad(where, 'not a JSON object');
  if (m.format !== MANIFEST_FORMAT) throw bad(where, `format is ${JSON.stringify(m.format)}, not ${MANIFEST_FORMAT}`);
  if (m.version !== MANIFEST_VERSION) {
    throw new VdError('ERR_VD_NOT_SUPPORTED', `${where}: manifest version ${String(m.version)}; this vd reads version ${MANIFEST_VERSION}`);
  }
  const { checksum, ...body } = m;
  if (typeof checksum !== 'string' || checksum !== digestOf(body)) throw bad(where, 'its checksum does not match its content');
  if (typeof m.id !== 'string' || !/^\d{4,}$/.test(m.id)) throw bad(where, 'id is not a point number');
  if (m.kind !== 'full' && m.kind !== 'incremental') throw bad(where, `kind ${JSON.stringify(m.kind)}`);
  if (m.kind === 'incremental' ? typeof m.parent !== 'string' : m.parent !== null) throw bad(where, 'parent does not fit the kind');
  if (!isCount(m.size) || m.size === 0) throw bad(where, 'size is not a positive integer');
  if (!m.disk || typeof m.disk.file !== 'string' || !/^[\w.-]+$/.test(m.disk.file)) throw bad(where, 'disk.file is not a plain file name');
  checkRuns(m.ranges, m.size, where, 'ranges', false);
  checkRuns(m.extents, m.size, where, 'extents', true);
  return m;
}

function checkRuns(list: unknown, size: number, where: string, what: string, digests: boolean): void {
  if (!Array.isArray(list)) throw bad(where, `${what} is not a list`);
  let end = 0;
  for (const r of list as unknown[]) {
    if (!Array.isArray(r) || r.length !== (digests ? 3 : 2)) throw bad(where, `an entry of ${what} has the wrong shape`);
    const [offset, length, sha] = r as [unknown, unknown, unknown];
    if (!isCount(offset) || !isCount(length) || length === 0 || offset < end || offset + length > size) {
      throw bad(where, `${what} entry ${JSON.stringify(r)} is out of order or outside the disk`);
    }
    if (digests && (typeof sha !== 'string' || !HEX64.test(sha))) throw bad(where, `${what} entry at ${offset} has no SHA-256`);
    end = offset + length;
  }
}
