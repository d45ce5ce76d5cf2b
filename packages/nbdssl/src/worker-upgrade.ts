/**
 * The module `@vd/nbd`'s connection worker imports to upgrade its connection to TLS inside the
 * thread (see tls-workers.ts): the TLS session lives where the socket is read.
 */
import { type ClientTlsOptions, clientUpgrade } from './client-tls.js';
import type { PeerIdentity } from './verify.js';

export function workerUpgrade(options: Omit<ClientTlsOptions, 'signal' | 'onread'>, onPeer: (peer: PeerIdentity) => void) {
  return clientUpgrade(options, onPeer);
}
