/**
 * The one error registry of vd. A code identifies an error permanently; its message may change.
 * `docs/errors.md` is generated from this table (`pnpm --filter @vd/core gen:errors`), so add a
 * code here, with a one-line meaning and what the caller should do, and nowhere else.
 */
export const errorCodes = {
  ERR_VD_ABORTED: { meaning: 'the operation was aborted through its signal', action: 'none; retry if the abort was not intended' },
  ERR_VD_ALIGNMENT: {
    meaning: 'offset or length is not a multiple of the disk minimum block size',
    action: 'align the request to `disk.capabilities.blockSize.minimum`',
  },
  ERR_VD_CBT_RESET: {
    meaning: 'changed block tracking cannot answer for that change ID (other epoch, other disk, or tracking was reset)',
    action: 'take a full backup and start again from its change ID',
  },
  ERR_VD_CID_MISMATCH: {
    meaning: "a child disk's parentCID does not match its parent's CID",
    action: 'the parent changed after the child was made; open with `ignoreCidMismatch` only if you know the parent is intact',
  },
  ERR_VD_CLOSED: { meaning: 'the disk or connection is closed', action: 'open it again' },
  ERR_VD_CORRUPT: {
    meaning: 'the image or stream is damaged or not of the format it claims',
    action: 'run `vd check`; restore from a good copy',
  },
  ERR_VD_EXISTS: { meaning: 'the target already exists', action: 'choose another path or remove it first' },
  ERR_VD_INVALID_ARGUMENT: { meaning: 'an argument has the wrong type or value', action: 'fix the call; the message names the argument' },
  ERR_VD_IO: { meaning: 'the operating system reported an I/O error', action: 'see `cause` and `details.syscall`' },
  ERR_VD_LOOP: { meaning: 'a disk chain refers back to itself', action: 'fix the parentFileNameHint of the named disk' },
  ERR_VD_NOT_FOUND: { meaning: 'the disk, file, export or parent does not exist', action: 'check the path or URI' },
  ERR_VD_NOT_SUPPORTED: { meaning: 'the disk or transport cannot do this operation', action: 'check `disk.capabilities` before calling' },
  ERR_VD_NO_TRANSPORT: {
    meaning: 'no transport given to openDisk could open the disk',
    action: 'read `details.tried`: each transport says why it was skipped',
  },
  ERR_VD_OUT_OF_RANGE: {
    meaning: 'the request reaches past the end of the disk, or a value does not fit',
    action: 'keep offset + length within `disk.size`',
  },
  ERR_VD_PERMISSION: { meaning: 'the operating system refused access', action: 'check file permissions or run with rights to the device' },
  ERR_VD_PROTOCOL: { meaning: 'the peer broke the protocol', action: 'the connection is closed; see `details`' },
  ERR_VD_READ_ONLY: { meaning: 'the disk is open read-only', action: 'open it without `readOnly`, or write elsewhere' },
  ERR_VD_REMOTE: { meaning: 'the remote side reported an error', action: 'see `details.errno` and the message' },
  ERR_VD_TIMEOUT: { meaning: 'the peer did not answer in time', action: 'check that the peer is reachable and not overloaded' },
  ERR_VD_TLS: {
    meaning: 'the TLS channel could not be set up or verified',
    action: 'see the message: it names the expected and the actual certificate',
  },
  ERR_VD_UNAUTHORIZED: {
    meaning: 'the server refused the request: its credentials are missing or wrong',
    action: 'pass the right token (`--token-file`, `VD_TOKEN`)',
  },
  ERR_VD_UNKNOWN_FORMAT: {
    meaning: 'the file is not in a format vd reads, or a required feature is unknown',
    action: 'name the format explicitly, or convert the image with a tool that knows it',
  },
  ERR_VD_USAGE: { meaning: 'a command was called with wrong arguments', action: 'see `--help`' },
  ERR_VD_VERIFY: {
    meaning: 'verification found data that differs from what was written or recorded',
    action: 'the target or the backup is damaged; see `details.offset`',
  },
} as const satisfies Record<string, { meaning: string; action: string }>;

export type VdErrorCode = keyof typeof errorCodes;

const brand = Symbol.for('vd.error');

export interface VdErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

/**
 * Every error vd raises. `code` is permanent; wire-level facts (NBD errno, the offset that failed)
 * live in `details`, never only in the message. `instanceof` works across duplicate installs.
 */
export class VdError extends Error {
  readonly code: VdErrorCode;
  readonly details: Record<string, unknown>;
  readonly [brand] = true;

  constructor(code: VdErrorCode, message: string, options: VdErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
    this.name = code === 'ERR_VD_ABORTED' ? 'AbortError' : 'VdError';
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[brand] === true;
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, details: this.details };
  }
}

export function isVdError(value: unknown, code?: VdErrorCode): value is VdError {
  return value instanceof VdError && (code === undefined || value.code === code);
}

/** The error an aborted operation rejects with; `cause` is the signal's reason. */
export function abortError(signal: AbortSignal | undefined, what = 'operation'): VdError {
  return new VdError('ERR_VD_ABORTED', `${what} aborted`, { cause: signal?.reason });
}

export function throwIfAborted(signal: AbortSignal | undefined, what?: string): void {
  if (signal?.aborted) throw abortError(signal, what);
}

const errnoCodes: Record<string, VdErrorCode> = {
  ENOENT: 'ERR_VD_NOT_FOUND',
  ENOTDIR: 'ERR_VD_NOT_FOUND',
  EACCES: 'ERR_VD_PERMISSION',
  EPERM: 'ERR_VD_PERMISSION',
  EROFS: 'ERR_VD_READ_ONLY',
  EEXIST: 'ERR_VD_EXISTS',
  ENOSPC: 'ERR_VD_IO',
  EIO: 'ERR_VD_IO',
  ECONNREFUSED: 'ERR_VD_NOT_FOUND',
  ETIMEDOUT: 'ERR_VD_TIMEOUT',
};

/** Turns a Node system error (or anything thrown) into a VdError, keeping it as `cause`. */
export function fromSystemError(err: unknown, context: string): VdError {
  if (err instanceof VdError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = (e && typeof e.code === 'string' && errnoCodes[e.code]) || 'ERR_VD_IO';
  const message = e?.message ?? String(err);
  return new VdError(code, `${context}: ${message}`, {
    cause: err,
    details: { errno: e?.code, syscall: e?.syscall, path: e?.path },
  });
}
