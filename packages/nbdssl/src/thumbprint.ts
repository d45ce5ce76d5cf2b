import { createHash, X509Certificate } from 'node:crypto';
import { VdError } from '@vd/core';

/**
 * Certificate thumbprints: the hash of a certificate's DER bytes. Ours are written
 * `sha256:AB:CD:…`; VDDK's `thumbPrint` is bare colon-hex, SHA-1 (20 pairs) and, on newer
 * hosts, SHA-256 (32 pairs), so a bare value is told apart by its length.
 */

export type ThumbprintAlgorithm = 'sha1' | 'sha256';

export interface Thumbprint {
  algorithm: ThumbprintAlgorithm;
  /** The digest, uppercase hex without separators. */
  hex: string;
}

const digestLength: Record<ThumbprintAlgorithm, number> = { sha1: 20, sha256: 32 };

/** Parses `sha256:AB:CD…`, `sha1:…`, `SHA256 Fingerprint=…` (openssl), or bare hex (colons optional). */
export function parseThumbprint(text: string): Thumbprint {
  const bad = (why: string) =>
    new VdError('ERR_VD_INVALID_ARGUMENT', `thumbprint ${JSON.stringify(text)} is not valid: ${why}`, {
      details: { thumbprint: text },
    });
  let rest = text.trim();
  let algorithm: ThumbprintAlgorithm | undefined;
  const prefixed = /^(sha-?1|sha-?256)(?:\s+fingerprint)?\s*[:=]\s*/i.exec(rest);
  if (prefixed) {
    algorithm = prefixed[1]!.replace('-', '').toLowerCase() as ThumbprintAlgorithm;
    rest = rest.slice(prefixed[0].length);
  }
  if (!/^[0-9a-f]{2}(?::?[0-9a-f]{2})*$/i.test(rest)) throw bad('expected hex pairs, optionally separated by colons');
  const hex = rest.replaceAll(':', '').toUpperCase();
  const bytes = hex.length / 2;
  if (algorithm === undefined) {
    if (bytes === digestLength.sha1) algorithm = 'sha1';
    else if (bytes === digestLength.sha256) algorithm = 'sha256';
    else throw bad(`${bytes} bytes fit neither SHA-1 (20) nor SHA-256 (32)`);
  } else if (bytes !== digestLength[algorithm]) {
    throw bad(`${algorithm} takes ${digestLength[algorithm]} bytes, got ${bytes}`);
  }
  return { algorithm, hex };
}

/** `sha256:AB:CD:…` (the default), or VDDK's bare `AB:CD:…`. */
export function formatThumbprint(t: Thumbprint, style: 'prefixed' | 'vddk' = 'prefixed'): string {
  const pairs = t.hex.match(/../g)!.join(':');
  return style === 'vddk' ? pairs : `${t.algorithm}:${pairs}`;
}

/** The thumbprint of a certificate given as DER bytes, PEM text or a parsed X509Certificate. */
export function thumbprintOf(cert: Uint8Array | string | X509Certificate, algorithm: ThumbprintAlgorithm = 'sha256'): Thumbprint {
  const der = cert instanceof X509Certificate ? cert.raw : typeof cert === 'string' ? new X509Certificate(cert).raw : cert;
  return { algorithm, hex: createHash(algorithm).update(der).digest('hex').toUpperCase() };
}

export function sameThumbprint(a: Thumbprint, b: Thumbprint): boolean {
  return a.algorithm === b.algorithm && a.hex === b.hex;
}
