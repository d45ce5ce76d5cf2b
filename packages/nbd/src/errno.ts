import { isVdError, VdError, type VdErrorCode } from '@vd/core';
import { Errno, errnoName } from './protocol.js';

/**
 * The NBD errno a server answers for a failed request. Only the values the protocol defines go
 * on the wire; anything unexpected becomes EIO.
 */
export function toErrno(err: unknown, command: 'read' | 'write' | 'other' = 'other'): number {
  if (isVdError(err)) {
    const remote = err.details.errno;
    switch (err.code) {
      case 'ERR_VD_READ_ONLY':
      case 'ERR_VD_PERMISSION':
        return Errno.EPERM;
      case 'ERR_VD_OUT_OF_RANGE':
        return command === 'write' ? Errno.ENOSPC : Errno.EINVAL;
      case 'ERR_VD_INVALID_ARGUMENT':
      case 'ERR_VD_ALIGNMENT':
        return Errno.EINVAL;
      case 'ERR_VD_NOT_SUPPORTED':
        return err.details.fast === true ? Errno.ENOTSUP : Errno.EINVAL;
      case 'ERR_VD_CLOSED':
        return Errno.ESHUTDOWN;
      case 'ERR_VD_REMOTE':
        return typeof remote === 'number' && errnoName[remote] ? remote : Errno.EIO;
      case 'ERR_VD_IO':
        return remote === 'ENOSPC' || remote === 'EDQUOT' || remote === 'EFBIG' ? Errno.ENOSPC : Errno.EIO;
      default:
        return Errno.EIO;
    }
  }
  return Errno.EIO;
}

const codes: Record<number, VdErrorCode> = {
  [Errno.EPERM]: 'ERR_VD_READ_ONLY',
  [Errno.EINVAL]: 'ERR_VD_INVALID_ARGUMENT',
  [Errno.ENOSPC]: 'ERR_VD_OUT_OF_RANGE',
  [Errno.EOVERFLOW]: 'ERR_VD_OUT_OF_RANGE',
  [Errno.ENOTSUP]: 'ERR_VD_NOT_SUPPORTED',
  [Errno.ESHUTDOWN]: 'ERR_VD_CLOSED',
  [Errno.EIO]: 'ERR_VD_IO',
};

/** A server's error reply as a coded error; the wire errno stays in `details.errno`. */
export function fromErrno(errno: number, op: string, message: string, details: Record<string, unknown> = {}): VdError {
  const name = errnoName[errno] ?? `errno ${errno}`;
  const code = codes[errno] ?? 'ERR_VD_REMOTE';
  const text = message ? `: ${message}` : '';
  return new VdError(code, `NBD ${op} failed with ${name}${text}`, { details: { ...details, errno, errnoName: name, remote: true } });
}
