import { isIP } from 'node:net';
import { checkServerIdentity, type DetailedPeerCertificate, type TLSSocket } from 'node:tls';
import { formatThumbprint, parseThumbprint, sameThumbprint, type Thumbprint, thumbprintOf } from './thumbprint.js';
import { tlsError } from './tls-error.js';

/**
 * Verifying the server after the handshake. node:tls runs with `rejectUnauthorized: false` so a
 * pinned self-signed certificate can be accepted; everything Node would have checked is checked
 * here instead, and each refusal says which check failed and what to do.
 */

export interface PeerVerification {
  /** Trusted CA certificates (PEM). Undefined: Node's bundled roots. Ignored when a thumbprint is pinned. */
  ca?: string | readonly string[] | undefined;
  /**
   * Pinned server certificate thumbprint(s): `sha256:AB:…`, `sha1:…`, or VDDK's bare colon-hex.
   * When given, the certificate is trusted by its hash alone (no CA, no host name check), as VDDK
   * does; its validity dates still count.
   */
  thumbprint?: string | Thumbprint | readonly (string | Thumbprint)[] | undefined;
  /** `false` skips every check (libnbd's tls-verify-peer=false): encryption without authentication. */
  verifyPeer?: boolean | undefined;
  /** The name the certificate must carry; default the host that was dialled. */
  hostname?: string | undefined;
}

/** What was learnt about the peer, for `disk.info()` and logs. */
export interface PeerIdentity {
  /** How the peer was trusted. */
  trustedBy: 'ca' | 'thumbprint' | 'psk' | 'unverified';
  subject?: string;
  issuer?: string;
  validTo?: string;
  sha256?: string;
  sha1?: string;
  protocol: string | null;
  cipher: string;
}

const untrustedCodes = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_REJECTED',
  'INVALID_CA',
  'INVALID_PURPOSE',
]);

function name(fields: Record<string, string | string[] | undefined> | undefined): string {
  if (!fields) return '';
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
    .join(', ');
}

function expectedThumbprints(value: PeerVerification['thumbprint']): Thumbprint[] {
  if (value === undefined) return [];
  const list = Array.isArray(value) ? value : [value];
  return list.map((t) => (typeof t === 'string' ? parseThumbprint(t) : (t as Thumbprint)));
}

/** Checks that pinned thumbprints parse before a connection is made, so a typo fails fast. */
export function checkThumbprintOption(value: PeerVerification['thumbprint']): void {
  expectedThumbprints(value);
}

function checkDates(cert: DetailedPeerCertificate, who: string, facts: Record<string, unknown>, now = Date.now()): void {
  const from = Date.parse(cert.valid_from);
  const to = Date.parse(cert.valid_to);
  if (Number.isFinite(to) && now > to) {
    throw tlsError(
      'expired',
      `${who}'s certificate expired on ${new Date(to).toISOString()} (${facts.subject}); renew it (vd cert server) or check this machine's clock`,
      facts,
    );
  }
  if (Number.isFinite(from) && now < from) {
    throw tlsError(
      'not-yet-valid',
      `${who}'s certificate is not valid before ${new Date(from).toISOString()} (${facts.subject}); check the clocks of both machines`,
      facts,
    );
  }
}

/**
 * Verifies the server on a client TLS socket that finished its handshake. Returns what was learnt;
 * throws ERR_VD_TLS saying which check failed. `who` names the peer in messages (`host:port`).
 */
export function verifyServer(socket: TLSSocket, opts: PeerVerification & { host: string; psk?: boolean }, who: string): PeerIdentity {
  const cipher = socket.getCipher();
  const base = { protocol: socket.getProtocol(), cipher: cipher?.standardName ?? cipher?.name ?? 'unknown' };
  if (opts.psk) return { trustedBy: 'psk', ...base };
  const cert = socket.getPeerCertificate(true);
  const hasCert = cert && Object.keys(cert).length > 0 && cert.raw !== undefined;
  if (opts.verifyPeer === false) {
    return hasCert
      ? { trustedBy: 'unverified', subject: name(cert.subject), ...base, sha256: formatThumbprint(thumbprintOf(cert.raw)) }
      : { trustedBy: 'unverified', ...base };
  }
  if (!hasCert) throw tlsError('no-certificate', `${who} presented no certificate; it cannot be verified`);
  const sha256 = formatThumbprint(thumbprintOf(cert.raw, 'sha256'));
  const sha1 = formatThumbprint(thumbprintOf(cert.raw, 'sha1'));
  const facts = {
    subject: name(cert.subject),
    issuer: name(cert.issuer),
    validTo: cert.valid_to,
    actual: { sha256, sha1 },
    host: opts.host,
  };
  const identity: Omit<PeerIdentity, 'trustedBy'> = {
    subject: facts.subject,
    issuer: facts.issuer,
    validTo: cert.valid_to,
    sha256,
    sha1,
    ...base,
  };

  const pinned = expectedThumbprints(opts.thumbprint);
  if (pinned.length > 0) {
    const match = pinned.some((t) => sameThumbprint(t, thumbprintOf(cert.raw, t.algorithm)));
    if (!match) {
      const expected = pinned.map((t) => formatThumbprint(t));
      const actual = pinned[0]!.algorithm === 'sha1' ? sha1 : sha256;
      throw tlsError(
        'thumbprint-mismatch',
        `${who}'s certificate thumbprint does not match: expected ${expected.join(' or ')}, actual ${actual} (${facts.subject}). ` +
          'If the server was re-keyed on purpose, pin the actual thumbprint; otherwise do not connect (someone may be in between)',
        { ...facts, expected: expected.length === 1 ? expected[0] : expected },
      );
    }
    checkDates(cert, who, facts);
    return { trustedBy: 'thumbprint', ...identity };
  }

  const verifyError = socket.authorizationError as unknown as string | Error | null | undefined;
  const code = verifyError instanceof Error ? ((verifyError as NodeJS.ErrnoException).code ?? verifyError.message) : verifyError;
  if (code) {
    if (code === 'CERT_HAS_EXPIRED') checkDates(cert, who, facts);
    if (code === 'CERT_NOT_YET_VALID') checkDates(cert, who, facts);
    if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
      // The leaf is in date, so an intermediate or the CA is not.
      throw tlsError('expired', `a certificate in ${who}'s chain is out of date (${code}); renew the CA or the intermediate`, {
        ...facts,
        opensslCode: code,
      });
    }
    const self = code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || facts.subject === facts.issuer;
    const hint = `trust it by giving its CA (ca-cert.pem in tls-certificates=DIR) or by pinning tls-thumbprint=${sha256}`;
    throw tlsError(
      'untrusted',
      untrustedCodes.has(code)
        ? `${who}'s certificate is ${self ? 'self-signed and not trusted' : 'not signed by a trusted CA'} (${code}, issuer ${facts.issuer}); ${hint}`
        : `${who}'s certificate failed verification (${code}); ${hint}`,
      { ...facts, opensslCode: code },
    );
  }

  const hostname = opts.hostname ?? opts.host;
  const bare = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  const wrongHost = checkServerIdentity(bare, cert);
  if (wrongHost) {
    throw tlsError(
      'wrong-host',
      `${who}'s certificate is not for ${bare}: it names ${cert.subjectaltname ?? facts.subject}; connect by one of those names, ` +
        `set tls-hostname=, or issue a certificate that names ${bare} (vd cert server --host ${bare})`,
      { ...facts, hostname: bare, names: cert.subjectaltname },
      wrongHost,
    );
  }
  return { trustedBy: 'ca', ...identity };
}

/** SNI may carry a DNS name only (RFC 6066), never an address. */
export function sniName(host: string): string | undefined {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return isIP(bare) || bare === '' ? undefined : bare;
}
