import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isVdError } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeCertificate, generateCa, generateClientCertificate } from './certs.js';
import { caPair, createPki, loadPki, type Pki, pkiFiles, writePki } from './pki.js';
import { formatThumbprint, thumbprintOf } from './thumbprint.js';

let dir: string;
let pki: Pki;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-certs-'));
  pki = await createPki(join(dir, 'pki'), {
    server: { hosts: ['localhost', '127.0.0.1', '::1', 'disk.example'] },
    client: { commonName: 'backup-1' },
  });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const openssl = (...args: string[]) => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('createPki', () => {
  it('writes the nbdkit/qemu layout with private keys readable by the owner only', async () => {
    expect((await stat(pki.dir)).mode & 0o777).toBe(0o700);
    for (const [file, mode] of [
      [pkiFiles.caCert, 0o644],
      [pkiFiles.caKey, 0o600],
      [pkiFiles.serverCert, 0o644],
      [pkiFiles.serverKey, 0o600],
      [pkiFiles.clientCert, 0o644],
      [pkiFiles.clientKey, 0o600],
    ] as const) {
      expect((await stat(join(pki.dir, file))).mode & 0o777, file).toBe(mode);
    }
  });

  it('issues certificates that OpenSSL verifies for their purpose', () => {
    const ca = join(pki.dir, pkiFiles.caCert);
    expect(openssl('verify', '-CAfile', ca, '-purpose', 'sslserver', join(pki.dir, pkiFiles.serverCert))).toMatch(/: OK/);
    expect(openssl('verify', '-CAfile', ca, '-purpose', 'sslclient', join(pki.dir, pkiFiles.clientCert))).toMatch(/: OK/);
    // A client certificate is not a server certificate.
    expect(() => openssl('verify', '-CAfile', ca, '-purpose', 'sslserver', join(pki.dir, pkiFiles.clientCert))).toThrow();
  });

  it('sets the extensions GnuTLS checks', () => {
    const text = openssl('x509', '-noout', '-text', '-in', join(pki.dir, pkiFiles.serverCert));
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature, Key Encipherment/);
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication/);
    expect(text).toMatch(/X509v3 Authority Key Identifier/);
    const caText = openssl('x509', '-noout', '-text', '-in', join(pki.dir, pkiFiles.caCert));
    expect(caText).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(caText).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
  });

  it('names every host and address in subjectAltName', () => {
    const x = new X509Certificate(pki.server!.cert);
    expect(x.checkHost('localhost')).toBe('localhost');
    expect(x.checkHost('disk.example')).toBe('disk.example');
    expect(x.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(x.checkIP('::1')).toBe('::1');
    expect(x.checkHost('other.example')).toBeUndefined();
    expect(x.verify(new X509Certificate(pki.caCert!).publicKey)).toBe(true);
  });

  it('names the client by its common name', () => {
    expect(describeCertificate(pki.client!.cert).subject).toContain('CN=backup-1');
  });

  it('computes the thumbprints openssl prints', () => {
    const path = join(pki.dir, pkiFiles.serverCert);
    for (const alg of ['sha256', 'sha1'] as const) {
      const line = openssl('x509', '-noout', '-fingerprint', `-${alg}`, '-in', path).trim();
      const hex = line.slice(line.indexOf('=') + 1);
      expect(formatThumbprint(thumbprintOf(pki.server!.cert, alg), 'vddk')).toBe(hex);
    }
  });

  it('refuses to overwrite an existing PKI unless asked', async () => {
    const err = await writePki(pki.dir, { caCert: pki.caCert! }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_EXISTS')).toBe(true);
    await writePki(pki.dir, { caCert: pki.caCert! }, { overwrite: true });
  });
});

describe('loadPki', () => {
  it('reads back what createPki wrote', async () => {
    const back = await loadPki(pki.dir);
    expect(back.caCert).toBe(pki.caCert);
    expect(back.server).toEqual(pki.server);
    expect(back.client).toEqual(pki.client);
    expect(caPair(back).key).toBe(pki.caKey);
  });

  it('treats missing files as absent and half a pair as an error', async () => {
    const half = join(dir, 'half');
    await writePki(half, { caCert: pki.caCert!, client: pki.client! });
    expect((await loadPki(half)).server).toBeUndefined();
    await unlink(join(half, pkiFiles.clientKey));
    const err = await loadPki(half).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS')).toBe(true);
    expect(err.message).toContain('client-key.pem');
    expect(() => caPair({ dir: half })).toThrow(/ca-cert.pem/);
  });
});

describe('generation options', () => {
  it('honours explicit validity dates', async () => {
    const ca = caPair(pki);
    const notBefore = new Date('2020-01-01T00:00:00Z');
    const notAfter = new Date('2020-06-01T00:00:00Z');
    const c = await generateClientCertificate(ca, { notBefore, notAfter });
    const s = describeCertificate(c.cert);
    expect(s.validFrom.toISOString()).toBe(notBefore.toISOString());
    expect(s.validTo.toISOString()).toBe(notAfter.toISOString());
  });

  it('rejects bad arguments with coded errors', async () => {
    await expect(generateCa({ keyBits: 1024 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(generateCa({ validityDays: 0 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(generateClientCertificate(pki.server!)).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    const { generateServerCertificate } = await import('./certs.js');
    await expect(generateServerCertificate(caPair(pki), { hosts: ['bad host!'] })).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
    });
    expect(() => describeCertificate('not a certificate')).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
  });
});
