import { VdError } from '../../errors.js';
import { CID_NOPARENT, MAX_DESCRIPTOR_BYTES } from './constants.js';

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
export type ExtentKind = 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW' | 'SESPARSE';
const KINDS = new Set<string>(['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'VMFSRDM', 'VMFSRAW', 'SESPARSE']);

export interface DescriptorExtent {
  access: ExtentAccess;
  /** Size in sectors: authoritative for mapping disk offsets to extents. */
  sectors: number;
  kind: ExtentKind;
  /** File name relative to the descriptor; absent for ZERO. */
  fileName?: string;
  /** Start sector inside the file (FLAT only). */
  offset?: number;
}

/**
 * A parsed descriptor. Key order is not significant to VMware (it regenerates the text from a
 * template), so we keep values, not lines; header keys we do not know are kept and written back.
 */
export interface Descriptor {
  version: number;
  encoding?: string;
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: DescriptorExtent[];
  /** `ddb.*` keys in file order, values unquoted. */
  ddb: Map<string, string>;
  /** Other header keys (isNativeSnapshot, changeTrackPath, ...), kept verbatim. */
  other: Map<string, string>;
}

const MAX_EXTENTS = 4096;
const MAX_DDB_KEYS = 4096;

function bad(message: string, line?: number): VdError {
  return new VdError('ERR_VD_CORRUPT', `VMDK descriptor: ${message}${line === undefined ? '' : ` (line ${line})`}`, {
    details: line === undefined ? {} : { line },
  });
}

function unquote(v: string): string {
  const t = v.trim();
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t;
}

export function parseCid(text: string, what: string): number {
  if (!/^[0-9a-fA-F]{1,8}$/.test(text)) throw bad(`${what} "${text}" is not 8 hex digits`);
  return Number.parseInt(text, 16) >>> 0;
}

export function formatCid(cid: number): string {
  return (cid >>> 0).toString(16).padStart(8, '0');
}

const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d{1,16})\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d{1,16}))?)?(?:\s+.*)?$/;

/** True when the bytes look like a text descriptor (first meaningful line is `version=`). */
export function looksLikeDescriptor(head: Uint8Array): boolean {
  const n = Math.min(head.length, 1024);
  let text = '';
  for (let i = 0; i < n; i++) {
    const c = head[i]!;
    if (c === 0) break;
    if (c < 9 || (c > 13 && c < 32)) return false;
    text += String.fromCharCode(c);
  }
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    return /^version\s*=\s*"?[123]"?$/.test(line);
  }
  return false;
}

/** Decodes the descriptor text (NUL padding of an embedded descriptor ends it). */
export function decodeDescriptorBytes(bytes: Uint8Array): string {
  if (bytes.length > MAX_DESCRIPTOR_BYTES) throw bad(`larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
  const nul = bytes.indexOf(0);
  return new TextDecoder('utf-8', { fatal: false }).decode(nul === -1 ? bytes : bytes.subarray(0, nul));
}

export function parseDescriptor(text: string): Descriptor {
  if (text.length > MAX_DESCRIPTOR_BYTES) throw bad(`larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
  const lines = text.split('\n');
  let version: number | undefined;
  const header = new Map<string, string>();
  const extents: DescriptorExtent[] = [];
  const ddb = new Map<string, string>();
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    if (version === undefined) {
      const m = /^version\s*=\s*"?(\d+)"?$/.exec(line);
      if (!m) throw bad('the first line is not version=1|2|3', i + 1);
      version = Number(m[1]);
      if (version < 1 || version > 3) throw bad(`version ${version} is not 1, 2 or 3`, i + 1);
      continue;
    }
    const ext = EXTENT_LINE.exec(line);
    if (ext) {
      if (extents.length >= MAX_EXTENTS) throw bad(`more than ${MAX_EXTENTS} extents`, i + 1);
      const kind = ext[3]!;
      if (!KINDS.has(kind)) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `VMDK descriptor: extent type ${kind} is not known (line ${i + 1})`);
      const sectors = Number(ext[2]);
      if (!Number.isSafeInteger(sectors)) throw bad(`extent size ${ext[2]} is out of range`, i + 1);
      const e: DescriptorExtent = { access: ext[1] as ExtentAccess, sectors, kind: kind as ExtentKind };
      if (ext[4] !== undefined) e.fileName = ext[4];
      if (ext[5] !== undefined) {
        const offset = Number(ext[5]);
        if (!Number.isSafeInteger(offset)) throw bad(`extent offset ${ext[5]} is out of range`, i + 1);
        e.offset = offset;
      }
      if (kind !== 'ZERO' && (e.fileName === undefined || e.fileName === '')) throw bad(`${kind} extent has no file name`, i + 1);
      extents.push(e);
      continue;
    }
    const kv = /^([A-Za-z0-9_.-]+)\s*=\s*(.*)$/.exec(line);
    if (!kv) throw bad(`cannot parse "${line.slice(0, 60)}"`, i + 1);
    const key = kv[1]!;
    const value = unquote(kv[2]!);
    if (key.startsWith('ddb.')) {
      if (ddb.size >= MAX_DDB_KEYS) throw bad(`more than ${MAX_DDB_KEYS} ddb keys`, i + 1);
      ddb.set(key, value);
    } else {
      header.set(key, value);
    }
  }
  if (version === undefined) throw bad('empty (no version line)');
  if (extents.length === 0) throw bad('no extents');
  let total = 0;
  for (const e of extents) {
    total += e.sectors;
    if (!Number.isSafeInteger(total * 512)) throw bad('extent sizes add up past the largest safe size');
  }
  const cidText = header.get('CID');
  const parentText = header.get('parentCID');
  const createType = header.get('createType');
  if (createType === undefined || createType === '') throw bad('no createType');
  const d: Descriptor = {
    version,
    cid: cidText === undefined ? 0 : parseCid(cidText, 'CID'),
    parentCid: parentText === undefined ? CID_NOPARENT : parseCid(parentText, 'parentCID'),
    createType,
    extents,
    ddb,
    other: new Map(),
  };
  const encoding = header.get('encoding');
  if (encoding !== undefined) d.encoding = encoding;
  const hint = header.get('parentFileNameHint');
  if (hint !== undefined && hint !== '') d.parentFileNameHint = hint;
  for (const [k, v] of header) {
    if (k !== 'CID' && k !== 'parentCID' && k !== 'createType' && k !== 'encoding' && k !== 'parentFileNameHint') d.other.set(k, v);
  }
  return d;
}

function quoteValue(v: string): string {
  if (/["\n\r]/.test(v))
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `descriptor value ${JSON.stringify(v)} must not contain quotes or line breaks`);
  return `"${v}"`;
}

/** Writes the descriptor in VMware's template order. */
export function serializeDescriptor(d: Descriptor): string {
  const out: string[] = ['# Disk DescriptorFile', `version=${d.version}`];
  if (d.encoding !== undefined) out.push(`encoding=${quoteValue(d.encoding)}`);
  out.push(`CID=${formatCid(d.cid)}`, `parentCID=${formatCid(d.parentCid)}`);
  for (const [k, v] of d.other) if (k === 'isNativeSnapshot') out.push(`${k}=${quoteValue(v)}`);
  out.push(`createType=${quoteValue(d.createType)}`);
  if (d.parentFileNameHint !== undefined) out.push(`parentFileNameHint=${quoteValue(d.parentFileNameHint)}`);
  out.push('', '# Extent description');
  for (const e of d.extents) {
    let line = `${e.access} ${e.sectors} ${e.kind}`;
    if (e.fileName !== undefined) {
      line += ` ${quoteValue(e.fileName)}`;
      if (e.offset !== undefined) line += ` ${e.offset}`;
    }
    out.push(line);
  }
  const rest = [...d.other].filter(([k]) => k !== 'isNativeSnapshot');
  if (rest.length > 0) {
    out.push('');
    for (const [k, v] of rest) out.push(`${k}=${quoteValue(v)}`);
  }
  out.push('', '# The Disk Data Base', '#DDB', '');
  for (const [k, v] of d.ddb) out.push(`${k} = ${quoteValue(v)}`);
  return `${out.join('\n')}\n`;
}

export function descriptorSectors(d: Descriptor): number {
  let total = 0;
  for (const e of d.extents) total += e.sectors;
  return total;
}

/** A ddb key must look like `ddb.name[.name]`: it is written back unquoted into the text. */
export function checkDdbKey(key: string): void {
  if (!/^ddb\.[A-Za-z0-9_.-]+$/.test(key)) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `metadata key ${JSON.stringify(key)} must look like ddb.name (letters, digits, . _ -)`);
  }
}
