import { generateKeyPair as generateKeyPairCb, randomBytes, X509Certificate } from 'node:crypto';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { promisify } from 'node:util';
import { VdError } from '@vd/core';
import type * as Forge from 'node-forge';

/**
 * Certificate generation for NBD over TLS. node-forge builds and signs the X.509 certificates;
 * the RSA keys come from node:crypto (OpenSSL, off the main thread), which is what forge itself
 * would call under Node, only without blocking.
 *
 * The extensions are the ones GnuTLS (nbdkit, qemu-nbd, libnbd) insists on: a CA with
 * basicConstraints cA and keyCertSign; leaves with cA false, digitalSignature + keyEncipherment,
 * and the extended key usage of their role; servers name every host and address in subjectAltName.
 */

// node-forge is CommonJS whose typings declare no default export; require keeps both honest.
const forge: typeof Forge = createRequire(import.meta.url)('node-forge');

/** A certificate and its private key, both PEM. */
export interface CertificatePair {
  cert: string;
  key: string;
}

export interface CertificateOptions {
  /** Subject common name. */
  commonName?: string;
  /** Subject organization (O=). */
  organization?: string;
  /** Days from `notBefore`; default 3650 for a CA, 825 for a leaf. */
  validityDays?: number;
  /** Start of validity; default one hour ago, to tolerate clock skew between peers. */
  notBefore?: Date;
  /** End of validity; overrides `validityDays`. */
  notAfter?: Date;
  /** RSA modulus length; default 2048. */
  keyBits?: number;
}

export interface ServerCertificateOptions extends CertificateOptions {
  /** DNS names and IP addresses the server answers to; default localhost, 127.0.0.1, ::1 and this host's name. */
  hosts?: readonly string[];
}

const generateKeyPair = promisify(generateKeyPairCb);

/** The hosts a server certificate names when none are given. */
export function defaultServerHosts(): string[] {
  const names = ['localhost', '127.0.0.1', '::1'];
  const own = hostname();
  if (own && !names.includes(own)) names.push(own);
  return names;
}

async function newKey(bits: number): Promise<{ pem: string; forgeKey: Forge.pki.rsa.PrivateKey; forgePublic: Forge.pki.rsa.PublicKey }> {
  if (!Number.isSafeInteger(bits) || bits < 2048 || bits > 8192) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `keyBits must be an integer from 2048 to 8192, got ${bits}`);
  }
  const { privateKey, publicKey } = await generateKeyPair('rsa', {
    modulusLength: bits,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return {
    pem: privateKey,
    forgeKey: forge.pki.privateKeyFromPem(privateKey),
    forgePublic: forge.pki.publicKeyFromPem(publicKey) as Forge.pki.rsa.PublicKey,
  };
}

/** A positive 128-bit serial (RFC 5280: at most 20 octets, non-negative). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function validity(opts: CertificateOptions, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const notBefore = opts.notBefore ?? new Date(Date.now() - 3600_000);
  const days = opts.validityDays ?? defaultDays;
  if (opts.notAfter === undefined && (!Number.isSafeInteger(days) || days < 1)) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `validityDays must be a positive integer, got ${days}`);
  }
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + days * 86400_000);
  if (notAfter <= notBefore) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'notAfter must be later than notBefore');
  return { notBefore, notAfter };
}

function subject(commonName: string, organization: string | undefined): Forge.pki.CertificateField[] {
  const attrs: Forge.pki.CertificateField[] = [];
  if (organization) attrs.push({ shortName: 'O', value: organization });
  attrs.push({ shortName: 'CN', value: commonName });
  return attrs;
}

function sanEntries(hosts: readonly string[]): { type: number; value?: string; ip?: string }[] {
  return hosts.map((h) => {
    // 7 = iPAddress, 2 = dNSName (RFC 5280 GeneralName).
    const host = h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
    if (isIP(host)) return { type: 7, ip: host };
    if (!/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(host)) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `host ${JSON.stringify(h)} is neither a DNS name nor an IP address`);
    }
    return { type: 2, value: host };
  });
}

function sign(cert: Forge.pki.Certificate, key: Forge.pki.rsa.PrivateKey): string {
  cert.sign(key, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/** A new certificate authority that signs server and client certificates. */
export async function generateCa(opts: CertificateOptions = {}): Promise<CertificatePair> {
  const { notBefore, notAfter } = validity(opts, 3650);
  const key = await newKey(opts.keyBits ?? 2048);
  const cert = forge.pki.createCertificate();
  cert.publicKey = key.forgePublic;
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  const name = subject(opts.commonName ?? 'vd CA', opts.organization ?? 'vd');
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return { cert: sign(cert, key.forgeKey), key: key.pem };
}

function loadCa(ca: CertificatePair): { cert: Forge.pki.Certificate; key: Forge.pki.rsa.PrivateKey } {
  try {
    const cert = forge.pki.certificateFromPem(ca.cert);
    const key = forge.pki.privateKeyFromPem(ca.key);
    const bc = cert.getExtension('basicConstraints') as { cA?: boolean } | null;
    if (!bc?.cA) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'the issuing certificate is not a CA (basicConstraints cA is not set)');
    return { cert, key };
  } catch (err) {
    if (err instanceof VdError) throw err;
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `cannot read the CA certificate or key: ${(err as Error).message}`, { cause: err });
  }
}

async function leaf(
  ca: CertificatePair,
  role: 'server' | 'client',
  opts: ServerCertificateOptions,
  commonName: string,
): Promise<CertificatePair> {
  const issuer = loadCa(ca);
  const { notBefore, notAfter } = validity(opts, 825);
  const key = await newKey(opts.keyBits ?? 2048);
  const cert = forge.pki.createCertificate();
  cert.publicKey = key.forgePublic;
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  cert.setSubject(subject(commonName, opts.organization ?? 'vd'));
  cert.setIssuer(issuer.cert.subject.attributes);
  const extensions: object[] = [
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    role === 'server' ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: issuer.cert.generateSubjectKeyIdentifier().getBytes() },
  ];
  if (opts.hosts && opts.hosts.length > 0) extensions.push({ name: 'subjectAltName', altNames: sanEntries(opts.hosts) });
  cert.setExtensions(extensions);
  return { cert: sign(cert, issuer.key), key: key.pem };
}

/** A server certificate signed by `ca`, naming `hosts` (DNS names and IP addresses) in subjectAltName. */
export function generateServerCertificate(ca: CertificatePair, opts: ServerCertificateOptions = {}): Promise<CertificatePair> {
  const hosts = opts.hosts ?? defaultServerHosts();
  if (hosts.length === 0) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'a server certificate needs at least one host name or address');
  return leaf(ca, 'server', { ...opts, hosts }, opts.commonName ?? hosts[0]!);
}

/**
 * A client certificate signed by `ca`. Servers that authorize by certificate (qemu's tls-authz,
 * our per-export lists) match its subject, so choose `commonName` as the identity.
 */
export function generateClientCertificate(ca: CertificatePair, opts: CertificateOptions = {}): Promise<CertificatePair> {
  return leaf(ca, 'client', opts, opts.commonName ?? 'vd client');
}

/** Facts about a PEM certificate, for `vd cert show` and for messages. */
export interface CertificateSummary {
  subject: string;
  issuer: string;
  validFrom: Date;
  validTo: Date;
  subjectAltName: string | undefined;
  serialNumber: string;
  ca: boolean;
}

export function describeCertificate(pem: string): CertificateSummary {
  let x: X509Certificate;
  try {
    x = new X509Certificate(pem);
  } catch (err) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `not a PEM certificate: ${(err as Error).message}`, { cause: err });
  }
  return {
    subject: x.subject.replaceAll('\n', ', '),
    issuer: x.issuer.replaceAll('\n', ', '),
    validFrom: new Date(x.validFrom),
    validTo: new Date(x.validTo),
    subjectAltName: x.subjectAltName,
    serialNumber: x.serialNumber,
    ca: x.ca,
  };
}
