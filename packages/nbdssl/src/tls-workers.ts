import { VdError } from '@vd/core';
import {
  builtModule,
  type HandshakeOptions,
  type NbdClientConnection,
  type NbdTarget,
  workerConnector as nbdWorkerConnector,
  workersAvailable as nbdWorkersAvailable,
} from '@vd/nbd';
import type { ClientTlsOptions } from './client-tls.js';
import type { PeerIdentity } from './verify.js';

let upgrade: string | null | undefined;

/** The built worker-upgrade module, which a worker thread imports (looked for once). */
function upgradeModule(): string | undefined {
  if (upgrade === undefined) upgrade = builtModule(import.meta.url, './worker-upgrade.js', '../dist/worker-upgrade.js')?.href ?? null;
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
