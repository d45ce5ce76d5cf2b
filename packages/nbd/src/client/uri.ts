import { VdError } from '@vd/core';

/** Where an NBD export is: a TCP host and port, or a unix socket path, and the export name. */
export type NbdTarget =
  | { kind: 'tcp'; host: string; port: number; exportName: string; tls: boolean }
  | { kind: 'unix'; path: string; exportName: string; tls: boolean };

export const NBD_PORT = 10809;

/**
 * Parses an NBD URI (NetworkBlockDevice/nbd doc/uri.md): `nbd://host[:port]/export`,
 * `nbd+unix:///export?socket=PATH`, and the `nbds` variants. The export name is the path without
 * its leading slash, percent-decoded (`nbd://h//x` names `/x`).
 */
export function parseNbdUri(location: URL | string): NbdTarget {
  const url = typeof location === 'string' ? new URL(location) : location;
  const scheme = url.protocol.slice(0, -1);
  const tls = scheme === 'nbds' || scheme === 'nbds+unix';
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch (err) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href}: the export name is not valid percent-encoding`, { cause: err });
  }
  if (new TextEncoder().encode(exportName).length > 4096)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href}: an export name is at most 4096 bytes`);
  if (scheme === 'nbd' || scheme === 'nbds') {
    if (!url.hostname) throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href}: an nbd:// URI needs a host`);
    const port = url.port ? Number(url.port) : NBD_PORT;
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { kind: 'tcp', host, port, exportName, tls };
  }
  if (scheme === 'nbd+unix' || scheme === 'nbds+unix') {
    const path = url.searchParams.get('socket');
    if (!path) throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href}: an nbd+unix:// URI needs ?socket=PATH`);
    if (url.hostname)
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href}: an nbd+unix:// URI has no host (write nbd+unix:///export?socket=PATH)`);
    return { kind: 'unix', path, exportName, tls };
  }
  throw new VdError('ERR_VD_INVALID_ARGUMENT', `${url.href} is not an NBD URI (nbd://, nbd+unix://)`);
}

/** The URI of a target, for messages and `disk.location`. */
export function formatNbdUri(t: NbdTarget): string {
  const name = encodeURIComponent(t.exportName);
  const s = t.tls ? 'nbds' : 'nbd';
  if (t.kind === 'unix') return `${s}+unix:///${name}?socket=${encodeURIComponent(t.path)}`;
  const host = t.host.includes(':') ? `[${t.host}]` : t.host;
  return `${s}://${host}${t.port === NBD_PORT ? '' : `:${t.port}`}/${name}`;
}

/** A yes/no setting (1/true/yes/on, 0/false/no/off); `setting` says which, and where, in the error. */
export function parseFlag(value: string, setting: string): boolean {
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new VdError('ERR_VD_INVALID_ARGUMENT', `${setting}: expected true or false`);
}

/** The URI's query parameter `name` as a yes/no setting; undefined when it is absent. */
export function queryFlag(location: URL, name: string): boolean | undefined {
  const v = location.searchParams.get(name);
  return v === null ? undefined : parseFlag(v, `${name}=${v} in ${location.href}`);
}
