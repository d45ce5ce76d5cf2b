import { defaultFormats, type FormatDriver, file, type Transport, vmdkFormat } from '@vd/core';
import type { NbdTransportOptions } from '@vd/nbd';
import type { NbdsslOptions } from '@vd/nbdssl';

/**
 * The formats the CLI reads, detected in this order (raw accepts anything, so it stays last).
 * Deduplicated by name so core adding a driver to `defaultFormats` changes nothing here.
 */
export const formats: readonly FormatDriver[] = [vmdkFormat, ...defaultFormats].filter(
  (f, i, all) => all.findIndex((g) => g.name === f.name) === i,
);

/** Formats `vd create` and `vd convert` can write: those whose driver can lay out a new disk. */
export const creatableFormats: readonly string[] = formats.filter((f) => typeof f.create === 'function').map((f) => f.name);

/**
 * A transport whose package is imported on its first probe or open, so a command on a local file
 * never loads the NBD and TLS code. Name and schemes are stated here (openDisk reads them before
 * probing); `test/lazy-load.test.ts` checks them against the real transports, and a mismatch at
 * load is an error rather than a silent difference.
 */
export function lazyTransport(name: string, schemes: readonly string[], load: () => Promise<Transport>): Transport {
  let loaded: Promise<Transport> | undefined;
  const real = () =>
    (loaded ??= load().then((t) => {
      if (t.name !== name || t.schemes.join() !== schemes.join())
        throw new Error(
          `internal: transport ${t.name} (${t.schemes.join(', ')}) loaded where ${name} (${schemes.join(', ')}) was declared`,
        );
      return t;
    }));
  return {
    specificationVersion: 'v1',
    name,
    schemes,
    probe: async (location, opts) => (await real()).probe(location, opts),
    open: async (location, opts) => (await real()).open(location, opts),
  };
}

/** `nbdssl(options)` of @vd/nbdssl (TLS, node-forge), imported on first use. */
export const lazyNbdssl = (options?: NbdsslOptions): Transport =>
  lazyTransport('nbdssl', ['nbds', 'nbds+unix'], async () => (await import('@vd/nbdssl')).nbdssl(options));

/** `nbd(options)` of @vd/nbd, imported on first use. */
export const lazyNbd = (options?: NbdTransportOptions): Transport =>
  lazyTransport('nbd', ['nbd', 'nbd+unix'], async () => (await import('@vd/nbd')).nbd(options));

/**
 * The transports `vd` tries, in order, for every disk argument: the one list in the CLI. To add
 * a transport, append it here (imported lazily, like `lazyNbd()` for `nbd://` URIs); every
 * command then accepts its URIs, and `vd info` shows which one was selected and why others were
 * skipped.
 */
export function transports(): Transport[] {
  return [file({ formats }), lazyNbdssl(), lazyNbd()];
}
