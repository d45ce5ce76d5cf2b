import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { debug, VdError } from '@vd/core';
import {
  type HandshakeOptions,
  type NbdClientConnection,
  type NbdTarget,
  workerConnector as nbdWorkerConnector,
  workersAvailable as nbdWorkersAvailable,
} from '@vd/nbd';
import type { ClientTlsOptions } from './client-tls.js';
import type { PeerIdentity } from './verify.js';

let upgrade: string | null | undefined;

/**
 * The built worker-upgrade module, which a worker thread imports. Run from TypeScript sources
 * (tests), this module's sibling is a .ts file a thread cannot load: the package's built copy is
 * used when there is one.
 */
function upgradeModule(): string | undefined {
  if (upgrade === undefined) {
    const here = import.meta.url;
    const url = here.endsWith('.ts') ? new URL('../dist/worker-upgrade.js', here) : new URL('./worker-upgrade.js', here);
    upgrade = existsSync(fileURLToPath(url)) ? url.href : null;
    if (!upgrade) debug('nbdssl: %s is missing; connections run in this thread', fileURLToPath(url));
  }
  return upgrade ?? undefined;
}

/** Whether TLS connections can run in worker threads (both packages' worker modules are built). */
export function workersAvailable(): boolean {
  return nbdWorkersAvailable() && upgradeModule() !== undefined;
}

/**
 * `NbdClientOptions.connectExtra` that runs each connection in its own worker thread (`@vd/nbd`'s
 * worker connections), over TLS when `tls` is given; `onPeer` is called in this thread.
 */
export function workerConnector(
  tls: Omit<ClientTlsOptions, 'signal' | 'onread'> | undefined,
  onPeer?: (peer: PeerIdentity, target: NbdTarget) => void,
): (target: NbdTarget, hs: HandshakeOptions) => Promise<NbdClientConnection> {
  const module = tls ? upgradeModule() : undefined;
  if (tls && !module)
    return () => Promise.reject(new VdError('ERR_VD_NOT_SUPPORTED', 'the @vd/nbdssl worker-upgrade module is not built (pnpm build)'));
  return nbdWorkerConnector(tls && module ? { module, options: tls } : undefined, onPeer as (peer: unknown, target: NbdTarget) => void);
}
