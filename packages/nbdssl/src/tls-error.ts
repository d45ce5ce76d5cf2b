import { VdError } from '@vd/core';

/**
 * Why a TLS channel was refused, in `details.reason` of an ERR_VD_TLS error. Callers branch on
 * this, not on the message.
 */
export type TlsFailure =
  /** The certificate's hash is not the pinned thumbprint. */
  | 'thumbprint-mismatch'
  | 'expired'
  | 'not-yet-valid'
  /** The chain does not lead to a trusted CA (self-signed, unknown issuer, bad signature). */
  | 'untrusted'
  /** The certificate does not name the host that was dialled. */
  | 'wrong-host'
  /** The peer presented no certificate where one is required. */
  | 'no-certificate'
  /** The server refused STARTTLS; nothing else was sent in the clear. */
  | 'starttls-refused'
  /** The server requires TLS and the client did not start it. */
  | 'tls-required'
  /** What arrived where a TLS record was due is not TLS (plaintext after STARTTLS, garbage). */
  | 'not-tls'
  /** Bytes arrived in the clear after STARTTLS and before the handshake (injection attempt). */
  | 'plaintext-after-starttls'
  /** The client certificate is not allowed to open this export. */
  | 'not-authorized'
  /** The TLS handshake failed for another reason; see `details.opensslCode`. */
  | 'handshake'
  /** A PSK, certificate or key file is unusable. */
  | 'configuration';

export function tlsError(reason: TlsFailure, message: string, details: Record<string, unknown> = {}, cause?: unknown): VdError {
  return new VdError('ERR_VD_TLS', message, { cause, details: { reason, ...details } });
}

/** OpenSSL error codes that mean "the bytes on the wire are not TLS". */
const notTlsCodes = new Set([
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_SSL_PACKET_LENGTH_TOO_LONG',
  'ERR_SSL_HTTP_REQUEST',
  'ERR_SSL_UNKNOWN_PROTOCOL',
  'ERR_SSL_RECORD_LENGTH_MISMATCH',
  'ERR_SSL_UNEXPECTED_RECORD',
  'ERR_SSL_UNEXPECTED_MESSAGE',
  'ERR_SSL_BAD_PACKET_LENGTH',
  'ERR_SSL_RECORD_LAYER_FAILURE',
]);

/**
 * Turns a handshake failure from node:tls (an OpenSSL error, a reset, an early close) into an
 * ERR_VD_TLS error that says what probably happened and what to do.
 */
export function handshakeError(err: unknown, who: string): VdError {
  if (err instanceof VdError) return err;
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const text = e?.message ?? String(err);
  if (code !== undefined && notTlsCodes.has(code)) {
    return tlsError(
      'not-tls',
      `${who} did not speak TLS where a TLS record was due (${e.reason ?? code}); it may not support STARTTLS`,
      { opensslCode: code },
      err,
    );
  }
  if (
    code === 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' ||
    code === 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE' ||
    code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED'
  ) {
    return tlsError(
      code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' ? 'no-certificate' : 'untrusted',
      `${who} refused our certificate (${e.reason ?? code}): give a client certificate signed by a CA it trusts (client-cert.pem and client-key.pem in the certificates directory)`,
      { opensslCode: code },
      err,
    );
  }
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_VD_CLOSED' || /socket disconnected|socket hang up/i.test(text)) {
    return tlsError(
      'handshake',
      `${who} closed the connection during the TLS handshake; it may have refused our certificate or TLS version`,
      { opensslCode: code },
      err,
    );
  }
  return tlsError('handshake', `TLS handshake with ${who} failed: ${text}`, { opensslCode: code }, err);
}
