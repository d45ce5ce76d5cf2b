import { isVdError, VdError, type VdErrorCode } from '@vd/core';
import type { ExportInfo, HandshakeOptions } from './connection.js';
import type { NbdTarget } from './uri.js';

/** The messages between a `WorkerConnection` and its thread (connection-worker.ts). */

/**
 * How a worker upgrades its connection (TLS, from `@vd/nbdssl`): the thread imports `module` and
 * calls its `workerUpgrade(options, onPeer)`, which returns `HandshakeOptions.tls`. A module, not
 * a function: functions do not cross threads.
 */
export interface WorkerUpgrade {
  /** URL of an ES module exporting `workerUpgrade`. */
  module: string;
  /** Its settings, structured-clonable. */
  options: unknown;
}

/** The `workerUpgrade` export of a `WorkerUpgrade` module; `onPeer` reports what it learnt of the server. */
export type WorkerUpgradeFn = (options: unknown, onPeer: (peer: unknown) => void) => HandshakeOptions['tls'];

/** What a worker connects with: everything structured-clonable, no functions, no signal. */
export interface WorkerSetup {
  target: NbdTarget;
  handshake: Omit<HandshakeOptions, 'tls' | 'signal'>;
  /** The upgrade (TLS), or none for a plaintext connection. */
  upgrade: WorkerUpgrade | undefined;
}

export type ToWorker =
  | { t: 'connect'; setup: WorkerSetup }
  | { t: 'read'; id: number; offset: number; length: number; flags: number }
  | { t: 'recycle'; buf: ArrayBuffer }
  | { t: 'write'; id: number; offset: number; data: ArrayBuffer; flags: number }
  | { t: 'flush'; id: number }
  | { t: 'trim' | 'zero' | 'blockStatus'; id: number; offset: number; length: number; flags: number }
  | { t: 'cache'; id: number; offset: number; length: number }
  | { t: 'disconnect' };

export type FromWorker =
  | { t: 'open'; info: ExportInfo }
  | { t: 'fail'; error: SerializedError }
  | { t: 'peer'; peer: unknown }
  | { t: 'done'; id: number; value?: unknown; buf?: ArrayBuffer }
  | { t: 'err'; id: number; error: SerializedError }
  | { t: 'dead'; error: SerializedError }
  /** After `disconnect`: the connection is closed and the thread waits for its next `connect`. */
  | { t: 'released' };

/** An error as it crosses threads; a VdError comes back with its code and details. */
export interface SerializedError {
  code: string | undefined;
  message: string;
  details: Record<string, unknown> | undefined;
  cause: { message: string; code: string | undefined } | undefined;
}

export function serializeError(err: unknown): SerializedError {
  const e = err instanceof Error ? err : new Error(String(err));
  const cause = e.cause instanceof Error ? e.cause : undefined;
  let details: Record<string, unknown> | undefined;
  if (isVdError(e)) {
    try {
      details = structuredClone(e.details);
    } catch {
      details = Object.fromEntries(Object.entries(e.details).filter(([, v]) => typeof v !== 'object' || v === null));
    }
  }
  return {
    code: isVdError(e) ? e.code : undefined,
    message: e.message,
    details,
    cause: cause ? { message: cause.message, code: (cause as NodeJS.ErrnoException).code } : undefined,
  };
}

export function deserializeError(s: SerializedError): VdError {
  const cause = s.cause ? Object.assign(new Error(s.cause.message), s.cause.code ? { code: s.cause.code } : {}) : undefined;
  const code = (s.code ?? 'ERR_VD_IO') as VdErrorCode;
  return new VdError(code, s.message, { cause, details: s.details ?? {} });
}
