import { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import { createSecureContext, type SecureContext, TLSSocket } from 'node:tls';
import { VdError } from '@vd/core';
import { clientCertificateProblem } from './client-cert.js';
import { preferredCiphers } from './client-tls.js';
import type { Pki } from './pki.js';
import type { PskTable } from './psk.js';
import { formatThumbprint, thumbprintOf } from './thumbprint.js';
import { handshakeError, tlsError } from './tls-error.js';

/**
 * The server side of STARTTLS. `off`: STARTTLS is refused. `on`: offered, clients may stay in
 * the clear. `require`: nothing but STARTTLS and ABORT is answered before the upgrade (nbdkit's
 * --tls=require, the NBD spec's FORCEDTLS).
 */
export type TlsMode = 'off' | 'on' | 'require';

export interface ServerTlsOptions {
  mode: TlsMode;
  /** Server certificate and key (PEM). Required unless only PSK is used. */
  cert?: string | undefined;
  key?: string | undefined;
  /** CA certificates that sign acceptable client certificates (PEM). */
  ca?: string | readonly string[] | undefined;
  /** Demand a client certificate signed by `ca` (nbdkit --tls-verify-peer). */
  verifyPeer?: boolean | undefined;
  /** Accept TLS-PSK with these identities (nbdkit --tls-psk=FILE). */
  psk?: PskTable | undefined;
  /** Give up on a client that has not finished its handshake after this many ms; default 30 s. */
  handshakeTimeout?: number | undefined;
}

/** Who is on the other end of an upgraded connection; per-export authorization decides on it. */
export interface ClientIdentity {
  /** The client proved who it is: a certificate that chains to `ca`, or a known PSK. */
  authenticated: boolean;
  /** Subject of the client certificate, `CN=…, O=…`, when one was presented. */
  subject?: string;
  commonName?: string;
  /** Why a presented certificate did not verify. */
  problem?: string;
  /** `sha256:…` of the client certificate, when one was presented. */
  sha256?: string;
  /** The PSK identity, when the client used PSK. */
  pskIdentity?: string;
  protocol: string | null;
}

const pskCiphers = 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256';

/** Server options from a PKI directory (nbdkit's --tls-certificates=DIR). */
export function serverTlsFromPki(pki: Pki, mode: TlsMode, extra: Partial<ServerTlsOptions> = {}): ServerTlsOptions {
  if (mode !== 'off' && pki.server === undefined && extra.psk === undefined) {
    throw tlsError('configuration', `${pki.dir} has no server-cert.pem and server-key.pem; create them with vd cert init ${pki.dir}`, {
      dir: pki.dir,
    });
  }
  if (extra.verifyPeer && pki.caCert === undefined) {
    throw tlsError('configuration', `verifying client certificates needs ${pki.dir}/ca-cert.pem`, { dir: pki.dir });
  }
  return { mode, cert: pki.server?.cert, key: pki.server?.key, ca: pki.caCert, ...extra };
}

/** One server's TLS settings, with the secure context built once and shared by every connection. */
export class ServerTls {
  readonly mode: TlsMode;
  readonly #context: SecureContext | undefined;
  readonly #opts: ServerTlsOptions;
  readonly #trusted: X509Certificate[] = [];

  constructor(opts: ServerTlsOptions) {
    if (!['off', 'on', 'require'].includes(opts.mode)) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `TLS mode must be off, on or require, got ${JSON.stringify(opts.mode)}`);
    }
    this.mode = opts.mode;
    this.#opts = opts;
    if (opts.mode === 'off') return;
    if ((opts.cert === undefined) !== (opts.key === undefined)) {
      throw tlsError('configuration', 'a server certificate needs its key and the other way round');
    }
    if (opts.cert === undefined && opts.psk === undefined) {
      throw tlsError('configuration', 'TLS needs a server certificate and key, or a PSK file');
    }
    if (opts.verifyPeer && opts.ca === undefined && opts.psk === undefined) {
      throw tlsError('configuration', 'verifying client certificates needs the CA that signs them (ca-cert.pem)');
    }
    try {
      for (const pem of [opts.ca ?? []].flat()) {
        for (const one of pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [])
          this.#trusted.push(new X509Certificate(one));
      }
      this.#context = createSecureContext({
        cert: opts.cert,
        key: opts.key,
        ca: opts.ca as string | string[] | undefined,
        minVersion: 'TLSv1.2',
        ciphers: opts.psk
          ? `${pskCiphers}:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384${opts.cert ? `:${preferredCiphers}` : ''}`
          : preferredCiphers,
      });
    } catch (err) {
      throw tlsError('configuration', `the server certificate, key or CA is unusable: ${(err as Error).message}`, {}, err);
    }
  }

  /**
   * Runs the server side of the handshake on `socket`, which has just been sent the STARTTLS
   * ACK and must hold no unread bytes. Resolves with the TLS socket and who the client is;
   * rejects with ERR_VD_TLS (and destroys the socket) when the client fails the handshake.
   */
  upgrade(
    socket: Socket,
    who = `${socket.remoteAddress ?? 'client'}:${socket.remotePort ?? ''}`,
  ): Promise<{ socket: TLSSocket; client: ClientIdentity }> {
    if (this.#context === undefined) return Promise.reject(tlsError('configuration', 'TLS is off on this server'));
    const psk = this.#opts.psk;
    const requestCert = this.#opts.ca !== undefined;
    let pskIdentity: string | undefined;
    const pskCallback = (_s: TLSSocket, identity: string) => {
      const key = psk?.get(identity);
      if (key === undefined) return null;
      pskIdentity = identity;
      return Buffer.from(key);
    };
    const tls = new TLSSocket(socket, {
      isServer: true,
      secureContext: this.#context,
      requestCert,
      rejectUnauthorized: this.#opts.verifyPeer === true,
      ...(psk ? { pskCallback } : {}),
    } as ConstructorParameters<typeof TLSSocket>[1]);
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (err: Error | undefined) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        tls.off('secure', onSecure);
        tls.off('error', onError);
        tls.off('close', onClose);
        if (err) {
          tls.destroy();
          socket.destroy();
          reject(err);
          return;
        }
        resolve({ socket: tls, client });
      };
      let client: ClientIdentity;
      const onSecure = () => {
        client = identify(tls, pskIdentity, this.#trusted);
        if (this.#opts.verifyPeer && !client.authenticated) {
          finish(
            client.subject === undefined
              ? tlsError('no-certificate', `${who} presented no client certificate; this server requires one signed by its CA`, { client })
              : tlsError('untrusted', `${who}'s client certificate (${client.subject}) was refused: ${client.problem}`, { client }),
          );
          return;
        }
        finish(undefined);
      };
      const onError = (err: Error) => finish(handshakeError(err, who));
      const onClose = () => finish(tlsError('handshake', `${who} closed the connection during the TLS handshake`));
      const timeout = this.#opts.handshakeTimeout ?? 30_000;
      const timer = setTimeout(
        () => finish(tlsError('handshake', `${who} did not finish the TLS handshake within ${timeout} ms`)),
        timeout,
      );
      tls.once('secure', onSecure);
      tls.on('error', onError);
      tls.once('close', onClose);
    });
  }
}

function identify(tls: TLSSocket, pskIdentity: string | undefined, trusted: readonly X509Certificate[]): ClientIdentity {
  const protocol = tls.getProtocol();
  if (pskIdentity !== undefined) return { authenticated: true, pskIdentity, protocol };
  const cert = tls.getPeerCertificate(true);
  if (!cert || cert.raw === undefined) return { authenticated: false, protocol };
  const cn = cert.subject?.CN;
  const problem = clientCertificateProblem(cert, trusted);
  return {
    authenticated: problem === undefined,
    ...(problem === undefined ? {} : { problem }),
    subject: Object.entries(cert.subject ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join(', '),
    ...(cn === undefined ? {} : { commonName: Array.isArray(cn) ? cn[0]! : cn }),
    sha256: formatThumbprint(thumbprintOf(cert.raw)),
    protocol,
  };
}
