import type { Duplex } from 'node:stream';
import { debug, loadSparseAddon, VdError } from '@vd/core';

/**
 * The socket send buffer both ends ask for on unix sockets. There the sender's buffer is all the
 * queue there is (208 KiB by default): a larger one lets a WRITE's payload, or the server's READ
 * replies, leave in one call instead of one per 208 KiB the peer drains, each a sleep and a wakeup
 * on both sides. TCP is left to the kernel's autotuning, which asking for a size would turn off.
 */
export const DEFAULT_SEND_BUFFER = 2 << 20;

/** Validates a `sendBuffer` option: 0 (the kernel default) to 1 GiB. */
export function checkSendBuffer(bytes: number, option: string): void {
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > 0x3fffffff) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${option} must be an integer from 0 (the kernel default) to 1 GiB, not ${bytes}`);
  }
}

export type SetSendBuffer = (fd: number, bytes: number) => number;

let loading: Promise<SetSendBuffer | undefined> | undefined;

/** SO_SNDBUF from the optional `@vd/sparse` addon (node has no such call for stream sockets). */
export function loadSetSendBuffer(): Promise<SetSendBuffer | undefined> {
  loading ??= loadSparseAddon().then((mod) => {
    const set = (mod as { setSendBuffer?: unknown } | undefined)?.setSendBuffer;
    if (typeof set === 'function') return set as SetSendBuffer;
    debug('nbd: socket send buffers keep the kernel default (%s)', mod ? '@vd/sparse lacks setSendBuffer' : '@vd/sparse not loaded');
    return undefined;
  });
  return loading;
}

/**
 * Asks for a send buffer of `bytes` on a unix socket; answers what it got (the kernel doubles the
 * figure for its bookkeeping and caps it at `net.core.wmem_max`), or undefined when it is not a
 * unix socket, `bytes` is 0, or the call is unavailable or fails (the kernel default stays).
 */
export function sizeSendBuffer(socket: Duplex, bytes: number, set: SetSendBuffer | undefined): number | undefined {
  const handle = (socket as { _handle?: { fd?: unknown; constructor?: { name?: string } } })._handle;
  if (bytes === 0 || !set || handle?.constructor?.name !== 'Pipe' || typeof handle.fd !== 'number' || handle.fd < 0) return undefined;
  try {
    const got = set(handle.fd, bytes);
    debug('nbd: socket send buffer %d bytes', got);
    return got;
  } catch (err) {
    debug('nbd: cannot size the socket send buffer: %s', (err as Error).message);
    return undefined;
  }
}
