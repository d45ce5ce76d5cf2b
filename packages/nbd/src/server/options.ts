import type { Duplex } from 'node:stream';
import type { Disk } from '@vd/core';

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
  /** Requests a client may have in flight; the server stops reading from it beyond (default 16). */
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
}

export function resolveLimits(l: NbdServerLimits = {}): ResolvedLimits {
  return {
    maxConnections: l.maxConnections ?? 64,
    maxInFlight: l.maxInFlight ?? 16,
    maxPayload: l.maxPayload ?? 32 << 20,
    maxOptionData: l.maxOptionData ?? 64 << 10,
    handshakeTimeout: l.handshakeTimeout ?? 30_000,
    frameTimeout: l.frameTimeout ?? 30_000,
    shutdownTimeout: l.shutdownTimeout ?? 30_000,
    maxExtents: l.maxExtents ?? 65536,
  };
}
