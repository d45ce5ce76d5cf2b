import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { DEFAULT_CIPHERS, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { abortError } from '@vd/core';
import { type NbdClientTls, type NbdTarget, type ReadInto, readInto } from '@vd/nbd';
import type { PskKey } from './psk.js';
import { handshakeError, tlsError } from './tls-error.js';
import { type PeerIdentity, type PeerVerification, sniName, verifyServer } from './verify.js';

/** How a client sets up and checks its TLS channel. */
export interface ClientTlsOptions extends PeerVerification {
  /** Client certificate and key (PEM), for servers that verify their peers. */
  cert?: string | undefined;
  key?: string | undefined;
  /** TLS-PSK instead of certificates (nbdkit --tls-psk, qemu tls-creds-psk). */
  psk?: PskKey | undefined;
  /** Give up on a handshake that has not finished after this many ms; default 30 s. */
  handshakeTimeout?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Where decrypted bytes go instead of 'data' events, as node:net's `onread` (see `readInto`). */
  onread?: ReadInto | undefined;
}

export interface ClientTlsResult {
  socket: TLSSocket;
  peer: PeerIdentity;
}

/**
 * AES-128-GCM first: with AES-NI it is the cheapest AEAD, and TLS cost is what limits a Node
 * client's throughput (one thread decrypts every connection). OpenSSL's own defaults follow.
 */
export const preferredCiphers = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  ...DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_')),
].join(':');

/** PSK needs ciphers that OpenSSL leaves out of its default list for TLS 1.2. */
const pskCiphers = 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256';

/**
 * Runs the client side of a TLS handshake over `socket` (the STARTTLS upgrade; the socket has
 * been read up to the STARTTLS reply and nothing more) and verifies the server. `host` is the
 * name that was dialled (for SNI and the host-name check). Resolves once the peer is verified;
 * on any failure the socket is destroyed and the promise rejects with ERR_VD_TLS.
 */
export function startTlsClient(socket: Socket, host: string, opts: ClientTlsOptions = {}): Promise<ClientTlsResult> {
  const who = host;
  return new Promise<ClientTlsResult>((resolve, reject) => {
    if (opts.signal?.aborted) {
      socket.destroy();
      reject(abortError(opts.signal, 'TLS handshake'));
      return;
    }
    const psk = opts.psk;
    const servername = sniName(opts.hostname ?? host);
    let tls: TLSSocket;
    try {
      tls = tlsConnect({
        socket,
        ...(servername === undefined ? {} : { servername }),
        ca: opts.ca as string | string[] | undefined,
        cert: opts.cert,
        key: opts.key,
        minVersion: 'TLSv1.2',
        ciphers: preferredCiphers,
        // Checked by verifyServer after the handshake, so a pinned self-signed certificate works and
        // each refusal is reported precisely.
        rejectUnauthorized: false,
        checkServerIdentity: () => undefined,
        ...(psk
          ? {
              ciphers: `${pskCiphers}:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384`,
              pskCallback: () => ({ identity: psk.identity, psk: Buffer.from(psk.key) }),
            }
          : {}),
      });
    } catch (err) {
      socket.destroy();
      reject(tlsError('configuration', `the TLS client settings are unusable: ${(err as Error).message}`, {}, err));
      return;
    }
    if (opts.onread) readInto(tls, opts.onread);
    let settled = false;
    const finish = (err: Error | undefined, result?: ClientTlsResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      tls.off('secureConnect', onSecure);
      tls.off('error', onError);
      tls.off('close', onClose);
      if (err) {
        tls.destroy();
        socket.destroy();
        reject(err);
      } else resolve(result!);
    };
    const onSecure = () => {
      try {
        const peer = verifyServer(tls, { ...opts, host, psk: psk !== undefined }, who);
        finish(undefined, { socket: tls, peer });
      } catch (err) {
        finish(err as Error);
      }
    };
    const onError = (err: Error) => finish(handshakeError(err, who));
    const onClose = () =>
      finish(
        tlsError('handshake', `${who} closed the connection during the TLS handshake; it may have refused our certificate or TLS version`),
      );
    const onAbort = () => finish(abortError(opts.signal, 'TLS handshake'));
    const timeout = opts.handshakeTimeout ?? 30_000;
    const timer = setTimeout(() => finish(tlsError('handshake', `${who} did not finish the TLS handshake within ${timeout} ms`)), timeout);
    tls.once('secureConnect', onSecure);
    tls.on('error', onError);
    tls.once('close', onClose);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The STARTTLS hook `@vd/nbd` calls on each connection it opens (first, multi-conn, reconnects). */
export function clientUpgrade(tls: ClientTlsOptions, onPeer?: (peer: PeerIdentity, target: NbdTarget) => void): NbdClientTls {
  return {
    async upgrade(socket: Duplex, target: NbdTarget, onread?: ReadInto): Promise<Duplex> {
      const host = target.kind === 'tcp' ? target.host : 'localhost';
      const r = await startTlsClient(socket as Socket, host, onread ? { ...tls, onread } : tls);
      onPeer?.(r.peer, target);
      return r.socket;
    },
  };
}
