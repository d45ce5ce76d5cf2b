import { availableParallelism } from 'node:os';
import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  channels,
  type DiskInfo,
  debug,
  type Extent,
  type FileSpan,
  type IoOptions,
  isVdError,
  throwIfAborted,
  VdError,
  type WriteOptions,
  type ZeroOptions,
} from '@vd/core';
import { extentType } from '../contexts.js';
import { type BlockDescriptor, CmdFlag, DEFAULT_CLIENT_IN_FLIGHT, protocolError, TxFlag } from '../protocol.js';
import { type ExportInfo, type HandshakeOptions, NbdConnection } from './connection.js';
import { formatNbdUri, type NbdTarget } from './uri.js';

/**
 * One NBD connection in the transmission phase, as the client source uses it: `NbdConnection`
 * (in this thread), or one that runs elsewhere (`@vd/nbdssl` runs each TLS connection in a worker
 * thread, where decryption does not compete with the caller's thread).
 */
export interface NbdClientConnection {
  readonly info: ExportInfo;
  readonly closed: boolean;
  readonly inFlight: number;
  /** True when the connection runs in a worker thread. */
  readonly worker?: boolean;
  /** The send buffer its socket got, when enlarged (see `HandshakeOptions.sendBuffer`). */
  readonly sendBuffer?: number | undefined;
  /** Microseconds its thread's loop polls after READ reply bytes (see `HandshakeOptions.busyPoll`). */
  readonly busyPoll?: number;
  read(offset: number, into: Uint8Array, flags?: number): Promise<void>;
  write(offset: number, data: Uint8Array, flags?: number): Promise<void>;
  /** A WRITE sent from local-file spans (sendfile); false, having sent nothing, where the connection cannot. */
  writeSpans?(offset: number, spans: readonly FileSpan[], flags?: number): Promise<boolean>;
  /** How many WRITEs `writeSpans` sent. */
  readonly zeroCopyWrites?: number;
  flush(): Promise<void>;
  trim(offset: number, length: number, flags?: number): Promise<void>;
  zero(offset: number, length: number, flags?: number): Promise<void>;
  cache(offset: number, length: number): Promise<void>;
  blockStatus(offset: number, length: number, flags?: number): Promise<Map<string, BlockDescriptor[]>>;
  disconnect(): Promise<void>;
  destroy(err?: Error): void;
}

/** Whether a connection can send WRITE payloads from files (only those in this thread can). */
const sendsSpans = (c: NbdClientConnection): boolean => c.writeSpans !== undefined;

export interface NbdClientOptions extends HandshakeOptions {
  /**
   * Connections to open when the server advertises multi-conn (default: the core count, at most
   * 4, as nbdcopy does); otherwise one. On 2 cores, 4 connections read nbdkit in the clear slower
   * than 2 (see the README).
   */
  connections?: number;
  /** Reconnect-and-retry attempts for reads, block status and cache after a dropped connection (default 3; 0 turns it off). */
  retries?: number;
  /** Milliseconds before the first reconnect; doubles each attempt (default 100). */
  retryDelay?: number;
  /**
   * Opens each connection after the first (multi-conn), and their replacements on reconnect;
   * default `NbdConnection.open` in this thread, like the first. `@vd/nbdssl` passes one that runs
   * each in a worker thread: the first connection's replies land in the caller's buffers with no
   * copy, the others' decryption runs on other cores.
   */
  connectExtra?: (target: NbdTarget, opts: HandshakeOptions) => Promise<NbdClientConnection>;
}

const MiB = 1 << 20;
/** Payloads above 32 MiB are refused by qemu and common servers unless advertised. */
const MAX_REQUEST = 32 * MiB;

/**
 * A remote NBD export as a block source: one connection, or several when the server promises
 * multi-conn; requests go to the least busy connection. Reads (and other requests that change
 * nothing) survive a dropped connection by reconnecting and retrying, a bounded number of times.
 */
export class NbdClientSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly target: NbdTarget;
  readonly #opts: NbdClientOptions;
  /** Reads fill one connection before using another (see #forRead). */
  readonly #fillFirst: boolean;
  /** The choices of connection #once takes, made once rather than a closure per request. */
  readonly #anyConn = (): NbdClientConnection => this.#pick();
  readonly #readConn = (): NbdClientConnection => this.#forRead();
  readonly #spansConn = (): NbdClientConnection => this.#pick(sendsSpans);
  #conns: NbdClientConnection[];
  #reconnecting: Promise<void> | undefined;
  #closed = false;

  /** Connections still being opened by `connectExtra`; they join the others when ready. */
  readonly #joining = new Set<Promise<unknown>>();
  /** Aborts their handshakes on close or destroy: a server that never greets them must not hold either up. */
  #stopJoining: AbortController | undefined;
  /** The same for reconnects, which close waits for. */
  readonly #stopReconnects = new AbortController();

  private constructor(target: NbdTarget, conns: NbdClientConnection[], opts: NbdClientOptions, readOnly: boolean, planned: number) {
    this.target = target;
    this.#conns = conns;
    this.#opts = opts;
    this.#fillFirst = target.kind === 'unix' && !target.tls && !opts.tls;
    const info = conns[0]!.info;
    this.size = info.size;
    const f = info.flags;
    const minimum = info.minimum;
    const maximum = Math.min(info.maximum, MAX_REQUEST);
    const max = maximum - (maximum % minimum);
    // NBD's preferred size only avoids read-modify-write; the best transfer size is larger.
    const preferred = Math.min(max, Math.max(info.preferred, MiB));
    this.capabilities = {
      readOnly: readOnly || (f & TxFlag.READ_ONLY) !== 0,
      flush: (f & TxFlag.SEND_FLUSH) !== 0,
      fua: f & TxFlag.SEND_FUA ? 'native' : 'emulate',
      zero: f & TxFlag.SEND_WRITE_ZEROES ? 'native' : 'emulate',
      fastZero: (f & TxFlag.SEND_FAST_ZERO) !== 0 && (f & TxFlag.SEND_WRITE_ZEROES) !== 0,
      trim: f & TxFlag.SEND_TRIM ? 'native' : 'none',
      trimReadsZero: false,
      extents: [...new Set(info.contexts.values())],
      blockSize: { minimum, preferred: preferred - (preferred % minimum), maximum: max },
      concurrency: { model: 'parallel', maxInFlight: (opts.maxInFlight ?? DEFAULT_CLIENT_IN_FLIGHT) * planned },
      multiConn: (f & TxFlag.CAN_MULTI_CONN) !== 0,
    };
  }

  static async open(target: NbdTarget, opts: NbdClientOptions = {}, readOnly = false): Promise<NbdClientSource> {
    const hs = { ...opts, metaContexts: contextsToAsk(opts.metaContexts) };
    const first = await NbdConnection.open(target, hs);
    const want = Math.max(1, Math.floor(opts.connections ?? Math.min(4, availableParallelism())));
    // A second connection to a server without multi-conn may never be greeted (qemu-nbd -e 1), and
    // would not see our writes consistently anyway: open more only when the server promises it.
    const multi = want > 1 && (first.info.flags & TxFlag.CAN_MULTI_CONN) !== 0;
    const planned = multi ? want : 1;
    const source = new NbdClientSource(target, [first], hs, readOnly, planned);
    if (opts.connectExtra) {
      // A worker takes a few hundred ms to start under load: reads begin on the first connection
      // and the others join as they come up.
      // Their handshakes stop on the caller's signal too (AbortSignal.any needs Node 20.3).
      const stop = new AbortController();
      source.#stopJoining = stop;
      const outer = hs.signal;
      const follow = () => stop.abort(outer?.reason);
      if (outer?.aborted) follow();
      else outer?.addEventListener('abort', follow, { once: true });
      const connectExtra = opts.connectExtra;
      // One that throws rather than rejects must not leave the first connection open.
      for (let i = 1; i < planned; i++) source.#join((async () => connectExtra(target, { ...hs, signal: stop.signal }))());
      void source.#ready().then(() => outer?.removeEventListener('abort', follow));
      return source;
    }
    const extra = Array.from({ length: planned - 1 }, () => inThread(target, hs));
    for (const r of await Promise.allSettled(extra)) {
      if (r.status === 'fulfilled') source.#conns.push(r.value);
      else debug('nbd client: extra connection to %s failed: %s', formatNbdUri(target), (r.reason as Error).message);
    }
    return source;
  }

  /** Adds a connection once it is open (or drops it: closed meanwhile, or another export size). */
  #join(opening: Promise<NbdClientConnection>): void {
    const p = opening.then(
      (c) => {
        if (this.#closed) c.destroy();
        else if (c.info.size !== this.size) {
          c.destroy();
          debug('nbd client: extra connection to %s sees another export size; dropped', formatNbdUri(this.target));
        } else this.#conns.push(c);
      },
      (err) => debug('nbd client: extra connection to %s failed: %s', formatNbdUri(this.target), (err as Error).message),
    );
    this.#joining.add(p);
    void p.finally(() => this.#joining.delete(p));
  }

  /** Resolves once every connection being opened has joined (or failed). */
  async #ready(): Promise<void> {
    while (this.#joining.size > 0) await Promise.allSettled([...this.#joining]);
  }

  get connections(): number {
    return this.#conns.length;
  }

  /** How many of the connections run in worker threads. */
  get workers(): number {
    return this.#conns.filter((c) => c.worker === true).length;
  }

  _info(): DiskInfo {
    const info = this.#conns[0]!.info;
    return {
      format: 'nbd',
      uri: formatNbdUri(this.target),
      exportName: this.target.exportName,
      ...(info.description ? { description: info.description } : {}),
      transmissionFlags: info.flags,
      structuredReplies: info.structured,
      extendedHeaders: info.extended,
      connections: this.#conns.length,
      workerConnections: this.workers,
      ...(this.#conns[0]!.sendBuffer ? { sendBuffer: this.#conns[0]!.sendBuffer } : {}),
      busyPoll: this.#conns[0]!.busyPoll ?? 0,
      zeroCopyWrites: this.#conns.reduce((n, c) => n + (c.zeroCopyWrites ?? 0), 0),
    };
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.#retrying('read', opts, (c) => c.read(offset, into));
  }

  _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    return this.#once(opts, (c) => c.write(offset, data, opts.fua ? CmdFlag.FUA : 0));
  }

  /** Over a plain socket with `@vd/sparse` loaded, the payload goes from the files with sendfile. */
  _writeFileSpans(offset: number, spans: readonly FileSpan[], opts: WriteOptions): Promise<boolean> {
    // Only connections in this thread send from files: a worker's would answer false, and a copy
    // takes a first false as "never".
    const flags = opts.fua ? CmdFlag.FUA : 0;
    return this.#once(opts, (c) => c.writeSpans?.(offset, spans, flags) ?? Promise.resolve(false), this.#spansConn);
  }

  _flush(opts: IoOptions): Promise<void> {
    return this.#flushAll(opts);
  }

  _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const flags = (opts.fua ? CmdFlag.FUA : 0) | (opts.noHole ? CmdFlag.NO_HOLE : 0) | (opts.fast ? CmdFlag.FAST_ZERO : 0);
    return this.#once(opts, (c) => c.zero(offset, length, flags)).catch((err) => {
      if (opts.fast && isVdError(err, 'ERR_VD_NOT_SUPPORTED')) err.details.fast = true;
      throw err;
    });
  }

  _trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.#once(opts, (c) => c.trim(offset, length, opts.fua ? CmdFlag.FUA : 0));
  }

  /** A prefetch hint (NBD_CMD_CACHE); not part of the block source spec, offered to callers that know it. */
  cache(offset: number, length: number): Promise<void> {
    return this.#retrying('cache', {}, (c) => c.cache(offset, length));
  }

  async _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    const conn0 = this.#conns[0]!;
    const min = this.capabilities.blockSize.minimum;
    // Compact requests carry 32-bit lengths; the answer may be shorter anyway, the wrapper asks again.
    const cap = conn0.info.extended ? length : Math.min(length, 0xffffffff - (0xffffffff % min));
    const status = await this.#retrying('block status', opts, (c) => c.blockStatus(offset, cap));
    const descriptors = status.get(context);
    if (!descriptors) throw protocolError(`block status did not answer for context ${context}`);
    const end = offset + length;
    const out: Extent[] = [];
    let at = offset;
    for (const d of descriptors) {
      if (at >= end) break;
      if (d.length === 0) throw protocolError('block status descriptor of length 0');
      const n = Math.min(d.length, end - at);
      out.push({ offset: at, length: n, type: extentType(context, d.flags) });
      at += n;
    }
    return out;
  }

  async _close(): Promise<void> {
    this.#closed = true;
    const closed = new VdError('ERR_VD_CLOSED', `NBD disk ${formatNbdUri(this.target)} is closed`);
    this.#stopJoining?.abort(closed);
    this.#stopReconnects.abort(closed);
    await this.#ready();
    await this.#reconnecting?.catch(() => {});
    await Promise.allSettled(this.#conns.map((c) => c.disconnect()));
  }

  async _destroy(err?: Error): Promise<void> {
    this.#closed = true;
    const reason = err ?? new VdError('ERR_VD_CLOSED', `NBD disk ${formatNbdUri(this.target)} was destroyed`);
    this.#stopJoining?.abort(reason);
    this.#stopReconnects.abort(reason);
    for (const c of this.#conns) c.destroy(err);
  }

  /**
   * The connection for a read (or block status, or cache). Over a plain unix socket they fill the
   * first connection's window before using another, since this thread drains every socket anyway:
   * a server sending on several at once only has its sending threads compete with this one for
   * cores (figures in the README). Writes still spread, as the server receives each connection on
   * a thread of its own, which a restore measured faster. Over TCP (a network path's streams each
   * have a window of their own), over TLS (a server encrypts each connection's replies in turn)
   * and to worker connections (other threads receive), reads spread too.
   */
  #forRead(): NbdClientConnection {
    if (this.#fillFirst) {
      const window = this.#opts.maxInFlight ?? DEFAULT_CLIENT_IN_FLIGHT;
      let first: NbdClientConnection | undefined;
      for (const c of this.#conns) {
        if (c.worker === true) return this.#pick();
        if (!first && !c.closed && c.inFlight < window) first = c;
      }
      if (first) return first;
    }
    return this.#pick();
  }

  /** The connection with the fewest requests in flight (among those `fits`, when there are any). */
  #pick(fits?: (c: NbdClientConnection) => boolean): NbdClientConnection {
    const among = fits ? this.#conns.filter(fits) : this.#conns;
    const from = among.length > 0 ? among : this.#conns;
    let best = from[0]!;
    for (const c of from) if (!c.closed && (best.closed || c.inFlight < best.inFlight)) best = c;
    return best;
  }

  #once<T>(opts: IoOptions, call: (c: NbdClientConnection) => Promise<T>, choose = this.#anyConn): Promise<T> {
    throwIfAborted(opts.signal);
    if (this.#closed) return Promise.reject(new VdError('ERR_VD_CLOSED', `NBD disk ${formatNbdUri(this.target)} is closed`));
    return call(choose());
  }

  /** Flush goes to every connection unless multi-conn makes one enough. */
  async #flushAll(opts: IoOptions): Promise<void> {
    if (this.capabilities.multiConn || this.#conns.length === 1) return this.#once(opts, (c) => c.flush());
    await Promise.all(this.#conns.map((c) => c.flush()));
  }

  async #retrying<T>(op: string, opts: IoOptions, call: (c: NbdClientConnection) => Promise<T>): Promise<T> {
    const retries = this.#opts.retries ?? 3;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#once(opts, call, this.#readConn);
      } catch (err) {
        if (attempt >= retries || this.#closed || !isLost(err) || opts.signal?.aborted) throw err;
        if (channels.retry.hasSubscribers) channels.retry.publish({ transport: 'nbd', op, attempt: attempt + 1, error: err });
        debug('nbd client: %s failed on a dropped connection, reconnecting (attempt %d)', op, attempt + 1);
        await new Promise((r) => setTimeout(r, (this.#opts.retryDelay ?? 100) * 2 ** attempt));
        await this.#reconnect().catch((e) => debug('nbd client: reconnect failed: %s', (e as Error).message));
      }
    }
  }

  /** Replaces dead connections; concurrent callers share one attempt. */
  #reconnect(): Promise<void> {
    this.#reconnecting ??= (async () => {
      try {
        // Not the signal the disk was opened with: it bounds the open (AbortSignal.timeout, say)
        // and may have fired since. Each handshake still has its own timeout, and close or
        // destroy ends it.
        const hs = { ...this.#opts, signal: this.#stopReconnects.signal };
        const next: NbdClientConnection[] = [];
        const before = [...this.#conns];
        // After a failure the rest stay as they are (dead, for the next attempt), but what was
        // reopened is kept: requests go on over it, and close() ends it.
        let failure: unknown;
        for (const [i, c] of before.entries()) {
          if (!c.closed || failure !== undefined) {
            next.push(c);
            continue;
          }
          // By position, as open planned them: the first in this thread, the others through
          // connectExtra, whatever kind of connection it returned last time.
          const open = i > 0 && this.#opts.connectExtra ? this.#opts.connectExtra : inThread;
          try {
            const fresh = await open(this.target, hs);
            if (fresh.info.size !== this.size) {
              fresh.destroy();
              throw new VdError('ERR_VD_PROTOCOL', `NBD export ${formatNbdUri(this.target)} changed size across a reconnect`);
            }
            next.push(fresh);
          } catch (err) {
            failure = err;
            next.push(c);
          }
        }
        // Connections that joined meanwhile stay.
        for (const c of this.#conns) if (!before.includes(c)) next.push(c);
        if (this.#closed) for (const c of next) c.destroy();
        this.#conns = next;
        if (failure !== undefined) throw failure;
      } finally {
        this.#reconnecting = undefined;
      }
    })();
    return this.#reconnecting;
  }
}

const inThread = (t: NbdTarget, o: HandshakeOptions): Promise<NbdClientConnection> => NbdConnection.open(t, o);

function isLost(err: unknown): boolean {
  return isVdError(err) && err.details.connectionLost === true;
}

/** base:allocation always, then whatever else the caller asked for. */
function contextsToAsk(extra: readonly string[] | undefined): string[] {
  const out = [BASE_ALLOCATION];
  for (const c of extra ?? []) if (!out.includes(c)) out.push(c);
  return out;
}
