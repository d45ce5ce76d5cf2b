import type { Duplex } from 'node:stream';

/**
 * Where a socket reads to (node:net's and node:tls's `onread`): the buffer for the next read and
 * the callback told how many bytes landed in it. Bytes handed over this way are never emitted as
 * 'data'.
 */
export interface ReadInto {
  buffer: () => Uint8Array;
  callback: (n: number, buf: Uint8Array) => boolean;
}

/**
 * Makes a socket read into the buffers `onread` gives from now on, as `net.connect({ onread })`
 * does. node:net offers `onread` only to sockets it connects, not to those a server accepts, and
 * node:tls ignores it when it wraps an existing socket, which STARTTLS must. Without it each read
 * (for TLS, each 16 KiB record) becomes a new Buffer pushed through the stream as 'data', which
 * costs more CPU (allocation, GC, stream bookkeeping) than the copy itself. This sets the internal
 * fields node:net's constructor sets for `onread` (checked on Node 20); where they are not found it
 * changes nothing and 'data' events carry the bytes as before. Returns whether it took effect.
 * Between two reads is a safe moment to call it: from a 'data' handler, or before reading starts.
 */
export function readInto(socket: Duplex, onread: ReadInto): boolean {
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  const field = (name: string) => Object.getOwnPropertySymbols(socket).find((s) => s.description === name);
  const kBuffer = field('kBuffer');
  const kBufferGen = field('kBufferGen');
  const kBufferCb = field('kBufferCb');
  if (!kBuffer || !kBufferGen || !kBufferCb || typeof handle?.useUserBuffer !== 'function') return false;
  const own = socket as unknown as Record<symbol, unknown>;
  if (own[kBuffer] !== null && own[kBuffer] !== undefined) return false;
  const first = onread.buffer();
  own[kBufferGen] = onread.buffer;
  own[kBufferCb] = onread.callback;
  own[kBuffer] = first;
  handle.useUserBuffer(first);
  return true;
}
