import { stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { type BlockSource, type OpenOptions, type ProbeResult, type Transport, VdError } from '@vd/core';
import { type NbdTarget, type NbdTransportOptions, nbd, parseNbdUri, queryFlag, workersWanted } from '@vd/nbd';
import { type ClientTlsOptions, clientUpgrade } from './client-tls.js';
import { loadPki } from './pki.js';
import { loadPskFile, type PskKey, pickPsk } from './psk.js';
import { defaultPkiDir } from './server.js';
import type { Thumbprint } from './thumbprint.js';
import { tlsError } from './tls-error.js';
import { workerConnector, workersAvailable } from './tls-workers.js';
import { checkThumbprintOption, type PeerIdentity } from './verify.js';

/** Settings of the nbdssl transport; the URI's query parameters override them per disk. */
export interface NbdsslOptions extends Omit<NbdTransportOptions, 'tls' | 'workers'> {
  /** A PKI directory: ca-cert.pem to trust, client-cert.pem and client-key.pem to present (libnbd's tls-certificates). */
  certificates?: string;
  /** Trusted CA certificates (PEM), instead of or besides the directory's. */
  ca?: string | readonly string[];
  /** Client certificate and key (PEM). */
  cert?: string;
  key?: string;
  /** Pin the server certificate: `sha256:AB:…`, `sha1:…` or VDDK's bare colon-hex. */
  thumbprint?: string | Thumbprint | readonly (string | Thumbprint)[];
  /** `false`: encrypt but do not authenticate the server (libnbd's tls-verify-peer=false). */
  verifyPeer?: boolean;
  /** The name the server certificate must carry; default the URI's host (`localhost` for Unix sockets). */
  hostname?: string;
  /** TLS-PSK: a keys file (libnbd's tls-psk-file) and the identity to use (tls-username / user@). */
  pskFile?: string;
  psk?: PskKey;
  username?: string;
  /** Milliseconds for the TLS handshake itself (default 30 s). */
  tlsHandshakeTimeout?: number;
  /** Called once per connection with what was learnt about the server. */
  onPeer?: (peer: PeerIdentity, target: NbdTarget) => void;
  /**
   * Run each multi-conn connection after the first (socket, TLS session, reply parsing) in its own
   * worker thread, so decryption runs on several cores. Default: on when the machine has more
   * than one core; `workers=true|false` in the URI and `VD_NBDSSL_WORKERS=1|0` decide too (URI,
   * then this option, then the environment).
   */
  workers?: boolean | number;
}

const schemes = ['nbds', 'nbds+unix'] as const;

/**
 * Whether this disk's multi-conn connections (all but the first) run in worker threads: the URI's
 * `workers=`, else the option, else `VD_NBDSSL_WORKERS`, else when the machine has more than one
 * core. Even on 2 cores shared with a local server the read is faster with them, now that a
 * thread's start-up is paid once per process (idle threads are kept for the next disk); see the
 * README.
 */
export function useWorkers(location: URL, options: NbdsslOptions): boolean {
  return workersWanted(location, options.workers, 'VD_NBDSSL_WORKERS', availableParallelism() > 1) && workersAvailable();
}

/** What `nbd()` takes of our options: everything but the TLS settings. */
function nbdOptions(o: NbdsslOptions): Omit<NbdTransportOptions, 'tls'> {
  const {
    certificates,
    ca,
    cert,
    key,
    thumbprint,
    verifyPeer,
    hostname,
    pskFile,
    psk,
    username,
    tlsHandshakeTimeout,
    onPeer,
    workers,
    ...rest
  } = o;
  return rest;
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

/** The TLS settings for one URI: options, then the URI's query (libnbd's keys plus tls-thumbprint). */
export async function clientTlsFor(location: URL, options: NbdsslOptions): Promise<ClientTlsOptions & { certificates?: string }> {
  const q = location.searchParams;
  let certificates = q.get('tls-certificates') ?? options.certificates;
  if (certificates === undefined) {
    // Like libnbd's ~/.pki/libnbd: the directory `vd serve --tls` fills on this machine.
    const dir = defaultPkiDir();
    if (await isDirectory(dir)) certificates = dir;
  }
  const thumbprint = q.getAll('tls-thumbprint').length > 0 ? q.getAll('tls-thumbprint') : options.thumbprint;
  checkThumbprintOption(thumbprint);
  const tls: ClientTlsOptions & { certificates?: string } = {
    thumbprint,
    verifyPeer: queryFlag(location, 'tls-verify-peer') ?? options.verifyPeer,
    hostname: q.get('tls-hostname') ?? options.hostname,
    handshakeTimeout: options.tlsHandshakeTimeout,
    ca: options.ca,
    cert: options.cert,
    key: options.key,
    signal: options.signal,
  };
  if (certificates !== undefined) {
    if (!(await isDirectory(certificates))) {
      throw tlsError(
        'configuration',
        `the TLS certificates directory ${certificates} does not exist; create it with vd cert init ${certificates}`,
        {
          dir: certificates,
        },
      );
    }
    const pki = await loadPki(certificates);
    tls.certificates = certificates;
    if (pki.caCert !== undefined) tls.ca = [pki.caCert, ...[options.ca ?? []].flat()];
    if (pki.client !== undefined && tls.cert === undefined) {
      tls.cert = pki.client.cert;
      tls.key = pki.client.key;
    }
  }
  const pskFile = q.get('tls-psk-file') ?? options.pskFile;
  const username = q.get('tls-username') ?? (location.username ? decodeURIComponent(location.username) : undefined) ?? options.username;
  if (pskFile !== undefined) tls.psk = pickPsk(await loadPskFile(pskFile), username, pskFile);
  else if (options.psk !== undefined) tls.psk = options.psk;
  return tls;
}

/**
 * NBD over TLS: `nbds://host[:port]/export` and `nbds+unix:///export?socket=PATH`. The server is
 * verified by a CA (`tls-certificates=DIR`, `certificates`, `ca`) or a pinned thumbprint
 * (`tls-thumbprint=sha256:…`, `thumbprint`); TLS-PSK with `tls-psk-file=`. A refused STARTTLS
 * ends the connection: nothing goes in the clear.
 *
 * ```ts
 * const disk = await openDisk('nbds://host/disk?tls-certificates=/etc/pki/vd', { transports: [nbdssl(), nbd()] });
 * ```
 */
export function nbdssl(options: NbdsslOptions = {}): Transport {
  return {
    specificationVersion: 'v1',
    name: 'nbdssl',
    schemes,
    async probe(location: URL): Promise<ProbeResult> {
      const scheme = location.protocol.slice(0, -1);
      if (!(schemes as readonly string[]).includes(scheme))
        return { ok: false, reason: `nbdssl handles ${schemes.join(', ')} URIs, not ${scheme}:` };
      try {
        parseNbdUri(location);
        await clientTlsFor(location, options);
        return { ok: true };
      } catch (err) {
        return { ok: false, reason: (err as Error).message };
      }
    },
    async open(location: URL, opts: OpenOptions): Promise<BlockSource> {
      const scheme = location.protocol.slice(0, -1);
      if (!(schemes as readonly string[]).includes(scheme)) {
        throw new VdError('ERR_VD_INVALID_ARGUMENT', `nbdssl opens ${schemes.join(', ')} URIs, not ${location.href}`);
      }
      const tls = await clientTlsFor(location, { ...options, signal: opts.signal ?? options.signal });
      const { signal, ...portable } = tls;
      const transport = nbd({
        ...nbdOptions(options),
        tls: clientUpgrade(tls, options.onPeer),
        ...(useWorkers(location, options) ? { connectExtra: workerConnector(portable, options.onPeer) } : {}),
      });
      // @vd/nbd reports a refused STARTTLS and plaintext behind its ACK as ERR_VD_TLS with a reason.
      return transport.open(location, opts);
    },
  };
}
