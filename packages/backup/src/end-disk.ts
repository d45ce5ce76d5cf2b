import { abortError, type Disk } from '@vd/core';

/**
 * Ends a disk that was read from. After an abort, reads may be stuck at a slow source (an NBD
 * server that stopped answering) and `close()` would wait for them forever: the disk is only
 * read, so it is destroyed instead (its pending reads fail, nothing is lost).
 */
export function endReadDisk(disk: Disk, signal: AbortSignal | undefined, what: string): Promise<void> {
  return signal?.aborted ? disk.destroy(abortError(signal, what)) : disk.close();
}
