import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate } from 'node:tls';

/**
 * Checking a client certificate on the server. A TLSSocket made from an accepted plain socket (the
 * STARTTLS upgrade) does not get the verdict node:tls gives its own servers, so the chain is
 * checked here, with public X509Certificate calls: each link signed by the next, in date, the
 * top signed by a trusted CA, and the leaf allowed for client authentication.
 */

const clientAuthOid = '1.3.6.1.5.5.7.3.2';
const anyPurposeOid = '2.5.29.37.0';
const maxDepth = 8;

/** Undefined when the certificate verifies; otherwise why not. */
export function clientCertificateProblem(
  cert: DetailedPeerCertificate,
  trusted: readonly X509Certificate[],
  now = new Date(),
): string | undefined {
  let current: DetailedPeerCertificate | undefined = cert;
  let depth = 0;
  while (current?.raw !== undefined && depth < maxDepth) {
    const x = new X509Certificate(current.raw);
    if (now < new Date(x.validFrom)) return `the certificate of ${x.subject.replaceAll('\n', ', ')} is not valid before ${x.validFrom}`;
    if (now > new Date(x.validTo)) return `the certificate of ${x.subject.replaceAll('\n', ', ')} expired on ${x.validTo}`;
    if (depth === 0) {
      const purposes = x.keyUsage;
      if (purposes !== undefined && !purposes.includes(clientAuthOid) && !purposes.includes(anyPurposeOid)) {
        return 'the certificate is not meant for client authentication (extendedKeyUsage lacks clientAuth)';
      }
    } else if (!x.ca) {
      return `${x.subject.replaceAll('\n', ', ')} signs a certificate but is not a CA`;
    }
    if (trusted.some((ca) => x.checkIssued(ca) && x.verify(ca.publicKey) && now >= new Date(ca.validFrom) && now <= new Date(ca.validTo)))
      return undefined;
    const next: DetailedPeerCertificate | undefined = current.issuerCertificate;
    if (next === undefined || next === current || next.raw === undefined || next.raw.equals(current.raw)) break;
    const up = new X509Certificate(next.raw);
    if (!x.checkIssued(up) || !x.verify(up.publicKey)) return `the chain is broken above ${x.subject.replaceAll('\n', ', ')}`;
    current = next;
    depth++;
  }
  return 'it is not signed by a CA this server trusts (ca-cert.pem)';
}
