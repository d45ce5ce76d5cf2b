import { join } from 'node:path';
import { type Disk, file, openDisk, vmdkFormat } from '@vd/core';

/** The transport a repository's VMDKs are opened with: local files, VMDK only. */
export const repositoryTransports = () => [file({ formats: [vmdkFormat] })];

/** Opens a point's VMDK; the chain below it opens through its parent hints. */
export function openPointDisk(pointDir: string, fileName: string, opts: { writable?: boolean; signal?: AbortSignal } = {}): Promise<Disk> {
  return openDisk(join(pointDir, fileName), {
    readOnly: opts.writable !== true,
    format: 'vmdk',
    signal: opts.signal,
    transports: repositoryTransports(),
  });
}
