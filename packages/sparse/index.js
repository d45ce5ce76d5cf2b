import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binding = require('./build/Release/sparse.node');

export const seekData = binding.seekData;
export const seekHole = binding.seekHole;
export const punchHole = binding.punchHole;
export const dup = binding.dup;
export const close = binding.close;
export const setSendBuffer = binding.setSendBuffer;

const DEFAULT_STALL = 30_000;
const HEADER_MAX = 64;

/** What an abort before the start answers: the error a cancel during the send gives, nothing sent. */
function canceled(reason) {
  const err = new Error('operation canceled, sendfile', { cause: reason });
  return Object.assign(err, { code: 'ECANCELED', errno: -125, syscall: 'sendfile', bytesSent: 0 });
}

export function sendFile(sockFd, fileFd, position, length, opts = {}) {
  return sendFiles(sockFd, [{ header: opts.header, fileFd, position, length }], opts);
}

export function sendFiles(sockFd, pieces, opts = {}) {
  const { stallTimeout = DEFAULT_STALL, signal } = opts;
  if (signal?.aborted) return Promise.reject(canceled(signal.reason));
  // Packed for the addon: four numbers per piece, the headers' bytes back to back.
  const plan = new Float64Array(4 * pieces.length);
  let headerBytes = 0;
  for (const p of pieces) {
    if (p.header != null && !(p.header instanceof Uint8Array && p.header.length <= HEADER_MAX))
      throw new TypeError('header must be a Uint8Array of at most 64 bytes, or null');
    headerBytes += p.header?.length ?? 0;
  }
  const headers = new Uint8Array(headerBytes);
  let at = 0;
  pieces.forEach((p, i) => {
    plan[4 * i] = p.fileFd;
    plan[4 * i + 1] = p.position;
    plan[4 * i + 2] = p.length;
    plan[4 * i + 3] = p.header?.length ?? 0;
    if (p.header) headers.set(p.header, at);
    at += p.header?.length ?? 0;
  });
  if (!signal) return binding.sendFiles(sockFd, plan, headers, stallTimeout);
  // The pool thread polls this flag between slices of its wait for room in the socket.
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const onAbort = () => Atomics.store(flag, 0, 1);
  signal.addEventListener('abort', onAbort, { once: true });
  let sending;
  try {
    sending = binding.sendFiles(sockFd, plan, headers, stallTimeout, flag);
  } catch (err) {
    signal.removeEventListener('abort', onAbort);
    throw err;
  }
  return sending.finally(() => signal.removeEventListener('abort', onAbort));
}
