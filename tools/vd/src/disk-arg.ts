import { type Disk, type OpenDiskOptions, openDisk } from '@vd/core';
import { transports } from './transports.js';

/**
 * Opens a disk argument (a path, or a URI such as `file:///...`) through the CLI's transport
 * list. Read-only unless the command writes.
 */
export function openDiskArg(arg: string, opts: Omit<OpenDiskOptions, 'transports'> = {}): Promise<Disk> {
  return openDisk(arg, { readOnly: true, ...opts, transports: transports() });
}
