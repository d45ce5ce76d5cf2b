import { availableParallelism } from 'node:os';
import type { BlockSource, OpenOptions, ProbeResult, Transport } from '@vd/core';
import { type NbdClientOptions, NbdClientSource } from './source.js';
import { type NbdTarget, parseNbdUri } from './uri.js';
import { workerConnector } from './worker-connection.js';
import { workersWanted } from './worker-threads.js';

export interface NbdTransportOptions extends NbdClientOptions {
  /**
   * Run each multi-conn connection after the first in its own worker thread (plaintext only; TLS
   * connections get theirs from `@vd/nbdssl`). Default: on for a read-only disk behind a unix
   * socket when the machine has more than one core, off otherwise (see `plainWorkersByDefault`);
   * `workers=true|false` in the URI and `VD_NBD_WORKERS=1|0` decide too (URI, then this option,
   * then the environment). A `connectExtra` of your own wins.
   */
  workers?: boolean;
}

/**
 * Where worker connections pay in the clear, as measured: a unix socket queues at most the
 * server's send buffer (208 KiB by default, which only the server can raise), so one thread
 * draining every connection leaves the server blocked while it copies; a second thread drains
 * in parallel (nbdkit file, 2 GiB: 0.735 vs 0.821 s, nbdcopy 0.734 s). Over TCP the receive
 * buffer grows to MiBs and a worker only adds its copy (0.94 vs 0.81 s). Writes leave with
 * sendfile from libuv's pool already, and a worker would copy each payload, so only reads.
 */
export function plainWorkersByDefault(target: NbdTarget, readOnly: boolean): boolean {
  return target.kind === 'unix' && readOnly && availableParallelism() > 1;
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
      if (
        !client.connectExtra &&
        !client.tls &&
        workersWanted(location, workers, 'VD_NBD_WORKERS', plainWorkersByDefault(target, readOnly))
      )
        client.connectExtra = workerConnector();
      return NbdClientSource.open(target, { ...client, signal: opts.signal ?? options.signal }, readOnly);
    },
  };
}
