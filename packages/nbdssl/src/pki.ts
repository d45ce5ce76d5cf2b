import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fromSystemError, VdError } from '@vd/core';
import {
  type CertificateOptions,
  type CertificatePair,
  generateCa,
  generateClientCertificate,
  generateServerCertificate,
  type ServerCertificateOptions,
} from './certs.js';

/**
 * The PKI directory layout nbdkit, qemu-nbd and libnbd read (`--tls-certificates=DIR`,
 * `tls-creds-x509,dir=DIR`, `?tls-certificates=DIR`). `ca-key.pem` is ours: it lets `vd cert`
 * issue more certificates later; move it off hosts that only serve.
 */
export const pkiFiles = {
  caCert: 'ca-cert.pem',
  caKey: 'ca-key.pem',
  serverCert: 'server-cert.pem',
  serverKey: 'server-key.pem',
  clientCert: 'client-cert.pem',
  clientKey: 'client-key.pem',
} as const;

/** What a PKI directory holds; absent files are undefined. */
export interface Pki {
  dir: string;
  caCert?: string | undefined;
  caKey?: string | undefined;
  server?: CertificatePair | undefined;
  client?: CertificatePair | undefined;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, `cannot read ${path}`);
  }
}

function pair(dir: string, cert: string | undefined, key: string | undefined, role: string): CertificatePair | undefined {
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || key === undefined) {
    const missing = cert === undefined ? `${role}-cert.pem` : `${role}-key.pem`;
    throw new VdError('ERR_VD_TLS', `${dir} has half a ${role} certificate: ${missing} is missing`, {
      details: { reason: 'incomplete-pki', dir, missing },
    });
  }
  return { cert, key };
}

/** Reads a PKI directory. Every file is optional; a certificate without its key is an error. */
export async function loadPki(dir: string): Promise<Pki> {
  const f = (name: string) => readOptional(join(dir, name));
  const [caCert, caKey, serverCert, serverKey, clientCert, clientKey] = await Promise.all([
    f(pkiFiles.caCert),
    f(pkiFiles.caKey),
    f(pkiFiles.serverCert),
    f(pkiFiles.serverKey),
    f(pkiFiles.clientCert),
    f(pkiFiles.clientKey),
  ]);
  return {
    dir,
    caCert,
    caKey,
    server: pair(dir, serverCert, serverKey, 'server'),
    client: pair(dir, clientCert, clientKey, 'client'),
  };
}

export interface WritePkiOptions {
  /** Replace files that exist; default false (ERR_VD_EXISTS). */
  overwrite?: boolean;
}

/** Writes what `pki` holds into `dir` (created 0700): keys 0600, certificates 0644. */
export async function writePki(dir: string, pki: Omit<Pki, 'dir'>, opts: WritePkiOptions = {}): Promise<string[]> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw fromSystemError(err, `cannot create ${dir}`);
  }
  const files: [string, string | undefined, number][] = [
    [pkiFiles.caCert, pki.caCert, 0o644],
    [pkiFiles.caKey, pki.caKey, 0o600],
    [pkiFiles.serverCert, pki.server?.cert, 0o644],
    [pkiFiles.serverKey, pki.server?.key, 0o600],
    [pkiFiles.clientCert, pki.client?.cert, 0o644],
    [pkiFiles.clientKey, pki.client?.key, 0o600],
  ];
  const written: string[] = [];
  for (const [name, text, mode] of files) {
    if (text === undefined) continue;
    const path = join(dir, name);
    try {
      // `wx` refuses to clobber; `mode` applies only on creation, hence the chmod for overwrites.
      await writeFile(path, text, { mode, flag: opts.overwrite ? 'w' : 'wx' });
      await chmod(path, mode);
    } catch (err) {
      throw fromSystemError(err, `cannot write ${path}`);
    }
    written.push(path);
  }
  return written;
}

export interface CreatePkiOptions {
  ca?: CertificateOptions;
  server?: ServerCertificateOptions | false;
  client?: CertificateOptions | false;
  overwrite?: boolean;
}

/** A CA plus a server and a client certificate, written as a PKI directory. */
export async function createPki(dir: string, opts: CreatePkiOptions = {}): Promise<Pki> {
  const ca = await generateCa(opts.ca);
  const [server, client] = await Promise.all([
    opts.server === false ? undefined : generateServerCertificate(ca, opts.server),
    opts.client === false ? undefined : generateClientCertificate(ca, opts.client),
  ]);
  const pki: Pki = { dir, caCert: ca.cert, caKey: ca.key, server, client };
  await writePki(dir, pki, { overwrite: opts.overwrite ?? false });
  return pki;
}

/** The CA of a PKI directory as a pair, for issuing more certificates. */
export function caPair(pki: Pki): CertificatePair {
  if (pki.caCert === undefined || pki.caKey === undefined) {
    throw new VdError('ERR_VD_NOT_FOUND', `${pki.dir} has no ${pki.caCert === undefined ? pkiFiles.caCert : pkiFiles.caKey}`, {
      details: { dir: pki.dir },
    });
  }
  return { cert: pki.caCert, key: pki.caKey };
}
