import { readFileSync } from 'node:fs';
import { bytesOfUuid } from './change-id.js';

let cached: Uint8Array | null | undefined;

/**
 * This boot of this host, from Linux's `/proc/sys/kernel/random/boot_id`; undefined elsewhere.
 * Marks written (not yet fsynced) survive a killed process in the page cache, but not a host
 * crash; the boot ID tells the two apart when an unclean sidecar is opened.
 */
export function currentBootId(): Uint8Array | undefined {
  if (cached === undefined) {
    try {
      cached = bytesOfUuid(readFileSync('/proc/sys/kernel/random/boot_id', 'latin1')) ?? null;
    } catch {
      cached = null;
    }
  }
  return cached ?? undefined;
}
