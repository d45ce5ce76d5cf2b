import type { BlockSource, OpenOptions, ProbeResult, Transport } from '@vd/core';
import { type NbdClientOptions, NbdClientSource } from './source.js';
import { parseNbdUri } from './uri.js';
import { workerConnector } from './worker-connection.js';
import { workersWanted } from './worker-threads.js';

export interface NbdTransportOptions extends NbdClientOptions {
  /**
   * Run each multi-conn connection after the first in its own worker thread (plaintext only; TLS
   * connections get theirs from `@vd/nbdssl`). Off by default; `workers=true|false` in the URI and
   * `VD_NBD_WORKERS=1|0` decide too (URI, then this option, then the environment). A
   * `connectExtra` of your own wins.
   *
   * It costs a thread (~13 MiB, kept idle 10 s for the next disk; ~35 MiB more at the peak of a
   * 2 GiB read) and a copy of what it reads into the caller's buffer. On 2 cores it no longer
   * pays in the clear: over a unix socket, reads filling one connection in this thread while its
   * loop polls are faster, and over TCP a worker only adds its copy (the README has the figures).
   * With more cores, where one thread cannot drain what several server threads send, it may.
   */
  workers?: boolean;
}

/**
 * The NBD transport: `nbd://host[:port]/export` and `nbd+unix:///export?socket=PATH`. `nbds`
 * URIs need a TLS upgrade (`tls`, from `@vd/nbdssl`).
 *
 * ```ts
 * const disk = await openDisk('nbd://127.0.0.1:10809/disk', { transports: [nbd()] });
 * ```
 */
export function nbd(options: NbdTransportOptions = {}): Transport {
  return {
    specificationVersion: 'v1',
    name: 'nbd',
    schemes: options.tls ? ['nbd', 'nbd+unix', 'nbds', 'nbds+unix'] : ['nbd', 'nbd+unix'],
    async probe(location: URL): Promise<ProbeResult> {
      try {
        const t = parseNbdUri(location);
        if (t.tls && !options.tls) return { ok: false, reason: `${location.protocol}// needs TLS; use the nbdssl transport` };
        return { ok: true };
      } catch (err) {
        return { ok: false, reason: (err as Error).message };
      }
    },
    async open(location: URL, opts: OpenOptions): Promise<BlockSource> {
      const target = parseNbdUri(location);
      const readOnly = opts.readOnly === true;
      const { workers, ...client } = options;
      // A plaintext worker cannot carry a TLS upgrade, which is a function of this thread.
      if (!client.connectExtra && !client.tls && workersWanted(location, workers, 'VD_NBD_WORKERS', false))
        client.connectExtra = workerConnector();
      return NbdClientSource.open(target, { ...client, signal: opts.signal ?? options.signal }, readOnly);
    },
  };
}
