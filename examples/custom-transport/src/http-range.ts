import { request as httpRequest, type IncomingMessage } from 'node:http';
import {
  type BlockSource,
  type Capabilities,
  defaultCapabilities,
  type IoOptions,
  type OpenOptions,
  type ProbeResult,
  type Transport,
  VdError,
  type WriteOptions,
} from '@vd/core';

/**
 * A vd transport of a different kind: a disk image behind an HTTP server that honours range
 * requests. Reads are `GET` with `Range: bytes=a-b`; writes (when the server allows them) are
 * `PUT` with `Content-Range: bytes a-b/size`, as WebDAV-style servers accept. URIs are
 * `http+range://host:port/path` so the plugin never claims plain web URLs by accident.
 */
export interface HttpRangeOptions {
  /** Extra request headers (authorization). Never logged. */
  headers?: Record<string, string>;
  /** Milliseconds per request (default 30 s). */
  timeout?: number;
}

const SCHEME = 'http+range';

function httpUrl(location: URL): URL {
  const u = new URL(location.href.replace(/^http\+range:/, 'http:'));
  u.hash = '';
  return u;
}

interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** One HTTP exchange; the body is capped so a misbehaving server cannot exhaust memory. */
function exchange(
  url: URL,
  method: string,
  headers: Record<string, string>,
  opts: { body?: Uint8Array; limit: number; timeout: number; signal?: AbortSignal | undefined },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers, timeout: opts.timeout, signal: opts.signal }, (res) => {
      const parts: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > opts.limit)
          req.destroy(new VdError('ERR_VD_PROTOCOL', `${url.href}: the server sent more than the ${opts.limit} bytes asked for`));
        else parts.push(c);
      });
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
    });
    req.on('timeout', () => req.destroy(new VdError('ERR_VD_TIMEOUT', `${url.href}: no answer within ${opts.timeout} ms`)));
    req.on('error', (err) =>
      reject(err instanceof VdError ? err : new VdError('ERR_VD_IO', `${url.href}: ${err.message}`, { cause: err })),
    );
    req.end(opts.body);
  });
}

function statusError(url: URL, what: string, a: Answer): VdError {
  const code = a.status === 404 ? 'ERR_VD_NOT_FOUND' : a.status === 401 || a.status === 403 ? 'ERR_VD_PERMISSION' : 'ERR_VD_REMOTE';
  return new VdError(code, `${what} ${url.href}: HTTP ${a.status}`, { details: { status: a.status } });
}

class HttpRangeSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly _write?: (offset: number, data: Uint8Array, opts: WriteOptions) => Promise<void>;
  readonly #url: URL;
  readonly #headers: Record<string, string>;
  readonly #timeout: number;

  constructor(url: URL, size: number, writable: boolean, opts: HttpRangeOptions) {
    this.#url = url;
    this.size = size;
    this.#headers = { ...opts.headers };
    this.#timeout = opts.timeout ?? 30_000;
    this.capabilities = {
      ...defaultCapabilities,
      readOnly: !writable,
      flush: false,
      fua: 'none',
      zero: writable ? 'emulate' : 'none',
      trim: 'none',
      extents: [],
      // Each request is a round trip: keep them large, and several in flight on keep-alive sockets.
      blockSize: { minimum: 1, preferred: 1 << 20, maximum: 8 << 20 },
      concurrency: { model: 'parallel', maxInFlight: 8 },
    };
    if (writable) this._write = (offset, data, o) => this.#put(offset, data, o);
  }

  async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    const end = offset + into.length - 1;
    const a = await exchange(
      this.#url,
      'GET',
      { ...this.#headers, range: `bytes=${offset}-${end}` },
      {
        limit: into.length,
        timeout: this.#timeout,
        signal: opts.signal,
      },
    );
    if (a.status !== 206) throw statusError(this.#url, `read ${offset}+${into.length} of`, a);
    // Never trust the server's framing: the answer must be exactly the range asked for.
    if (a.headers['content-range'] !== `bytes ${offset}-${end}/${this.size}` || a.body.length !== into.length) {
      throw new VdError(
        'ERR_VD_PROTOCOL',
        `${this.#url.href}: asked for bytes ${offset}-${end}, got ${a.headers['content-range'] ?? 'no Content-Range'} with ${a.body.length} bytes`,
      );
    }
    into.set(a.body);
  }

  async #put(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const end = offset + data.length - 1;
    const headers = { ...this.#headers, 'content-range': `bytes ${offset}-${end}/${this.size}`, 'content-length': String(data.length) };
    const a = await exchange(this.#url, 'PUT', headers, { body: data, limit: 4096, timeout: this.#timeout, signal: opts.signal });
    if (a.status !== 204 && a.status !== 200) throw statusError(this.#url, `write ${offset}+${data.length} to`, a);
  }

  async _close(): Promise<void> {}
}

/** The transport factory, passed to `openDisk(uri, { transports: [httpRange(), …] })`. */
export function httpRange(opts: HttpRangeOptions = {}): Transport {
  const head = (location: URL, signal?: AbortSignal) =>
    exchange(httpUrl(location), 'HEAD', { ...opts.headers }, { limit: 0, timeout: opts.timeout ?? 30_000, signal });
  return {
    specificationVersion: 'v1',
    name: 'http-range',
    schemes: [SCHEME],
    async probe(location: URL, o: OpenOptions): Promise<ProbeResult> {
      try {
        const a = await head(location, o.signal);
        if (a.status !== 200) return { ok: false, reason: `HEAD answered HTTP ${a.status}` };
        if (a.headers['accept-ranges'] !== 'bytes') return { ok: false, reason: 'the server does not accept byte ranges' };
        return { ok: true };
      } catch (err) {
        return { ok: false, reason: (err as Error).message };
      }
    },
    async open(location: URL, o: OpenOptions): Promise<BlockSource> {
      const url = httpUrl(location);
      const a = await head(location, o.signal);
      if (a.status !== 200) throw statusError(url, 'open', a);
      const size = Number(a.headers['content-length']);
      if (!Number.isSafeInteger(size) || size <= 0) {
        throw new VdError('ERR_VD_PROTOCOL', `${url.href}: Content-Length ${String(a.headers['content-length'])} is not a disk size`);
      }
      // The server says whether it takes writes (Allow: GET, HEAD, PUT).
      const allow = String(a.headers.allow ?? '').toUpperCase();
      const writable = o.readOnly !== true && allow.split(/\s*,\s*/).includes('PUT');
      return new HttpRangeSource(url, size, writable, opts);
    },
  };
}
