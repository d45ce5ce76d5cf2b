import type { Duplex } from 'node:stream';
import type { Disk } from '@vd/core';
import { DEFAULT_MAX_IN_FLIGHT } from '../protocol.js';
import { DEFAULT_SEND_BUFFER } from '../send-buffer.js';
import { defaultZeroCopySends } from '../sendfile.js';

/** One disk the server exports under a name. */
export interface NbdExport {
  /** The export name clients ask for; `''` is also answered by the first export. */
  name: string;
  disk: Disk;
  description?: string;
  /** Refuse writes even when the disk takes them. */
  readOnly?: boolean;
}

export interface NbdServerLimits {
  /** Connections open at once; more are closed at once (default 64). */
  maxConnections?: number;
  /** Requests a client may have in flight; the server stops reading from it beyond (default `DEFAULT_MAX_IN_FLIGHT`). */
  maxInFlight?: number;
  /** Largest READ/WRITE payload, advertised as the maximum block size (default 32 MiB). */
  maxPayload?: number;
  /** Largest option a client may send (default 64 KiB). */
  maxOptionData?: number;
  /** Milliseconds a client may take to finish the handshake (slowloris guard; default 30 s). */
  handshakeTimeout?: number;
  /**
   * Milliseconds a request may stay half-received (slowloris in transmission; default 30 s). An
   * idle client with nothing half-sent may stay connected as long as it likes.
   */
  frameTimeout?: number;
  /** Milliseconds `close()` waits for in-flight requests before dropping connections (default 30 s). */
  shutdownTimeout?: number;
  /** Descriptors in one block status reply (default 65536). */
  maxExtents?: number;
  /**
   * Zero-copy READ replies (sendfile, with `@vd/sparse`) running at once, server-wide; each holds
   * a thread-pool thread while its client reads. Default: half of UV_THREADPOOL_SIZE, at most 4 (0 with a one-thread pool).
   * 0 turns zero-copy off (so does `VD_NBD_ZEROCOPY=0`).
   */
  zeroCopySends?: number;
  /**
   * Milliseconds a zero-copy reply may make no progress because the client reads nothing; then
   * the connection is dropped (default 30 s). Bounds how long a stalled client holds a thread.
   */
  sendStallTimeout?: number;
  /**
   * Bytes of socket send buffer asked for on unix-socket connections, plain or TLS, when
   * `@vd/sparse` is loaded (default 2 MiB; 0 leaves the kernel's default). Each wakeup of the reader then takes more
   * data: 25-30% faster full reads measured. The kernel doubles the figure for its bookkeeping
   * and caps it at `net.core.wmem_max` (Debian's default, 208 KiB, makes this a no-op); sendfile'd
   * bytes in the buffer are page-cache references, not copies. TCP is left to the kernel's
   * autotuning, which asking for a size would turn off.
   */
  sendBuffer?: number;
}

/**
 * TLS upgrade hook for NBD_OPT_STARTTLS (implemented by `@vd/nbdssl`): receives the plain socket
 * after the server has acknowledged STARTTLS and resolves to the encrypted duplex. `required`
 * refuses every option but STARTTLS and ABORT before the upgrade (FORCEDTLS).
 */
export interface NbdServerTls {
  upgrade(socket: Duplex): Promise<Duplex>;
  required?: boolean;
  /**
   * Per-export authorization: may the client on `socket` (the duplex `upgrade` returned, or the
   * plain socket) list and open `exportName`? Refused exports look absent (ERR_UNKNOWN).
   */
  authorize?(exportName: string, socket: Duplex): boolean;
}

export interface NbdServerOptions {
  exports: NbdExport | readonly NbdExport[];
  limits?: NbdServerLimits;
  tls?: NbdServerTls;
  /** Offer NBD_OPT_EXTENDED_HEADERS (default true). */
  extendedHeaders?: boolean;
  /** Offer NBD_OPT_STRUCTURED_REPLY (default true). */
  structuredReplies?: boolean;
}

export interface ResolvedLimits {
  maxConnections: number;
  maxInFlight: number;
  maxPayload: number;
  maxOptionData: number;
  handshakeTimeout: number;
  frameTimeout: number;
  shutdownTimeout: number;
  maxExtents: number;
  zeroCopySends: number;
  sendStallTimeout: number;
  sendBuffer: number;
}

/** How the server answered READ requests, for tests and monitoring. */
export interface NbdServerStats {
  /** READ replies sent from the file with sendfile (page cache to socket). */
  zeroCopyReads: number;
  /** Pool jobs those went out in: replies queued together on a connection share one. */
  zeroCopyBatches: number;
  /**
   * Of those replies' data, the bytes the addon had to read and send through a buffer because
   * sendfile refused the file (EINVAL: /proc files, some FUSE and network file systems).
   */
  bufferedSendBytes: number;
  /** READ replies read into a buffer and written (no addon, TLS, a format that needs decoding, all send slots busy). */
  copiedReads: number;
  /**
   * WRITE payload bytes the socket read straight into the request's buffer (plain or decrypted);
   * the rest came through a connection's scratch buffer, mostly in the read that carried a header.
   */
  directWriteBytes: number;
  /** Connections whose socket got the larger send buffer (`limits.sendBuffer`; unix sockets only). */
  enlargedSendBuffers: number;
}

export function resolveLimits(l: NbdServerLimits = {}): ResolvedLimits {
  return {
    maxConnections: l.maxConnections ?? 64,
    maxInFlight: l.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT,
    maxPayload: l.maxPayload ?? 32 << 20,
    maxOptionData: l.maxOptionData ?? 64 << 10,
    handshakeTimeout: l.handshakeTimeout ?? 30_000,
    frameTimeout: l.frameTimeout ?? 30_000,
    shutdownTimeout: l.shutdownTimeout ?? 30_000,
    maxExtents: l.maxExtents ?? 65536,
    zeroCopySends: l.zeroCopySends ?? defaultZeroCopySends(),
    sendStallTimeout: l.sendStallTimeout ?? 30_000,
    sendBuffer: l.sendBuffer ?? DEFAULT_SEND_BUFFER,
  };
}
