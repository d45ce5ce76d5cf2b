import { createHash, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { debug, isVdError, VdError, type VdErrorCode } from '@vd/core';
import type { DiskHost } from './host.js';
import { openApiDocument } from './openapi.js';

export interface ApiServerOptions {
  /** The bearer token every `/v1` request must carry. At least 16 characters. */
  token: string;
  /** PEM server certificate and key: the API is served over HTTPS (whenever the host has TLS credentials). */
  tls?: { cert: string; key: string } | undefined;
}

export interface ApiAddress {
  host: string;
  port: number;
  /** `http://host:port` or `https://…`, what `HostClient` and `vd snapshot` take. */
  url: string;
}

/** HTTP status for each error code the API answers with; anything else is 500. */
const STATUS: Partial<Record<VdErrorCode, number>> = {
  ERR_VD_INVALID_ARGUMENT: 400,
  ERR_VD_UNAUTHORIZED: 401,
  ERR_VD_NOT_FOUND: 404,
  ERR_VD_EXISTS: 409,
  ERR_VD_CBT_RESET: 409,
  ERR_VD_NOT_SUPPORTED: 409,
  ERR_VD_CLOSED: 503,
};

type Handler = (host: DiskHost, params: string[], query: URLSearchParams) => Promise<[number, unknown]>;

interface Route {
  method: string;
  /** Path segments; `*` takes one (percent-decoded) parameter. */
  path: string[];
  handler: Handler;
}

const routes: Route[] = [
  { method: 'GET', path: ['v1', 'disks'], handler: async (h) => [200, { disks: h.disks() }] },
  { method: 'GET', path: ['v1', 'disks', '*'], handler: async (h, [d]) => [200, h.disk(d!)] },
  { method: 'GET', path: ['v1', 'disks', '*', 'snapshots'], handler: async (h, [d]) => [200, { snapshots: h.snapshots(d!) }] },
  {
    method: 'POST',
    path: ['v1', 'disks', '*', 'snapshots'],
    handler: async (h, [d], q) => [201, await h.createSnapshot(d!, { ttl: integerParam(q, 'ttl') })],
  },
  {
    method: 'POST',
    path: ['v1', 'disks', '*', 'snapshots', '*', 'lease'],
    handler: async (h, [d, id], q) => [200, await h.renewSnapshot(d!, id!, { ttl: integerParam(q, 'ttl') })],
  },
  {
    method: 'DELETE',
    path: ['v1', 'disks', '*', 'snapshots', '*'],
    handler: async (h, [d, id]) => {
      await h.deleteSnapshot(d!, id!);
      return [204, undefined];
    },
  },
  {
    method: 'GET',
    path: ['v1', 'disks', '*', 'changes'],
    handler: async (h, [d], q) => {
      const since = q.get('since');
      if (!since) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'query parameter `since` (a change ID, or *) is required');
      return [
        200,
        await h.changes(d!, {
          since,
          upTo: q.get('upTo') ?? undefined,
          startOffset: integerParam(q, 'startOffset'),
          maxAreas: integerParam(q, 'maxAreas'),
        }),
      ];
    },
  },
];

function integerParam(q: URLSearchParams, name: string): number | undefined {
  const v = q.get(name);
  if (v === null) return undefined;
  if (!/^\d{1,16}$/.test(v) || !Number.isSafeInteger(Number(v))) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `query parameter ${name} must be a non-negative integer`, { details: { [name]: v } });
  }
  return Number(v);
}

/** Digest both sides first: equal lengths for timingSafeEqual, and no length leak. */
function sameToken(given: string, expected: Buffer): boolean {
  return timingSafeEqual(createHash('sha256').update(given).digest(), expected);
}

/**
 * The host's control API on node:http (or node:https with `tls`): JSON in and out, every `/v1`
 * request authenticated by `Authorization: Bearer <token>`, the OpenAPI 3 document at
 * `/openapi.json` (public: it holds no secrets). Seven routes need no framework.
 */
export class ApiServer {
  readonly server: Server;
  readonly secure: boolean;
  #address: ApiAddress | undefined;

  constructor(host: DiskHost, opts: ApiServerOptions) {
    if (typeof opts.token !== 'string' || opts.token.length < 16) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'the API token must be a string of at least 16 characters');
    }
    const expected = createHash('sha256').update(opts.token).digest();
    const handle = (req: IncomingMessage, res: ServerResponse) => {
      serve(host, expected, req, res).catch((err) => {
        debug('host api: %s', err?.message);
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    };
    this.secure = opts.tls !== undefined;
    this.server = opts.tls ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handle) : createHttpServer(handle);
  }

  /** Where it listens, once listening. */
  get address(): ApiAddress | undefined {
    return this.#address;
  }

  /** Starts listening on `host:port` (default 127.0.0.1, an ephemeral port). */
  async listen(opts: { host?: string; port?: number } = {}): Promise<ApiAddress> {
    const server = this.server;
    server.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 0 });
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e))]).catch(
      (err: NodeJS.ErrnoException) => {
        throw new VdError(err.code === 'EADDRINUSE' ? 'ERR_VD_EXISTS' : 'ERR_VD_IO', `control API cannot listen: ${err.message}`, {
          cause: err,
        });
      },
    );
    const a = server.address() as AddressInfo;
    const h = a.address.includes(':') ? `[${a.address}]` : a.address;
    this.#address = { host: a.address, port: a.port, url: `${this.secure ? 'https' : 'http'}://${h}:${a.port}` };
    return this.#address;
  }

  /** Stops listening and drops idle keep-alive connections. */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeIdleConnections();
    await closed;
  }
}

async function serve(host: DiskHost, expected: Buffer, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://host');
  const raw = url.pathname.split('/').filter((s) => s !== '');
  try {
    if (req.method === 'GET' && url.pathname === '/openapi.json') return send(res, 200, openApiDocument);
    const auth = req.headers.authorization;
    const m = typeof auth === 'string' ? /^Bearer (\S+)$/i.exec(auth) : null;
    if (!m || !sameToken(m[1]!, expected)) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="vd host"');
      throw new VdError('ERR_VD_UNAUTHORIZED', m ? 'the bearer token is wrong' : 'send Authorization: Bearer <token>');
    }
    // Bodies are not used: refuse them rather than buffer them.
    if (Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding']) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'requests carry no body');
    }
    let pathMatched = false;
    for (const r of routes) {
      if (r.path.length !== raw.length || !r.path.every((p, i) => p === '*' || p === raw[i])) continue;
      pathMatched = true;
      if (r.method !== req.method) continue;
      const params = r.path.flatMap((p, i) => (p === '*' ? [decodeSegment(raw[i]!)] : []));
      const [status, body] = await r.handler(host, params, url.searchParams);
      return send(res, status, body);
    }
    if (pathMatched) {
      return send(res, 405, { error: { code: 'ERR_VD_NOT_SUPPORTED', message: `${req.method} is not allowed on ${url.pathname}` } });
    }
    throw new VdError('ERR_VD_NOT_FOUND', `no such API path ${url.pathname}`);
  } catch (err) {
    const e = isVdError(err) ? err : new VdError('ERR_VD_IO', (err as Error)?.message ?? String(err), { cause: err });
    const status = STATUS[e.code] ?? 500;
    if (status === 500) debug('host api: %s %s: %s', req.method, url.pathname, e.message);
    return send(res, status, { error: { code: e.code, message: e.message, details: e.details } });
  }
}

function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `path segment ${JSON.stringify(s)} is not valid percent-encoding`);
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (body === undefined) {
    res.writeHead(status);
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
