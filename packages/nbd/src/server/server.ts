import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { BufferPool, debug, VdError } from '@vd/core';
import { checkSendBuffer, loadSetSendBuffer, type SetSendBuffer } from '../send-buffer.js';
import { loadZeroCopy, SendSlots, type ZeroCopyOps } from '../sendfile.js';
import { ServerConnection, type ServerContext } from './connection.js';
import {
  type NbdExport,
  type NbdServerOptions,
  type NbdServerStats,
  type NbdServerTls,
  type ResolvedLimits,
  resolveLimits,
} from './options.js';
import { removeStaleSocket, withSocketPathLock } from './unix-socket.js';

export type ListenOptions = { host?: string; port?: number } | { path: string } | { fd: number };

/** Where a listener is reachable, and the URI of the default export there. */
export interface NbdServerAddress {
  kind: 'tcp' | 'unix' | 'fd';
  host?: string;
  port?: number;
  path?: string;
  uri: string;
}

/**
 * READ reply and WRITE payload buffers, one pool for every server in the process: its cap on idle
 * buffers then holds per process, not per server.
 */
const sharedPool = new BufferPool();

/**
 * An NBD server exporting vd disks (raw, VMDK, chains: any `Disk`) over TCP, unix sockets and
 * inherited listening sockets (systemd socket activation). Fixed newstyle with structured replies,
 * extended headers, block status for every extents context the disk offers, and multi-conn: all
 * connections share one `Disk`, so a flush on one covers writes acknowledged on every other.
 *
 * The server does not own the disks: `close()` stops serving and leaves them open.
 */
export class NbdServer {
  readonly #exports: NbdExport[];
  readonly #limits: ResolvedLimits;
  readonly #servers: Server[] = [];
  readonly #addresses: NbdServerAddress[] = [];
  readonly #connections = new Set<ServerConnection>();
  readonly #ctx: ServerContext;
  readonly #stats: NbdServerStats = {
    zeroCopyReads: 0,
    zeroCopyBatches: 0,
    bufferedSendBytes: 0,
    copiedReads: 0,
    directWriteBytes: 0,
    enlargedSendBuffers: 0,
  };
  #zeroCopy: ZeroCopyOps | undefined;
  #setSendBuffer: SetSendBuffer | undefined;
  readonly #loading: Promise<unknown>;
  #closing: Promise<void> | undefined;

  constructor(opts: NbdServerOptions) {
    const list = Array.isArray(opts.exports) ? [...opts.exports] : [opts.exports as NbdExport];
    if (list.length === 0) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'NbdServer needs at least one export');
    const names = new Set<string>();
    for (const e of list) {
      if (typeof e?.name !== 'string' || !e.disk) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'an export needs a name and a disk');
      if (names.has(e.name)) throw new VdError('ERR_VD_INVALID_ARGUMENT', `export name ${JSON.stringify(e.name)} is used twice`);
      if (new TextEncoder().encode(e.name).length > 4096)
        throw new VdError('ERR_VD_INVALID_ARGUMENT', 'an export name is at most 4096 bytes');
      names.add(e.name);
    }
    this.#exports = list;
    this.#limits = resolveLimits(opts.limits);
    if (this.#limits.maxPayload < 1 << 20 || this.#limits.maxPayload > 0x7fffffff) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'limits.maxPayload must be between 1 MiB and 2 GiB');
    }
    const { zeroCopySends, sendStallTimeout } = this.#limits;
    if (!Number.isSafeInteger(zeroCopySends) || zeroCopySends < 0 || !Number.isSafeInteger(sendStallTimeout) || sendStallTimeout < 1) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'limits.zeroCopySends must be an integer >= 0 and limits.sendStallTimeout one >= 1');
    }
    checkSendBuffer(this.#limits.sendBuffer, 'limits.sendBuffer');
    this.#loading = Promise.all([
      zeroCopySends > 0 ? loadZeroCopy().then((z) => (this.#zeroCopy = z)) : undefined,
      this.#limits.sendBuffer > 0 ? loadSetSendBuffer().then((f) => (this.#setSendBuffer = f)) : undefined,
    ]);
    const exports = this.#exports;
    const self = this;
    this.#ctx = {
      limits: this.#limits,
      pool: sharedPool,
      tls: opts.tls as NbdServerTls | undefined,
      extendedHeaders: opts.extendedHeaders ?? true,
      structuredReplies: opts.structuredReplies ?? true,
      sendSlots: new SendSlots(zeroCopySends),
      stats: this.#stats,
      get zeroCopy() {
        return self.#zeroCopy;
      },
      get setSendBuffer() {
        return self.#setSendBuffer;
      },
      get shuttingDown() {
        return self.#closing !== undefined;
      },
      findExport: (name) => exports.find((e) => e.name === name) ?? (name === '' ? exports[0] : undefined),
      exports: () => exports,
    };
  }

  /** The live list of exports; `addExport` and `removeExport` change it while serving. */
  get exports(): readonly NbdExport[] {
    return this.#exports;
  }

  /** Adds an export while serving (e.g. a snapshot); new options see it at once. */
  addExport(e: NbdExport): void {
    if (this.#exports.some((x) => x.name === e.name)) throw new VdError('ERR_VD_EXISTS', `export ${JSON.stringify(e.name)} already exists`);
    this.#exports.push(e);
  }

  /** Removes an export from LIST and new opens; clients already connected to it keep their disk. */
  removeExport(name: string): boolean {
    const i = this.#exports.findIndex((x) => x.name === name);
    if (i >= 0) this.#exports.splice(i, 1);
    return i >= 0;
  }

  /** How READ requests were answered so far (zero-copy or copied); a live object. */
  get stats(): Readonly<NbdServerStats> {
    return this.#stats;
  }

  /** Open connections. */
  get connections(): number {
    return this.#connections.size;
  }

  get addresses(): readonly NbdServerAddress[] {
    return this.#addresses;
  }

  /** Starts listening; resolves to the address and the URI of the default export. */
  async listen(opts: ListenOptions = {}): Promise<NbdServerAddress> {
    if (this.#closing) throw new VdError('ERR_VD_CLOSED', 'the NBD server is closed');
    // So the first client's reads already go zero-copy where they can, over a sized socket.
    await this.#loading;
    const server = createServer({ noDelay: true, pauseOnConnect: false }, (s) => this.handle(s));
    server.on('error', (err) => debug('nbd server: listener error: %s', err.message));
    const where =
      'fd' in opts ? { fd: opts.fd } : 'path' in opts ? { path: opts.path } : { host: opts.host ?? '127.0.0.1', port: opts.port ?? 0 };
    await listenOn(server, where)
      .catch(async (err: NodeJS.ErrnoException) => {
        // A socket file left by a server that was killed: remove it (only if dead) and try once more.
        if (err.code !== 'EADDRINUSE' || !('path' in opts)) throw err;
        await withSocketPathLock(opts.path, async () => {
          await removeStaleSocket(opts.path);
          await listenOn(server, where);
        });
      })
      .catch((err: NodeJS.ErrnoException) => {
        if (err instanceof VdError) throw err;
        throw new VdError(err.code === 'EADDRINUSE' ? 'ERR_VD_EXISTS' : 'ERR_VD_IO', `NBD server cannot listen: ${err.message}`, {
          cause: err,
          details: { errno: err.code },
        });
      });
    this.#servers.push(server);
    const name = encodeURIComponent(this.#exports[0]!.name);
    let address: NbdServerAddress;
    const a = server.address();
    if ('path' in opts) {
      address = { kind: 'unix', path: opts.path, uri: `nbd+unix:///${name}?socket=${encodeURIComponent(opts.path)}` };
    } else if (a && typeof a === 'object') {
      const { address: host, port } = a as AddressInfo;
      const h = host.includes(':') ? `[${host}]` : host;
      address = { kind: 'fd' in opts ? 'fd' : 'tcp', host, port, uri: `nbd://${h}:${port}/${name}` };
    } else {
      address = { kind: 'fd', uri: `nbd+unix:///${name}?socket=${String(a)}` };
    }
    this.#addresses.push(address);
    return address;
  }

  /**
   * systemd socket activation: when `LISTEN_PID` is this process and `LISTEN_FDS` ≥ 1, serves the
   * inherited listening sockets from fd 3 on (what `nbdcopy -- [ cmd ]` and libnbd's
   * socket-activation connect pass). Resolves to how many it took, 0 when not activated.
   */
  async listenSystemd(env: NodeJS.ProcessEnv = process.env): Promise<number> {
    if (env.LISTEN_PID !== String(process.pid)) return 0;
    const n = Number(env.LISTEN_FDS);
    if (!Number.isSafeInteger(n) || n < 1) return 0;
    for (let fd = 3; fd < 3 + n; fd++) await this.listen({ fd });
    // Children must not think the sockets are theirs.
    delete env.LISTEN_PID;
    delete env.LISTEN_FDS;
    delete env.LISTEN_FDNAMES;
    return n;
  }

  /** Serves one already-connected duplex (a socket, a TLS stream, a test pair). */
  handle(socket: Duplex): void {
    if (this.#closing || this.#connections.size >= this.#limits.maxConnections) {
      debug('nbd server: refusing a connection (%s)', this.#closing ? 'closing' : 'too many connections');
      socket.destroy();
      return;
    }
    (socket as Socket).setKeepAlive?.(true, 60_000);
    const conn = new ServerConnection(socket, this.#ctx);
    this.#connections.add(conn);
    conn.closed.then(() => this.#connections.delete(conn));
  }

  /**
   * Graceful and idempotent: stops accepting, refuses new options, lets every connection finish
   * the requests it has in flight, then closes them (dropping any left after `shutdownTimeout`).
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const listeners = this.#servers.map((s) => new Promise<void>((r) => s.close(() => r())));
      const drains = [...this.#connections].map((c) => c.shutdown());
      const timer = setTimeout(() => {
        for (const c of this.#connections) c.destroy();
      }, this.#limits.shutdownTimeout);
      timer.unref();
      await Promise.all(drains);
      await Promise.all([...this.#connections].map((c) => c.closed));
      clearTimeout(timer);
      await Promise.all(listeners);
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Resolves once `server` listens, rejects with the error listening failed with (then it may listen again). */
function listenOn(server: Server, where: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const failed = (err: Error) => {
      server.off('listening', listening);
      reject(err);
    };
    const listening = () => {
      server.off('error', failed);
      resolve();
    };
    server.once('error', failed).once('listening', listening).listen(where);
  });
}
