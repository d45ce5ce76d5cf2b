import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { type ChangedArea, type ChangedAreas, changedAreasFromBitmap, DIRTY_BITMAP_PREFIX } from '@vd/cbt';
import { errorCodes, openDisk, type Transport, VdError, type VdErrorCode } from '@vd/core';
import { nbd } from '@vd/nbd';
import type { DiskSummary, SnapshotInfo, SnapshotOptions } from './host.js';

export interface HostClientOptions {
  /** The API's base URL, `http://host:port` or `https://host:port`. */
  url: string;
  /** The host's bearer token. */
  token: string;
  /** PEM CA certificate(s) to trust for an HTTPS API with a private CA. */
  ca?: string | string[] | undefined;
  /** Milliseconds per request (default 5 minutes: deleting a snapshot waits for consolidation). */
  timeout?: number;
}

export interface CallOptions {
  signal?: AbortSignal | undefined;
}

export interface ChangesOptions {
  upTo?: string | undefined;
  startOffset?: number | undefined;
  maxAreas?: number | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * The typed client of a host's control API. Errors come back as the host's coded `VdError`
 * (`details.status` holds the HTTP status); a refused token is ERR_VD_UNAUTHORIZED.
 */
export class HostClient {
  readonly url: URL;
  readonly #token: string;
  readonly #ca: string | string[] | undefined;
  readonly #timeout: number;

  constructor(opts: HostClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch (err) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${JSON.stringify(opts.url)} is not an API URL (http://host:port)`, { cause: err });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${opts.url}: the API URL is http:// or https://`);
    }
    if (typeof opts.token !== 'string' || opts.token.length === 0) {
      throw new VdError('ERR_VD_UNAUTHORIZED', 'no API token given (--token-file or VD_TOKEN)');
    }
    this.url = url;
    this.#token = opts.token;
    this.#ca = opts.ca;
    this.#timeout = opts.timeout ?? 300_000;
  }

  async disks(opts: CallOptions = {}): Promise<DiskSummary[]> {
    return (await this.#call<{ disks: DiskSummary[] }>('GET', ['v1', 'disks'], undefined, opts.signal)).disks;
  }

  disk(name: string, opts: CallOptions = {}): Promise<DiskSummary> {
    return this.#call('GET', ['v1', 'disks', name], undefined, opts.signal);
  }

  async snapshots(disk: string, opts: CallOptions = {}): Promise<SnapshotInfo[]> {
    return (await this.#call<{ snapshots: SnapshotInfo[] }>('GET', ['v1', 'disks', disk, 'snapshots'], undefined, opts.signal)).snapshots;
  }

  /**
   * An abort after the request left may still see the snapshot taken: list them to find out.
   * With `ttl` (seconds) the snapshot is leased: renew it within that time or the host deletes it.
   */
  createSnapshot(disk: string, opts: CallOptions & SnapshotOptions = {}): Promise<SnapshotInfo> {
    return this.#call('POST', ['v1', 'disks', disk, 'snapshots'], ttlQuery(opts.ttl), opts.signal);
  }

  /** Extends a leased snapshot's lease (`ttl` seconds from now, default its own); ERR_VD_NOT_FOUND once it is gone. */
  renewSnapshot(disk: string, id: string, opts: CallOptions & SnapshotOptions = {}): Promise<SnapshotInfo> {
    return this.#call('POST', ['v1', 'disks', disk, 'snapshots', id, 'lease'], ttlQuery(opts.ttl), opts.signal);
  }

  async deleteSnapshot(disk: string, id: string, opts: CallOptions = {}): Promise<void> {
    await this.#call('DELETE', ['v1', 'disks', disk, 'snapshots', id], undefined, opts.signal);
  }

  /** One page of changed areas since `since` (a change ID, or `*`). */
  changes(disk: string, since: string, opts: ChangesOptions = {}): Promise<ChangedAreas> {
    const q = new URLSearchParams({ since });
    if (opts.upTo !== undefined) q.set('upTo', opts.upTo);
    if (opts.startOffset !== undefined) q.set('startOffset', String(opts.startOffset));
    if (opts.maxAreas !== undefined) q.set('maxAreas', String(opts.maxAreas));
    return this.#call('GET', ['v1', 'disks', disk, 'changes'], q, opts.signal);
  }

  /** Every changed area since `since`, paging through the disk. */
  async *allChanges(disk: string, since: string, opts: Omit<ChangesOptions, 'startOffset'> = {}): AsyncGenerator<ChangedArea> {
    const { size } = await this.disk(disk, { signal: opts.signal });
    let at = 0;
    while (at < size) {
      const page = await this.changes(disk, since, { ...opts, startOffset: at });
      if (page.startOffset !== at || page.length <= 0) {
        throw new VdError('ERR_VD_PROTOCOL', `the host answered changes from ${page.startOffset}+${page.length} when asked from ${at}`);
      }
      yield* page.areas;
      at += page.length;
    }
  }

  #call<T>(method: string, segments: string[], query?: URLSearchParams, signal?: AbortSignal): Promise<T> {
    const base = this.url.pathname.replace(/\/+$/, '');
    const path = `${base}/${segments.map(encodeURIComponent).join('/')}${query ? `?${query}` : ''}`;
    const secure = this.url.protocol === 'https:';
    const request = secure ? httpsRequest : httpRequest;
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          method,
          host: this.url.hostname.replace(/^\[(.*)\]$/, '$1'),
          port: this.url.port || (secure ? 443 : 80),
          path,
          headers: { authorization: `Bearer ${this.#token}`, accept: 'application/json' },
          timeout: this.#timeout,
          signal,
          ...(secure && this.#ca !== undefined ? { ca: this.#ca } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            // A page of areas is a few MiB at most; anything far larger is not our host.
            if (size > 256 * 1024 * 1024) req.destroy(new VdError('ERR_VD_PROTOCOL', 'the API answer is too large'));
            else chunks.push(c);
          });
          res.on('error', reject);
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            const text = Buffer.concat(chunks).toString('utf8');
            let body: unknown;
            try {
              body = text ? JSON.parse(text) : undefined;
            } catch (err) {
              reject(new VdError('ERR_VD_PROTOCOL', `the API answered ${status} with something that is not JSON`, { cause: err }));
              return;
            }
            if (status >= 200 && status < 300) resolve(body as T);
            else reject(toError(status, body));
          });
        },
      );
      req.on('timeout', () => req.destroy(new VdError('ERR_VD_TIMEOUT', `the API did not answer within ${this.#timeout} ms`)));
      req.on('error', (err) => {
        if (err instanceof VdError) reject(err);
        else if (signal?.aborted) reject(new VdError('ERR_VD_ABORTED', `${method} ${path}: aborted`, { cause: signal.reason }));
        else {
          const code = (err as NodeJS.ErrnoException).code;
          reject(
            new VdError(
              code === 'ECONNREFUSED' ? 'ERR_VD_NOT_FOUND' : 'ERR_VD_IO',
              `cannot reach the host API at ${this.url.origin}: ${err.message}`,
              {
                cause: err,
                details: { errno: code },
              },
            ),
          );
        }
      });
      req.end();
    });
  }
}

function ttlQuery(ttl: number | undefined): URLSearchParams | undefined {
  return ttl === undefined ? undefined : new URLSearchParams({ ttl: String(ttl) });
}

function toError(status: number, body: unknown): VdError {
  const e = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | undefined)?.error;
  const code = typeof e?.code === 'string' && e.code in errorCodes ? (e.code as VdErrorCode) : 'ERR_VD_REMOTE';
  const message = typeof e?.message === 'string' ? e.message : `the API answered HTTP ${status}`;
  const details = e?.details && typeof e.details === 'object' ? { ...(e.details as Record<string, unknown>), status } : { status };
  return new VdError(code, message, { details });
}

export interface BitmapChangesOptions {
  /** Transport settings for the NBD connection (TLS: use `nbdssl()` through `transports`). */
  transports?: Transport[];
  signal?: AbortSignal | undefined;
}

/**
 * Every changed area a dirty bitmap of an NBD export describes: a snapshot export of our host
 * (changes from the snapshot before it), or `qemu-nbd -B <bitmap>` of a QEMU disk. The same
 * shape as `HostClient.allChanges`, so one backup loop serves both.
 */
export async function* bitmapChanges(uri: string, bitmap: string, opts: BitmapChangesOptions = {}): AsyncGenerator<ChangedArea> {
  const context = bitmap.startsWith(DIRTY_BITMAP_PREFIX) ? bitmap : DIRTY_BITMAP_PREFIX + bitmap;
  const disk = await openDisk(uri, {
    readOnly: true,
    transports: opts.transports ?? [nbd({ metaContexts: [context] })],
    signal: opts.signal,
  });
  try {
    if (!disk.capabilities.extents.includes(context)) {
      throw new VdError(
        'ERR_VD_NOT_SUPPORTED',
        `${uri} offers no ${context} (qemu-nbd needs -B ${bitmap.replace(DIRTY_BITMAP_PREFIX, '')})`,
        {
          details: { offered: disk.capabilities.extents },
        },
      );
    }
    let at = 0;
    while (at < disk.size) {
      const page = await changedAreasFromBitmap(disk, context, { startOffset: at, signal: opts.signal });
      yield* page.areas;
      at += page.length;
    }
  } finally {
    await disk.close();
  }
}
