import { VdError } from '../../errors.js';
import {
  COMPRESS_DEFLATE,
  COMPRESS_NONE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NEWLINE_TEST,
  FLAG_REDUNDANT_GD,
  FLAG_ZEROED_GTE,
  GD_AT_END,
  GTES_PER_GT,
  INCOMPATIBLE_MASK,
  KNOWN_INCOMPATIBLE,
  MAX_DESCRIPTOR_BYTES,
  MAX_GRAIN_SECTORS,
  MAX_SPARSE_SECTORS,
  SECTOR,
  SPARSE_MAGIC,
} from './constants.js';

/**
 * The hosted sparse extent header (`SparseExtentHeader`, sector 0 of a monolithicSparse,
 * twoGbMaxExtentSparse or streamOptimized file; also the streamOptimized footer). Sector counts
 * are plain numbers, checked to be safe integers when decoded.
 */
export interface SparseHeader {
  version: number;
  flags: number;
  /** Sectors. */
  capacity: number;
  /** Sectors per grain. */
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** Sector of the grain directory; meaningless when `gdAtEnd`. */
  gdOffset: number;
  /** The header says "read the footer" (streamOptimized written as a stream). */
  gdAtEnd: boolean;
  overHead: number;
  uncleanShutdown: boolean;
  compressAlgorithm: number;
}

export const HEADER_SIZE = SECTOR;

function corrupt(name: string, message: string, details: Record<string, unknown> = {}): VdError {
  return new VdError('ERR_VD_CORRUPT', `${name}: ${message}`, { details: { file: name, ...details } });
}

/** A u64 field as a number; values past 2^53 cannot be sector numbers of any real file. */
function u64(view: DataView, at: number, name: string, field: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(name, `header field ${field} (${v}) is out of range`, { field });
  return Number(v);
}

export function isSparseMagic(head: Uint8Array): boolean {
  return head.length >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) === SPARSE_MAGIC;
}

/** Decodes and validates a header; every field used later as a size or offset is bounded here. */
export function parseSparseHeader(bytes: Uint8Array, name = 'vmdk'): SparseHeader {
  if (bytes.length < HEADER_SIZE) throw corrupt(name, `header is ${bytes.length} bytes, needs ${HEADER_SIZE}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  if (view.getUint32(0, true) !== SPARSE_MAGIC) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: not a VMDK sparse extent (bad magic)`);
  const version = view.getUint32(4, true);
  if (version < 1 || version > 3) {
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: sparse extent version ${version} is not supported (1-3 are)`, {
      details: { version },
    });
  }
  const flags = view.getUint32(8, true);
  const unknown = (flags & INCOMPATIBLE_MASK & ~KNOWN_INCOMPATIBLE) >>> 0;
  if (unknown !== 0) {
    throw new VdError(
      'ERR_VD_UNKNOWN_FORMAT',
      `${name}: header has unknown incompatible flags 0x${unknown.toString(16)}; refusing to guess their meaning`,
      {
        details: { flags, unknown },
      },
    );
  }
  if (flags & FLAG_MARKERS && !(flags & FLAG_COMPRESSED)) throw corrupt(name, 'markers flag set without the compressed flag');
  const capacity = u64(view, 12, name, 'capacity');
  const grainSize = u64(view, 20, name, 'grainSize');
  const descriptorOffset = u64(view, 28, name, 'descriptorOffset');
  const descriptorSize = u64(view, 36, name, 'descriptorSize');
  const numGTEsPerGT = view.getUint32(44, true);
  const rgdOffset = u64(view, 48, name, 'rgdOffset');
  const gdRaw = view.getBigUint64(56, true);
  const gdAtEnd = gdRaw === GD_AT_END;
  const gdOffset = gdAtEnd ? 0 : u64(view, 56, name, 'gdOffset');
  const overHead = u64(view, 64, name, 'overHead');
  const compressAlgorithm = view.getUint16(77, true);

  if (grainSize < 1 || grainSize > MAX_GRAIN_SECTORS || (grainSize & (grainSize - 1)) !== 0) {
    throw corrupt(name, `grain size ${grainSize} sectors is not a power of two from 1 to ${MAX_GRAIN_SECTORS}`, { grainSize });
  }
  if (numGTEsPerGT !== GTES_PER_GT) throw corrupt(name, `numGTEsPerGT is ${numGTEsPerGT}, only ${GTES_PER_GT} is valid`, { numGTEsPerGT });
  if (capacity > MAX_SPARSE_SECTORS)
    throw corrupt(name, `capacity ${capacity} sectors exceeds the 2 TiB limit of a sparse extent`, { capacity });
  if (descriptorOffset !== 0 && (descriptorSize === 0 || descriptorSize * SECTOR > MAX_DESCRIPTOR_BYTES)) {
    throw corrupt(name, `embedded descriptor size ${descriptorSize} sectors is out of range`, { descriptorSize });
  }
  if (
    descriptorOffset > MAX_SPARSE_SECTORS ||
    rgdOffset > MAX_SPARSE_SECTORS ||
    gdOffset > MAX_SPARSE_SECTORS ||
    overHead > MAX_SPARSE_SECTORS
  ) {
    throw corrupt(name, 'a metadata offset lies beyond the 2 TiB a sparse extent can address');
  }
  if (flags & FLAG_COMPRESSED) {
    if (compressAlgorithm !== COMPRESS_DEFLATE) {
      throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: compression algorithm ${compressAlgorithm} is not supported (1 = deflate is)`, {
        details: { compressAlgorithm },
      });
    }
  } else if (compressAlgorithm !== COMPRESS_NONE && compressAlgorithm !== COMPRESS_DEFLATE) {
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: compression algorithm ${compressAlgorithm} is not supported`);
  }
  if (flags & FLAG_NEWLINE_TEST) {
    if (bytes[73] !== 0x0a || bytes[74] !== 0x20 || bytes[75] !== 0x0d || bytes[76] !== 0x0a) {
      throw corrupt(name, 'newline check bytes are damaged (the file was probably transferred in text mode)');
    }
  }
  return {
    version,
    flags,
    capacity,
    grainSize,
    descriptorOffset,
    descriptorSize,
    numGTEsPerGT,
    rgdOffset,
    gdOffset,
    gdAtEnd,
    overHead,
    uncleanShutdown: bytes[72] !== 0,
    compressAlgorithm,
  };
}

export function encodeSparseHeader(h: SparseHeader, magic = SPARSE_MAGIC): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, magic, true);
  view.setUint32(4, h.version, true);
  view.setUint32(8, h.flags >>> 0, true);
  view.setBigUint64(12, BigInt(h.capacity), true);
  view.setBigUint64(20, BigInt(h.grainSize), true);
  view.setBigUint64(28, BigInt(h.descriptorOffset), true);
  view.setBigUint64(36, BigInt(h.descriptorSize), true);
  view.setUint32(44, h.numGTEsPerGT, true);
  view.setBigUint64(48, BigInt(h.rgdOffset), true);
  view.setBigUint64(56, h.gdAtEnd ? GD_AT_END : BigInt(h.gdOffset), true);
  view.setBigUint64(64, BigInt(h.overHead), true);
  out[72] = h.uncleanShutdown ? 1 : 0;
  out[73] = 0x0a;
  out[74] = 0x20;
  out[75] = 0x0d;
  out[76] = 0x0a;
  view.setUint16(77, h.compressAlgorithm, true);
  return out;
}

/** Grain-directory entries needed to cover `capacity` sectors. */
export function gdEntries(h: Pick<SparseHeader, 'capacity' | 'grainSize' | 'numGTEsPerGT'>): number {
  return Math.ceil(h.capacity / (h.grainSize * h.numGTEsPerGT));
}

export function isCompressed(h: SparseHeader): boolean {
  return (h.flags & FLAG_COMPRESSED) !== 0;
}
export function hasMarkers(h: SparseHeader): boolean {
  return (h.flags & FLAG_MARKERS) !== 0;
}
export function hasRedundantGd(h: SparseHeader): boolean {
  return (h.flags & FLAG_REDUNDANT_GD) !== 0 && h.rgdOffset !== 0;
}
export function hasZeroedGte(h: SparseHeader): boolean {
  return (h.flags & FLAG_ZEROED_GTE) !== 0 && h.version >= 2;
}

/** A stream marker (512 bytes): metadata when `size` is 0, else the head of a compressed grain. */
export interface Marker {
  /** Sectors of metadata following a metadata marker; the grain's LBA for a grain marker. */
  value: number;
  size: number;
  type: number;
}

export function parseMarker(bytes: Uint8Array, name = 'vmdk'): Marker {
  if (bytes.length < 16) throw corrupt(name, 'truncated stream marker');
  const view = new DataView(bytes.buffer, bytes.byteOffset, 16);
  return { value: u64(view, 0, name, 'marker value'), size: view.getUint32(8, true), type: view.getUint32(12, true) };
}

export function encodeMarker(numSectors: number, type: number): Uint8Array {
  const out = new Uint8Array(SECTOR);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(numSectors), true);
  view.setUint32(12, type, true);
  return out;
}

/** Bytes before the zlib payload of a compressed grain: `lba u64, size u32` with markers, `size u32` without. */
export function grainHeaderSize(markers: boolean): number {
  return markers ? 12 : 4;
}

export function writeGrainHeader(into: Uint8Array, lba: number, size: number): void {
  const view = new DataView(into.buffer, into.byteOffset, 12);
  view.setBigUint64(0, BigInt(lba), true);
  view.setUint32(8, size, true);
}
