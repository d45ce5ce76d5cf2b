import { VdError } from '@vd/core';

/**
 * Change IDs are opaque to callers: `<epoch uuid>/<point>`, like vSphere's `52 90 … d4/1`. The
 * epoch names one unbroken run of tracking on one disk (a reset starts another); the point is the
 * counter `mark()` handed out. `*` asks for every allocated area instead.
 */
export const ALL_AREAS = '*';

const ID = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/([1-9][0-9]{0,9})$/;

export interface ParsedChangeId {
  epoch: string;
  point: number;
}

export function formatChangeId(epoch: Uint8Array, point: number): string {
  return `${uuidOf(epoch)}/${point}`;
}

/** Parses a change ID; a string that is not one is ERR_VD_INVALID_ARGUMENT (a caller bug, not a reset). */
export function parseChangeId(id: string): ParsedChangeId {
  const m = typeof id === 'string' ? ID.exec(id) : null;
  const point = m ? Number(m[2]) : Number.NaN;
  if (!m || point > 0xffffffff) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `not a change ID: ${JSON.stringify(id)} (expected "<uuid>/<n>" or "*")`, {
      details: { changeId: id },
    });
  }
  return { epoch: m[1]!, point };
}

export function uuidOf(bytes: Uint8Array): string {
  const h = Buffer.from(bytes.buffer, bytes.byteOffset, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A uuid string as 16 bytes, or undefined when it is not one. */
export function bytesOfUuid(s: string): Uint8Array | undefined {
  const hex = s.trim().toLowerCase().replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/.test(hex)) return undefined;
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
