import { createHash } from 'node:crypto';
import type { Disk } from '../disk.js';
import { VdError } from '../errors.js';
import { runPool } from './pool.js';
import { firstNonZero, isAllZero } from './zeroes.js';

/** What the target must hold over a range: bytes with this SHA-256, or (`digest` undefined) zeroes. */
export interface VerifyRecord {
  offset: number;
  length: number;
  digest: Uint8Array | undefined;
}

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** Sorted by offset, with touching zero ranges merged (fewer target extents queries). */
function normalize(records: VerifyRecord[]): VerifyRecord[] {
  records.sort((a, b) => a.offset - b.offset);
  const out: VerifyRecord[] = [];
  for (const r of records) {
    const last = out[out.length - 1];
    if (last && !last.digest && !r.digest && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

interface Check {
  offset: number;
  length: number;
  digest: Uint8Array | undefined;
}

/** Digest ranges as they are; zero ranges reduced to the parts the target stores as data. */
async function* checks(
  target: Disk,
  records: VerifyRecord[],
  chunkSize: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<Check, void, undefined> {
  for (const r of records) {
    if (r.digest) {
      yield r;
      continue;
    }
    for await (const e of target.extents({ offset: r.offset, length: r.length, signal })) {
      if (e.type === 'hole' || e.type === 'zero') continue;
      const end = e.offset + e.length;
      for (let at = e.offset; at < end; at += chunkSize) yield { offset: at, length: Math.min(chunkSize, end - at), digest: undefined };
    }
  }
}

/**
 * Re-reads the target over every record and compares: a digest must match, a zero range must
 * read as zeroes. The first difference is ERR_VD_VERIFY with `details.offset` (the chunk's offset,
 * or the exact byte for a zero range).
 */
export async function verifyTarget(
  target: Disk,
  records: VerifyRecord[],
  opts: { chunkSize: number; inFlight: number; signal?: AbortSignal | undefined },
): Promise<void> {
  const list = normalize(records);
  await runPool(
    checks(target, list, opts.chunkSize, opts.signal),
    { workers: opts.inFlight, bufferSize: opts.chunkSize, signal: opts.signal, what: 'verify' },
    async (c, buffer) => {
      const view = buffer().subarray(0, c.length);
      await target.readInto(c.offset, view, { signal: opts.signal });
      if (c.digest) {
        if (!sha256(view).equals(c.digest)) {
          throw new VdError('ERR_VD_VERIFY', `verify: the target differs from the source in the ${c.length} bytes at ${c.offset}`, {
            details: { offset: c.offset, length: c.length },
          });
        }
      } else if (!isAllZero(view)) {
        const offset = c.offset + firstNonZero(view);
        throw new VdError('ERR_VD_VERIFY', `verify: the target holds non-zero data at ${offset}, where the source reads zero`, {
          details: { offset, length: c.length, rangeOffset: c.offset },
        });
      }
    },
  );
}
