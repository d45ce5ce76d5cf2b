import { readFile } from 'node:fs/promises';
import { fromSystemError } from '@vd/core';
import { tlsError } from './tls-error.js';

/**
 * TLS-PSK keys files as GnuTLS's psktool writes them and nbdkit (`--tls-psk`), qemu
 * (`tls-creds-psk`) and libnbd (`tls-psk-file`) read them: one `identity:hexkey` per line.
 */

export interface PskKey {
  identity: string;
  key: Uint8Array;
}

/** Identity → key. */
export type PskTable = ReadonlyMap<string, Uint8Array>;

const maxKeyBytes = 512;

export function parsePskFile(text: string, name = 'PSK file'): PskTable {
  const table = new Map<string, Uint8Array>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const where = `${name} line ${i + 1}`;
    if (colon <= 0) throw tlsError('configuration', `${where}: expected identity:hexkey`, { line: i + 1 });
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 > maxKeyBytes) {
      throw tlsError('configuration', `${where}: the key of ${JSON.stringify(identity)} must be 1 to ${maxKeyBytes} bytes of hex`, {
        line: i + 1,
      });
    }
    if (table.has(identity))
      throw tlsError('configuration', `${where}: identity ${JSON.stringify(identity)} appears twice`, { line: i + 1 });
    table.set(identity, Uint8Array.from(Buffer.from(hex, 'hex')));
  });
  if (table.size === 0) throw tlsError('configuration', `${name} holds no keys`);
  return table;
}

export async function loadPskFile(path: string): Promise<PskTable> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw fromSystemError(err, `cannot read the PSK file ${path}`);
  }
  return parsePskFile(text, path);
}

/**
 * The client's key: `identity` picks a line (libnbd's `tls-username`); without it the file must
 * hold exactly one key, or the user's login name is used, as libnbd does.
 */
export function pickPsk(table: PskTable, identity: string | undefined, name = 'PSK file'): PskKey {
  if (identity === undefined) {
    if (table.size === 1) {
      const [entry] = table;
      return { identity: entry![0], key: entry![1] };
    }
    identity = process.env.USER ?? process.env.LOGNAME;
  }
  const key = identity === undefined ? undefined : table.get(identity);
  if (key === undefined || identity === undefined) {
    throw tlsError(
      'configuration',
      `${name} has no key for ${identity === undefined ? 'this user' : JSON.stringify(identity)}; set tls-username= to one of its identities`,
      {
        identities: [...table.keys()],
      },
    );
  }
  return { identity, key };
}
