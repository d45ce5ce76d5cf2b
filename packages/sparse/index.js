import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binding = require('./build/Release/sparse.node');

export const seekData = binding.seekData;
export const seekHole = binding.seekHole;
export const punchHole = binding.punchHole;
export const dup = binding.dup;
export const close = binding.close;

const DEFAULT_STALL = 30_000;

export function sendFile(sockFd, fileFd, position, length, opts = {}) {
  const { header = null, stallTimeout = DEFAULT_STALL, signal } = opts;
  if (signal?.aborted) return Promise.reject(signal.reason ?? new Error('aborted'));
  if (!signal) return binding.sendFile(sockFd, header, fileFd, position, length, stallTimeout);
  // The pool thread polls this flag between slices of its wait for room in the socket.
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const onAbort = () => Atomics.store(flag, 0, 1);
  signal.addEventListener('abort', onAbort, { once: true });
  let sending;
  try {
    sending = binding.sendFile(sockFd, header, fileFd, position, length, stallTimeout, flag);
  } catch (err) {
    signal.removeEventListener('abort', onAbort);
    throw err;
  }
  return sending.finally(() => signal.removeEventListener('abort', onAbort));
}
