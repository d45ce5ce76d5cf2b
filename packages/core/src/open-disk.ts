import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { channels, debug } from './diagnostics.js';
import { Disk, type SelectionAttempt } from './disk.js';
import { isVdError, throwIfAborted, VdError } from './errors.js';
import type { OpenOptions, Transport } from './spec.js';

export interface OpenDiskOptions extends OpenOptions {
  /** Tried in order, like VDDK's `"san:hotadd:nbdssl:nbd"`; the first that opens the disk wins. */
  transports: readonly Transport[];
}

const SCHEME = /^[a-z][a-z0-9+.-]*:/i;

/** A disk argument as a URL: a URI as given, anything else a path relative to the working directory. */
export function toLocation(disk: string | URL): URL {
  if (disk instanceof URL) return disk;
  if (typeof disk !== 'string' || disk.length === 0)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'a disk location must be a non-empty path or URI');
  // A one-letter "scheme" is a Windows drive, not a URI.
  if (SCHEME.test(disk) && !/^[a-z]:[\\/]/i.test(disk)) {
    try {
      return new URL(disk);
    } catch (err) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `not a valid URI: ${disk}`, { cause: err });
    }
  }
  return pathToFileURL(isAbsolute(disk) ? disk : resolve(disk));
}

function schemeOf(url: URL): string {
  return url.protocol.slice(0, -1);
}

/**
 * Opens a disk through the first transport, in the order given, that can reach it. Nothing is
 * chosen silently: `disk.selection` lists each transport tried with why it was skipped or failed,
 * and when none wins the error's `details.tried` says the same.
 */
export async function openDisk(disk: string | URL, opts: OpenDiskOptions): Promise<Disk> {
  if (!opts || !Array.isArray(opts.transports) || opts.transports.length === 0) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'openDisk needs at least one transport, e.g. { transports: [file()] }');
  }
  const location = toLocation(disk);
  const scheme = schemeOf(location);
  const tried: SelectionAttempt[] = [];
  let lastFailure: VdError | undefined;
  const { transports, ...openOpts } = opts;
  for (const t of transports) {
    throwIfAborted(opts.signal, 'open');
    if (t.specificationVersion !== 'v1') {
      tried.push({
        transport: String(t.name),
        outcome: 'skipped',
        reason: `speaks specification ${String(t.specificationVersion)}, not v1`,
      });
      continue;
    }
    if (!t.schemes.includes(scheme)) {
      tried.push({ transport: t.name, outcome: 'skipped', reason: `does not handle ${scheme}: URIs (handles ${t.schemes.join(', ')})` });
      continue;
    }
    try {
      const probe = await t.probe(location, openOpts);
      if (!probe.ok) {
        tried.push({ transport: t.name, outcome: 'skipped', reason: probe.reason });
        continue;
      }
      const source = await t.open(location, openOpts);
      const selection = [...tried, { transport: t.name, outcome: 'selected', reason: 'opened' } as const];
      let disk: Disk;
      try {
        // A source whose capabilities cannot be honoured fails here, and counts as a failed transport.
        disk = new Disk(source, { transport: t.name, location: location.href, readOnly: opts.readOnly, selection });
      } catch (err) {
        // A failed open drops the source (nothing of it was used, nothing to flush, a stalled peer
        // must not hold the failure up); its own failure to go adds nothing to this error.
        const dropped = source._destroy ? source._destroy(err as Error) : source._close();
        await dropped.catch(() => {});
        throw err;
      }
      debug('opened %s with %s', location.href, t.name);
      if (channels.select.hasSubscribers) channels.select.publish({ location: location.href, tried: selection, selected: t.name });
      return disk;
    } catch (err) {
      if (isVdError(err, 'ERR_VD_ABORTED')) throw err;
      const e = isVdError(err) ? err : new VdError('ERR_VD_IO', String((err as Error)?.message ?? err), { cause: err });
      tried.push({ transport: t.name, outcome: 'failed', reason: e.message, code: e.code });
      lastFailure = e;
    }
  }
  if (channels.select.hasSubscribers) channels.select.publish({ location: location.href, tried, selected: undefined });
  const lines = tried.map((a) => `  ${a.transport}: ${a.outcome} — ${a.reason}`).join('\n');
  const failed = tried.filter((a) => a.outcome === 'failed');
  // A single real failure (e.g. file not found) keeps its own code; the list still explains the rest.
  const code = failed.length === 1 && failed[0]?.code ? (failed[0].code as VdError['code']) : 'ERR_VD_NO_TRANSPORT';
  // The lone failure's own details (e.g. the TLS refusal reason) stay readable, and it is the cause.
  const single = failed.length === 1 ? lastFailure : undefined;
  throw new VdError(code, `no transport could open ${location.href}:\n${lines}`, { cause: single, details: { ...single?.details, tried } });
}
