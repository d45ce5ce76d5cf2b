import type { StoreResolver } from '../../spec.js';
import { checkDdbKey } from './descriptor.js';
import { openVmdk } from './open.js';

/** The `ddb.*` keys of one link's descriptor (VDDK GetMetadataKeys + ReadMetadata). */
export async function readVmdkMetadata(resolver: StoreResolver, name: string): Promise<Record<string, string>> {
  const link = await openVmdk(resolver, name, { readOnly: true, singleLink: true });
  try {
    return Object.fromEntries(link.descriptor.ddb);
  } finally {
    await link.close();
  }
}

/**
 * Sets `ddb.*` keys of one link (VDDK WriteMetadata); `undefined` removes a key. The descriptor is
 * rewritten whole, as VMware does; the CID is left alone (metadata is not content).
 */
export async function writeVmdkMetadata(resolver: StoreResolver, name: string, entries: Record<string, string | undefined>): Promise<void> {
  for (const k of Object.keys(entries)) checkDdbKey(k);
  const link = await openVmdk(resolver, name, { singleLink: true });
  try {
    for (const [k, v] of Object.entries(entries)) {
      if (v === undefined) link.descriptor.ddb.delete(k);
      else link.descriptor.ddb.set(k, v);
    }
    await link.writeDescriptor();
  } finally {
    await link.close();
  }
}
