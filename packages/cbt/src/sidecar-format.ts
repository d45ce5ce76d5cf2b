/**
 * The sidecar file's byte layout, and nothing else: pure encode and decode over `Uint8Array`, no
 * I/O. README.md § "Sidecar format" documents the same layout for other implementations.
 *
 * The file is a 4096-byte header followed by 4096-byte pages. Page i holds the "last changed at
 * point n" counter of blocks i·1023 … i·1023+1022 as u32 little-endian, then a CRC-32. Every unit
 * is one page written by one `pwrite`, so a killed process leaves each page old or new, never
 * half; a host crash may tear one, and its CRC then fails and tracking resets.
 *
 * A page never written is a hole and reads as zeros, which no written page is (it holds at least
 * one change). So that a written page zeroed or punched out in place is not taken for a hole
 * ("no changes"), the header counts the pages written in the epoch (format 2).
 */
import { crc32 } from 'node:zlib';
import { VdError } from '@vd/core';

export const PAGE_SIZE = 4096;
export const HEADER_SIZE = PAGE_SIZE;
/** Block counters per page; the last 4 bytes are the CRC. */
export const ENTRIES_PER_PAGE = (PAGE_SIZE - 4) / 4;
export const FORMAT_VERSION = 2;
/** `VDCBT`, CR LF, SUB: a text transfer or a truncated copy mangles it visibly (the PNG trick). */
export const MAGIC = Uint8Array.of(0x56, 0x44, 0x43, 0x42, 0x54, 0x0d, 0x0a, 0x1a);
export const MAX_FINGERPRINT = 1024;
export const MIN_GRANULARITY = 512;
export const MAX_GRANULARITY = 1 << 30;

/** Closed by `close()` with everything synced; the fingerprint was taken after the last write. */
export const FLAG_CLEAN = 1;
/** Every mark was fsynced before its write was issued, so an unclean file is trustworthy after a reboot too. */
export const FLAG_SYNCED = 2;
const KNOWN_FLAGS = FLAG_CLEAN | FLAG_SYNCED;

export interface SidecarHeader {
  flags: number;
  granularity: number;
  /** The open point: writes now are tagged with it; the newest change ID handed out is `point - 1`. */
  point: number;
  diskSize: number;
  /** 16 random bytes naming the epoch; a reset makes a new one. */
  epoch: Uint8Array;
  /** `/proc/sys/kernel/random/boot_id` of the host that has the file open; zeroes when clean. */
  bootId: Uint8Array;
  /** What the fingerprint hook said at the clean close (empty otherwise). */
  fingerprint: string;
  /**
   * Counter pages written in this epoch. Written after the pages it counts, so the file may hold
   * more (a crash in between) but never fewer: fewer non-hole pages means some were zeroed.
   */
  pages: number;
}

const off = {
  magic: 0,
  version: 8,
  headerSize: 12,
  pageSize: 16,
  flags: 20,
  granularity: 24,
  point: 28,
  diskSize: 32,
  epoch: 40,
  bootId: 56,
  pages: 72,
  fingerprintLength: 76,
  fingerprint: 80,
  crc: PAGE_SIZE - 4,
} as const;

function damaged(why: string): VdError {
  return new VdError('ERR_VD_CORRUPT', `CBT sidecar header: ${why}`, { details: { why } });
}

export function isValidGranularity(g: number): boolean {
  return Number.isSafeInteger(g) && g >= MIN_GRANULARITY && g <= MAX_GRANULARITY && (g & (g - 1)) === 0;
}

export function encodeHeader(h: SidecarHeader): Uint8Array {
  const fp = new TextEncoder().encode(h.fingerprint);
  if (fp.length > MAX_FINGERPRINT) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `CBT fingerprint is ${fp.length} bytes; at most ${MAX_FINGERPRINT}`);
  }
  const out = new Uint8Array(HEADER_SIZE);
  const v = new DataView(out.buffer);
  out.set(MAGIC, off.magic);
  v.setUint32(off.version, FORMAT_VERSION, true);
  v.setUint32(off.headerSize, HEADER_SIZE, true);
  v.setUint32(off.pageSize, PAGE_SIZE, true);
  v.setUint32(off.flags, h.flags, true);
  v.setUint32(off.granularity, h.granularity, true);
  v.setUint32(off.point, h.point, true);
  v.setBigUint64(off.diskSize, BigInt(h.diskSize), true);
  out.set(h.epoch.subarray(0, 16), off.epoch);
  out.set(h.bootId.subarray(0, 16), off.bootId);
  v.setUint32(off.pages, h.pages, true);
  v.setUint32(off.fingerprintLength, fp.length, true);
  out.set(fp, off.fingerprint);
  v.setUint32(off.crc, crc32(out.subarray(0, off.crc)), true);
  return out;
}

/** Decodes and checks a header; anything unexpected is ERR_VD_CORRUPT (the caller resets). */
export function decodeHeader(bytes: Uint8Array): SidecarHeader {
  if (bytes.length < HEADER_SIZE) throw damaged(`${bytes.length} bytes, expected ${HEADER_SIZE}`);
  const b = bytes.subarray(0, HEADER_SIZE);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < MAGIC.length; i++) if (b[i] !== MAGIC[i]) throw damaged('bad magic');
  if (v.getUint32(off.crc, true) !== crc32(b.subarray(0, off.crc))) throw damaged('checksum mismatch');
  const version = v.getUint32(off.version, true);
  if (version === 1) {
    // Format 1 cannot tell a zeroed page from one never written; trusting it could under-report.
    throw damaged('format 1, written by an older @vd/cbt that could not detect zeroed pages; tracking starts over once');
  }
  if (version !== FORMAT_VERSION) throw damaged(`version ${version}; this reader knows ${FORMAT_VERSION}`);
  if (v.getUint32(off.headerSize, true) !== HEADER_SIZE || v.getUint32(off.pageSize, true) !== PAGE_SIZE) {
    throw damaged('unexpected header or page size');
  }
  const flags = v.getUint32(off.flags, true);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw damaged(`unknown flags 0x${flags.toString(16)}`);
  const granularity = v.getUint32(off.granularity, true);
  if (!isValidGranularity(granularity)) throw damaged(`granularity ${granularity}`);
  const point = v.getUint32(off.point, true);
  if (point < 1) throw damaged('point 0');
  const size = v.getBigUint64(off.diskSize, true);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw damaged(`disk size ${size} is not a safe integer`);
  const pages = v.getUint32(off.pages, true);
  const fpLength = v.getUint32(off.fingerprintLength, true);
  if (fpLength > MAX_FINGERPRINT) throw damaged(`fingerprint length ${fpLength}`);
  let fingerprint: string;
  try {
    fingerprint = new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(off.fingerprint, off.fingerprint + fpLength));
  } catch {
    throw damaged('fingerprint is not UTF-8');
  }
  return {
    flags,
    granularity,
    point,
    diskSize: Number(size),
    epoch: b.slice(off.epoch, off.epoch + 16),
    bootId: b.slice(off.bootId, off.bootId + 16),
    fingerprint,
    pages,
  };
}

/** File offset of page `index`. */
export function pageOffset(index: number): number {
  return HEADER_SIZE + index * PAGE_SIZE;
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** Counters are little-endian on disk; on a little-endian host a page is one copy. */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/**
 * The page CRC covers the epoch and the page index before the counters, so a page left over
 * from another epoch, or written at the wrong place, fails its check.
 */
function pageCrc(epoch: Uint8Array, index: number, body: Uint8Array): number {
  const prefix = new Uint8Array(20);
  prefix.set(epoch.subarray(0, 16));
  new DataView(prefix.buffer).setUint32(16, index, true);
  return crc32(body, crc32(prefix));
}

/** Writes page `index` holding `entries` (ENTRIES_PER_PAGE counters) into `out` (PAGE_SIZE bytes). */
export function encodePage(epoch: Uint8Array, index: number, entries: Uint32Array, out: Uint8Array): void {
  const v = new DataView(out.buffer, out.byteOffset, PAGE_SIZE);
  if (LITTLE_ENDIAN) out.set(new Uint8Array(entries.buffer, entries.byteOffset, ENTRIES_PER_PAGE * 4));
  else for (let i = 0; i < ENTRIES_PER_PAGE; i++) v.setUint32(i * 4, entries[i] ?? 0, true);
  v.setUint32(PAGE_SIZE - 4, pageCrc(epoch, index, out.subarray(0, PAGE_SIZE - 4)), true);
}

/** Whether a page is all zeros: never written (a hole), or zeroed; only the header's page count tells which. */
export function isZeroPage(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, PAGE_SIZE).equals(ZERO_PAGE);
}

/**
 * Decodes page `index`. An all-zero page (see `isZeroPage`) is `undefined`, as is a page whose
 * counters are all zero. A failed CRC is ERR_VD_CORRUPT.
 */
export function decodePage(epoch: Uint8Array, index: number, bytes: Uint8Array): Uint32Array | undefined {
  const page = bytes.subarray(0, PAGE_SIZE);
  if (isZeroPage(page)) return undefined;
  const v = new DataView(page.buffer, page.byteOffset, PAGE_SIZE);
  if (v.getUint32(PAGE_SIZE - 4, true) !== pageCrc(epoch, index, page.subarray(0, PAGE_SIZE - 4))) {
    throw new VdError('ERR_VD_CORRUPT', `CBT sidecar page ${index}: checksum mismatch`, { details: { page: index } });
  }
  let entries: Uint32Array;
  if (LITTLE_ENDIAN) {
    entries = new Uint32Array(page.slice(0, ENTRIES_PER_PAGE * 4).buffer);
  } else {
    entries = new Uint32Array(ENTRIES_PER_PAGE);
    for (let i = 0; i < ENTRIES_PER_PAGE; i++) entries[i] = v.getUint32(i * 4, true);
  }
  return entries.some((n) => n !== 0) ? entries : undefined;
}
