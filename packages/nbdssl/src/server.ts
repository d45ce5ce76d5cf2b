import type { Socket } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { debug, VdError } from '@vd/core';
import type { NbdServerAddress, NbdServerTls } from '@vd/nbd';
import type { ServerCertificateOptions } from './certs.js';
import { createPki, loadPki, type Pki } from './pki.js';
import { loadPskFile, type PskTable } from './psk.js';
import { type ClientIdentity, ServerTls, type ServerTlsOptions, serverTlsFromPki, type TlsMode } from './server-tls.js';
import { formatThumbprint, type Thumbprint, thumbprintOf } from './thumbprint.js';

/** TLS for `NbdServer`, in the terms of `vd serve` and nbdkit. */
export interface NbdTlsServerOptions {
  /** `off`, `on` (offered) or `require` (nothing in the clear but STARTTLS and ABORT); default `require`. */
  mode?: TlsMode;
  /** A PKI directory (ca-cert.pem, server-cert.pem, server-key.pem), nbdkit's --tls-certificates. */
  certificates?: string;
  /** Or the PEM texts themselves (take precedence over the directory). */
  cert?: string;
  key?: string;
  ca?: string | readonly string[];
  /** Demand a client certificate signed by the CA (nbdkit --tls-verify-peer). */
  verifyPeer?: boolean;
  /** TLS-PSK: a keys file path (nbdkit --tls-psk=FILE) or a parsed table. */
  psk?: string | PskTable;
  handshakeTimeout?: number;
  /** Called for every client that completed the handshake (logs, per-client policy). */
  onClient?: (client: ClientIdentity) => void;
  /**
   * Per-export authorization by client identity: export name → the client certificate common
   * names, `sha256:` thumbprints or PSK identities allowed to see and open it; or a function.
   * Exports not named in a table stay open to every client that passed TLS.
   */
  authorize?: ExportAuthorization;
}

export type ExportAuthorization =
  | Readonly<Record<string, readonly string[]>>
  | ((exportName: string, client: ClientIdentity | undefined) => boolean);

/**
 * What `@vd/nbd` asks before listing or opening an export: may the client on `socket` (the duplex
 * `upgrade` returned, or the plain socket before TLS) use `exportName`?
 */
export interface NbdServerTlsWithAuthorization extends NbdServerTls {
  authorize(exportName: string, socket: Duplex): boolean;
  /** Who the client on an upgraded socket is; undefined before TLS. */
  clientOf(socket: Duplex): ClientIdentity | undefined;
}

/** Whether `client` may use `exportName` under `rule`. */
export function isAuthorized(rule: ExportAuthorization | undefined, exportName: string, client: ClientIdentity | undefined): boolean {
  if (rule === undefined) return true;
  if (typeof rule === 'function') return rule(exportName, client);
  const allowed = Object.hasOwn(rule, exportName) ? rule[exportName] : undefined;
  if (allowed === undefined) return true;
  if (client === undefined || !client.authenticated) return false;
  return allowed.some((id) => id === client.commonName || id === client.sha256 || id === client.pskIdentity);
}

/**
 * The `tls` option of `NbdServer`: `new NbdServer({ exports, tls: await nbdServerTls({...}) })`.
 * Resolves to undefined for mode `off` (STARTTLS refused).
 */
export async function nbdServerTls(opts: NbdTlsServerOptions): Promise<NbdServerTlsWithAuthorization | undefined> {
  const mode = opts.mode ?? 'require';
  if (mode === 'off') return undefined;
  const psk = typeof opts.psk === 'string' ? await loadPskFile(opts.psk) : opts.psk;
  let settings: ServerTlsOptions;
  const extra = { verifyPeer: opts.verifyPeer, psk, handshakeTimeout: opts.handshakeTimeout };
  if (opts.certificates !== undefined && opts.cert === undefined) {
    settings = serverTlsFromPki(await loadPki(opts.certificates), mode, extra);
  } else {
    settings = { mode, cert: opts.cert, key: opts.key, ca: opts.ca, ...extra };
  }
  return wrap(new ServerTls(settings), opts.onClient, opts.authorize);
}

/** The hook for an already-built `ServerTls`. */
export function wrap(
  tls: ServerTls,
  onClient?: (client: ClientIdentity) => void,
  authorize?: ExportAuthorization,
): NbdServerTlsWithAuthorization | undefined {
  if (tls.mode === 'off') return undefined;
  const clients = new WeakMap<Duplex, ClientIdentity>();
  return {
    required: tls.mode === 'require',
    upgrade: async (socket: Duplex) => {
      const { socket: secure, client } = await tls.upgrade(socket as Socket);
      debug('nbdssl: client %s over %s', client.commonName ?? client.pskIdentity ?? 'anonymous', client.protocol ?? '?');
      clients.set(secure, client);
      onClient?.(client);
      return secure;
    },
    clientOf: (socket) => clients.get(socket),
    authorize: (exportName, socket) => isAuthorized(authorize, exportName, clients.get(socket)),
  };
}

/** `nbd://…` → `nbds://…`, `nbd+unix://…` → `nbds+unix://…`: the address a TLS client dials. */
export function tlsUri(address: NbdServerAddress | string): string {
  const uri = typeof address === 'string' ? address : address.uri;
  return uri.replace(/^nbd(\+unix)?:/, (_m, unix: string | undefined) => `nbds${unix ?? ''}:`);
}

/** Where `vd serve --tls` keeps the certificate it makes when none is given. */
export function defaultPkiDir(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'vd', 'pki');
}

export interface EnsuredPki {
  pki: Pki;
  /** True when the directory was created now. */
  created: boolean;
  /** Thumbprints of the server certificate, for clients to pin. */
  sha256: Thumbprint;
  sha1: Thumbprint;
}

/**
 * A server certificate to serve with: the one in `dir` when it holds one, otherwise a new CA and
 * server certificate written there. Kept across runs so the thumbprint clients pinned stays valid.
 */
export async function ensureServerPki(dir = defaultPkiDir(), opts: ServerCertificateOptions = {}): Promise<EnsuredPki> {
  let pki = await loadPki(dir);
  let created = false;
  if (pki.server === undefined) {
    if (pki.caCert !== undefined) {
      throw new VdError('ERR_VD_EXISTS', `${dir} holds a CA but no server certificate; add one with vd cert server ${dir}`, {
        details: { dir },
      });
    }
    pki = await createPki(dir, { server: opts, client: { commonName: 'vd client' } });
    created = true;
  }
  const cert = pki.server!.cert;
  return { pki, created, sha256: thumbprintOf(cert, 'sha256'), sha1: thumbprintOf(cert, 'sha1') };
}

/** The lines `vd serve --tls` prints so a client can connect and pin. */
export function describeServerPki(e: EnsuredPki): string[] {
  return [
    `TLS certificates: ${e.pki.dir}${e.created ? ' (created now)' : ''}`,
    `server certificate thumbprint: ${formatThumbprint(e.sha256)}`,
    `  (VDDK-style SHA-1: ${formatThumbprint(e.sha1, 'vddk')})`,
  ];
}
