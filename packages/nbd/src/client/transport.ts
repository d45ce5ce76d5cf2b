import type { BlockSource, OpenOptions, ProbeResult, Transport } from '@vd/core';
import { type NbdClientOptions, NbdClientSource } from './source.js';
import { parseNbdUri } from './uri.js';

export type NbdTransportOptions = NbdClientOptions;

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
      return NbdClientSource.open(target, { ...options, signal: opts.signal ?? options.signal }, opts.readOnly === true);
    },
  };
}
