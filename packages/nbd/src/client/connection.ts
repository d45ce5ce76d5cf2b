import { connect as netConnect, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { debug, type FileSpan, VdError } from '@vd/core';
import { fromErrno } from '../errno.js';
import {
  type BlockDescriptor,
  Cmd,
  CmdFlag,
  DEFAULT_CLIENT_IN_FLIGHT,
  decodeErrorText,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeServerReply,
  EXTENDED_REPLY_SIZE,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeString,
  HandshakeFlag,
  Info,
  type NbdReply,
  Opt,
  protocolError,
  Rep,
  type ReplyTargets,
  requestHeaderSize,
  type ServerMessage,
  ServerStreamDecoder,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_SIZE,
  TxFlag,
  writeRequestHeader,
} from '../protocol.js';
import type { ReadInto } from '../read-into.js';
import { checkSendBuffer, DEFAULT_SEND_BUFFER, loadSetSendBuffer, sizeSendBuffer } from '../send-buffer.js';
import { defaultZeroCopySends, loadZeroCopy, SendSlots, type ZeroCopyOps } from '../sendfile.js';
import { busyPollFor, keepPolling } from './busy-poll.js';
import { formatNbdUri, type NbdTarget } from './uri.js';

/** TLS upgrade hook for the client (implemented by `@vd/nbdssl`): wraps the socket after STARTTLS. */
export interface NbdClientTls {
  /**
   * `onread`, when given, is where the TLS socket should put decrypted bytes: node:tls then copies
   * each record into the buffer it names (the caller's, when read data is due) instead of
   * allocating a Buffer per 16 KiB record and emitting it as 'data', which costs more CPU than
   * the decryption.
   */
  upgrade(socket: Duplex, target: NbdTarget, onread?: ReadInto): Promise<Duplex>;
}

export interface HandshakeOptions {
  /** Milliseconds for connect plus handshake (default 10 s). A single-connection qemu-nbd never greets a second client. */
  handshakeTimeout?: number;
  /** Ask for structured replies (default true). */
  structuredReplies?: boolean;
  /** Ask for extended headers (default true). */
  extendedHeaders?: boolean;
  /** Meta contexts to select; a query ending in `:` selects every context the server lists under it. */
  metaContexts?: readonly string[];
  /** Requests in flight on this connection (default `DEFAULT_CLIENT_IN_FLIGHT`, 32). */
  maxInFlight?: number;
  /**
   * Bytes of socket send buffer asked for on a unix socket, plain or TLS, when `@vd/sparse` is
   * loaded (default 2 MiB; 0 keeps the kernel's 208 KiB): a WRITE's payload then leaves in one
   * call instead of one per 208 KiB the server drains. The kernel caps it at
   * `net.core.wmem_max`. TCP keeps the kernel's autotuning.
   */
  sendBuffer?: number;
  /**
   * Microseconds this thread keeps polling its sockets after a READ reply's bytes arrived, while
   * more are due, instead of sleeping until the next ones wake it (`keepPolling`). Default
   * `VD_NBD_BUSY_POLL`, else `DEFAULT_BUSY_POLL` (500) on a plain unix socket, where the server's
   * small send buffer makes a read thousands of hand-offs, and 0 elsewhere; 0 turns it off. It
   * costs CPU for speed (figures in the README). Connections in worker threads never poll.
   */
  busyPoll?: number;
  tls?: NbdClientTls;
  signal?: AbortSignal;
}

export interface ExportInfo {
  size: number;
  flags: number;
  minimum: number;
  preferred: number;
  maximum: number;
  /** Whether the server sent INFO_BLOCK_SIZE. */
  blockSizeAdvertised: boolean;
  structured: boolean;
  extended: boolean;
  /** Selected context names by id. */
  contexts: Map<number, string>;
  description?: string;
}

interface Pending {
  command: number;
  offset: number;
  length: number;
  into: Uint8Array | undefined;
  covered: number;
  ranges: number[] | undefined;
  error: VdError | undefined;
  status: Map<string, BlockDescriptor[]> | undefined;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/**
 * Thrown when the connection dropped under a request; reads may be retried on a new one (the
 * client source retries on `details.connectionLost`). `reason`, when given, ends the message in
 * parentheses: what dropped it, where the cause alone does not say.
 */
export function connectionLost(target: string, cause?: unknown, reason?: string): VdError {
  const why = reason === undefined ? '' : ` (${reason})`;
  return new VdError('ERR_VD_IO', `NBD connection to ${target} was lost${why}`, { cause, details: { connectionLost: true } });
}

const COOKIE_LIMIT = 0xffffffff;
/** Over TLS, writes up to this size (request headers) are gathered into one buffer, up to GATHER_LIMIT. */
const SMALL_WRITE = 4096;
const GATHER_LIMIT = 64 * 1024;
/** Plain sockets read into one reused buffer of this size (fewer, larger reads; no allocation per read). */
const READ_BUFFER = 256 * 1024;
/** Zero-copy WRITEs queued together leave in one job on libuv's pool, up to this many or bytes. */
const SEND_BATCH_WRITES = 64;
const SEND_BATCH_BYTES = 32 << 20;
/** Pieces per `sendFiles` call (the addon's limit). */
const SEND_PIECES_MAX = 1024;

/**
 * Connections sending zero-copy WRITEs at once, process-wide. A send holds a pool thread while the
 * server drains it, so they are capped below the pool's size and the file reads feeding them keep
 * threads of their own. A connection holds its slot while it has such WRITEs queued or under way;
 * one that finds none free answers false and the caller writes from its buffer, so a server that
 * stops reading delays only its own connection.
 */
let sendSlots: SendSlots | undefined;

/** A WRITE payload's span, with a descriptor of our own (the caller's may close before it goes). */
interface OwnedSpan {
  fd: number;
  position: number;
  length: number;
}

/** Output waiting behind a zero-copy send: a request header with its payload, in a buffer or in file spans. */
interface OutItem {
  header: Uint8Array;
  data?: Uint8Array | undefined;
  spans?: OwnedSpan[] | undefined;
}

/** Where bytes from the socket go; `borrowed` bytes live in a buffer the next read overwrites. */
interface Receiver {
  deliver: (chunk: Uint8Array, borrowed: boolean) => void;
  /** Where the next read may land directly (a caller's buffer), if anywhere. */
  direct?: (() => Uint8Array | undefined) | undefined;
  /** That many bytes landed in the buffer `direct` gave. */
  filled?: ((n: number) => void) | undefined;
  /**
   * How much of the scratch buffer the next read may fill when no data is due (0: all of it).
   * While READ replies are expected, only up to where the next one's data would start: a large
   * read would pull that data into scratch, from where it must be copied again.
   */
  lookahead?: (() => number) | undefined;
}

/**
 * One NBD connection in the transmission phase: requests are pipelined and keyed by cookie,
 * replies land straight in the caller's buffers, at most `maxInFlight` are outstanding.
 */
export class NbdConnection {
  readonly info: ExportInfo;
  readonly uri: string;
  /** The send buffer the socket got (bytes, as the kernel counts them), when it was enlarged. */
  readonly sendBuffer: number | undefined;
  readonly #socket: Duplex;
  readonly #decoder: ServerStreamDecoder;
  readonly #pending = new Map<number, Pending>();
  readonly #waiters: (() => void)[] = [];
  readonly #maxInFlight: number;
  readonly #extended: boolean;
  readonly #headerSize: number;
  #cookie = 0;
  /** READ requests in flight (their replies carry data). */
  #reads = 0;
  #corked = false;
  /** The socket is node:tls's (see #tlsWrite): its queue, and whether a write is under way. */
  readonly #tls: boolean;
  readonly #tlsOut: Uint8Array[] = [];
  #tlsWriting = false;
  /** A #tlsWrite is due at the end of this turn of the event loop. */
  #tlsDue = false;
  /**
   * Zero-copy WRITEs (plain sockets, `@vd/sparse` loaded): while one is queued or being sent by
   * the addon, other output waits in `#out` behind it, in order; `#nodeWrites` counts node's
   * writes not yet handed to the kernel, which a send must not overtake.
   */
  readonly #zc: ZeroCopyOps | undefined;
  readonly #socketFd: number | undefined;
  readonly #out: OutItem[] = [];
  #addonOwns = false;
  #nodeWrites = 0;
  /** A dup of the socket's descriptor for the addon, so a destroyed socket's number is never reused under a send. */
  #sendFd: number | undefined;
  #sendAbort: AbortController | undefined;
  #zeroCopyWrites = 0;
  /** Zero-copy WRITEs queued or being sent; the connection holds a send slot while there are any. */
  #spanWrites = 0;
  #dead: VdError | undefined;
  readonly #onDeath: ((err: VdError) => void)[] = [];
  /** Microseconds the loop polls after READ reply bytes (`HandshakeOptions.busyPoll`; 0: never). */
  readonly busyPoll: number;

  private constructor(
    socket: Duplex,
    receiver: Receiver,
    decoder: ServerStreamDecoder,
    info: ExportInfo,
    uri: string,
    maxInFlight: number,
    sendBuffer: number | undefined,
    zc: ZeroCopyOps | undefined,
    busyPoll: number,
  ) {
    this.#socket = socket;
    this.sendBuffer = sendBuffer;
    this.#tls = (socket as { encrypted?: unknown }).encrypted === true;
    const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    const plain = !this.#tls && socket instanceof Socket && typeof fd === 'number' && fd >= 0;
    this.#zc = plain ? zc : undefined;
    this.#socketFd = plain ? (fd as number) : undefined;
    this.#decoder = decoder;
    this.info = info;
    this.uri = uri;
    this.#maxInFlight = maxInFlight;
    this.busyPoll = busyPoll;
    this.#extended = info.extended;
    this.#headerSize = requestHeaderSize(info.extended);
    const targets: ReplyTargets = {
      simpleTarget: (cookie, error) => {
        const p = this.#get(cookie);
        return p.command === Cmd.READ && error === 0 ? p.into : undefined;
      },
      dataTarget: (cookie, offset, length) => {
        const p = this.#get(cookie);
        return p.into!.subarray(...this.#claim(p, cookie, offset, length));
      },
    };
    decoder.enterTransmission(info.extended, targets);
    receiver.deliver = (chunk, borrowed) => this.#onData(chunk, borrowed);
    receiver.direct = () => (this.#dead ? undefined : decoder.directTarget());
    receiver.filled = (n) => this.#onDirect(n);
    // Reply header, plus a data chunk's 8-byte offset field (structured, extended); and the rest of
    // a block status or error chunk already begun, which would otherwise come in header-sized reads.
    const head = info.extended ? EXTENDED_REPLY_SIZE + 8 : info.structured ? STRUCTURED_REPLY_SIZE + 8 : SIMPLE_REPLY_SIZE;
    receiver.lookahead = () => (this.#reads > 0 ? head + decoder.payloadDue() : 0);
    socket.on('data', (chunk: Uint8Array) => this.#onData(chunk, false));
    socket.on('error', (err) => this.#die(connectionLost(uri, err)));
    socket.on('close', () => this.#die(connectionLost(uri)));
  }

  /** Connects, negotiates and enters transmission; the socket is destroyed on any failure. */
  static async open(target: NbdTarget, opts: HandshakeOptions = {}): Promise<NbdConnection> {
    const uri = formatNbdUri(target);
    const plain = !opts.tls && !target.tls;
    const busyPoll = busyPollFor(opts.busyPoll, plain && target.kind === 'unix');
    const hs = await Handshake.run(target, opts, async (h) => h.go(target.exportName, opts));
    const zc = plain ? await loadZeroCopy() : undefined;
    return new NbdConnection(
      hs.socket,
      hs.receiver,
      hs.decoder,
      hs.result,
      uri,
      opts.maxInFlight ?? DEFAULT_CLIENT_IN_FLIGHT,
      hs.sendBuffer,
      zc,
      busyPoll,
    );
  }

  get closed(): boolean {
    return this.#dead !== undefined;
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  /** WRITEs whose payload went from files with sendfile (`writeSpans`). */
  get zeroCopyWrites(): number {
    return this.#zeroCopyWrites;
  }

  onDeath(f: (err: VdError) => void): void {
    this.#onDeath.push(f);
  }

  read(offset: number, into: Uint8Array, flags = 0): Promise<void> {
    return this.#request(Cmd.READ, flags, offset, into.length, into, undefined) as Promise<void>;
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    return this.#request(
      Cmd.WRITE,
      flags | (this.#extended ? CmdFlag.PAYLOAD_LEN : 0),
      offset,
      data.length,
      undefined,
      data,
    ) as Promise<void>;
  }

  /**
   * A WRITE whose payload goes from local-file spans to the socket with sendfile, on libuv's pool:
   * no copy through memory (on unix sockets none at all: the kernel passes the pages on). The
   * spans' descriptors are dup'd before this returns, so the caller may close its own. Resolves
   * false at once, having sent nothing, over TLS or without the addon.
   */
  writeSpans(offset: number, spans: readonly FileSpan[], flags = 0): Promise<boolean> {
    const zc = this.#zc;
    let length = 0;
    for (const span of spans) length += span.length;
    if (!zc || this.#dead || length === 0 || length > 0xffffffff) return Promise.resolve(false);
    sendSlots ??= new SendSlots(Math.min(2, defaultZeroCopySends()));
    if (this.#spanWrites === 0 && !sendSlots.tryAcquire()) return Promise.resolve(false);
    this.#spanWrites++;
    const owned: OwnedSpan[] = [];
    try {
      for (const span of spans) owned.push({ fd: zc.dup(span.fd), position: span.position, length: span.length });
    } catch (err) {
      this.#spanWritesDone(owned);
      debug('nbd client: cannot dup a file descriptor (%s); the WRITE is copied', (err as Error).message);
      return Promise.resolve(false);
    }
    const payload = this.#extended ? CmdFlag.PAYLOAD_LEN : 0;
    return this.#request(Cmd.WRITE, flags | payload, offset, length, undefined, undefined, owned).then(() => true);
  }

  /** Closes a zero-copy WRITE's descriptors; the last one done gives the send slot back. */
  #spanWritesDone(...done: readonly OwnedSpan[][]): void {
    for (const spans of done) this.#release(spans);
    this.#spanWrites -= done.length;
    if (this.#spanWrites === 0 && done.length > 0) sendSlots!.release();
  }

  flush(): Promise<void> {
    return this.#request(Cmd.FLUSH, 0, 0, 0, undefined, undefined) as Promise<void>;
  }

  trim(offset: number, length: number, flags = 0): Promise<void> {
    return this.#request(Cmd.TRIM, flags, offset, length, undefined, undefined) as Promise<void>;
  }

  zero(offset: number, length: number, flags = 0): Promise<void> {
    return this.#request(Cmd.WRITE_ZEROES, flags, offset, length, undefined, undefined) as Promise<void>;
  }

  cache(offset: number, length: number): Promise<void> {
    return this.#request(Cmd.CACHE, 0, offset, length, undefined, undefined) as Promise<void>;
  }

  /** Block status for every selected context, by context name. */
  blockStatus(offset: number, length: number, flags = 0): Promise<Map<string, BlockDescriptor[]>> {
    return this.#request(Cmd.BLOCK_STATUS, flags, offset, length, undefined, undefined) as Promise<Map<string, BlockDescriptor[]>>;
  }

  /** Soft disconnect: waits for requests in flight, sends DISC, closes. */
  async disconnect(): Promise<void> {
    if (this.#dead) return;
    while (this.#pending.size > 0)
      await Promise.allSettled([...this.#pending.values()].map((p) => new Promise((r) => this.#onSettle(p, r))));
    if (this.#dead) return;
    const h = Buffer.allocUnsafe(this.#headerSize);
    writeRequestHeader(h, 0, this.#extended, 0, Cmd.DISC, this.#nextCookie(), 0, 0);
    const socket = this.#socket;
    this.#dead = new VdError('ERR_VD_CLOSED', `NBD connection to ${this.uri} is closed`);
    await new Promise<void>((resolve) => {
      socket.end(h, () => resolve());
      setTimeout(resolve, 2000).unref();
    });
    socket.destroy();
    // The addon's dup of the socket (a send still ending closes it itself, seeing the connection dead).
    this.#closeSendFd();
  }

  destroy(err?: Error): void {
    this.#die(err instanceof VdError ? err : new VdError('ERR_VD_CLOSED', `NBD connection to ${this.uri} was destroyed`, { cause: err }));
  }

  #onSettle(p: Pending, done: (v: unknown) => void): void {
    const { resolve, reject } = p;
    p.resolve = (v) => {
      resolve(v);
      done(v);
    };
    p.reject = (e) => {
      reject(e);
      done(e);
    };
  }

  async #request(
    command: number,
    flags: number,
    offset: number,
    length: number,
    into: Uint8Array | undefined,
    data: Uint8Array | undefined,
    spans?: OwnedSpan[],
  ): Promise<unknown> {
    while (this.#pending.size >= this.#maxInFlight && !this.#dead) await new Promise<void>((r) => this.#waiters.push(r));
    if (this.#dead) {
      if (spans) this.#spanWritesDone(spans);
      throw this.#dead;
    }
    const cookie = this.#nextCookie();
    const h = Buffer.allocUnsafe(this.#headerSize);
    writeRequestHeader(h, 0, this.#extended, flags, command, cookie, offset, length);
    if (command === Cmd.READ) this.#reads++;
    return new Promise((resolve, reject) => {
      this.#pending.set(cookie, {
        command,
        offset,
        length,
        into,
        covered: 0,
        ranges: undefined,
        error: undefined,
        status: command === Cmd.BLOCK_STATUS ? new Map() : undefined,
        resolve,
        reject,
      });
      if (spans) {
        this.#out.push({ header: h, spans });
        this.#flushOut();
      } else this.#send(h, data);
    });
  }

  #nextCookie(): number {
    do {
      this.#cookie = this.#cookie >= COOKIE_LIMIT ? 1 : this.#cookie + 1;
    } while (this.#pending.has(this.#cookie));
    return this.#cookie;
  }

  /**
   * Header and payload go out together, and requests issued in one turn of the event loop leave
   * together, after the replies that turn read: one writev (over TLS, one record of headers, see
   * #tlsWrite). Each reply's caller issues its next request in a callback of its own; sent at
   * once, every request would be a syscall that wakes the server's reader again: with 4-64 KiB
   * requests that cost 20-40% more client CPU and a slower read.
   */
  #send(header: Uint8Array, data: Uint8Array | undefined): void {
    if (this.#tls) {
      this.#tlsOut.push(header);
      if (data) this.#tlsOut.push(data);
      if (!this.#tlsWriting && !this.#tlsDue) {
        this.#tlsDue = true;
        setImmediate(() => {
          this.#tlsDue = false;
          if (!this.#tlsWriting) this.#tlsWrite();
        });
      }
      return;
    }
    if (this.#addonOwns || this.#out.length > 0) {
      this.#out.push({ header, data });
      return;
    }
    this.#nodeWrite(header, data);
  }

  #nodeWrite(header: Uint8Array, data: Uint8Array | undefined): void {
    const s = this.#socket;
    if (!this.#corked) {
      this.#corked = true;
      s.cork();
      setImmediate(() => {
        this.#corked = false;
        s.uncork();
      });
    }
    this.#nodeWrites++;
    s.write(header, this.#written);
    if (data) {
      this.#nodeWrites++;
      s.write(data, this.#written);
    }
  }

  readonly #written = (): void => {
    this.#nodeWrites--;
    if (this.#nodeWrites === 0 && this.#out.length > 0) this.#flushOut();
  };

  /** Hands queued output on in order; a zero-copy send starts once node has written everything before it. */
  #flushOut(): void {
    while (!this.#addonOwns && this.#out.length > 0) {
      if (this.#dead) {
        this.#dropOut();
        return;
      }
      const next = this.#out[0]!;
      if (!next.spans) {
        this.#out.shift();
        this.#nodeWrite(next.header, next.data);
        continue;
      }
      if (this.#nodeWrites > 0) return; // the last write's callback flushes again
      if (this.#socket.writableLength > 0) {
        setImmediate(() => this.#flushOut());
        return;
      }
      this.#startSends();
    }
  }

  /** The socket is the addon's now: the zero-copy WRITEs at the head of the queue go in one job. */
  #startSends(): void {
    const zc = this.#zc!;
    const batch: OwnedSpan[][] = [];
    const pieces: { header: Uint8Array | null; fileFd: number; position: number; length: number }[] = [];
    let bytes = 0;
    while (batch.length < SEND_BATCH_WRITES && bytes < SEND_BATCH_BYTES && this.#out[0]?.spans) {
      const { header, spans } = this.#out.shift()!;
      batch.push(spans!);
      spans!.forEach((span, i) => {
        pieces.push({ header: i === 0 ? header : null, fileFd: span.fd, position: span.position, length: span.length });
        bytes += span.length;
      });
    }
    this.#addonOwns = true;
    const abort = new AbortController();
    this.#sendAbort = abort;
    (async () => {
      this.#sendFd ??= zc.dup(this.#socketFd!);
      for (let at = 0; at < pieces.length; at += SEND_PIECES_MAX) {
        if (abort.signal.aborted) throw abort.signal.reason;
        await zc.sendFiles(this.#sendFd, pieces.slice(at, at + SEND_PIECES_MAX), { signal: abort.signal });
      }
    })().then(
      () => {
        this.#zeroCopyWrites += batch.length;
        this.#endSends(batch);
      },
      (err) => {
        this.#endSends(batch);
        this.#die(connectionLost(this.uri, err, 'sending a WRITE payload failed'));
      },
    );
  }

  #endSends(batch: OwnedSpan[][]): void {
    this.#spanWritesDone(...batch);
    this.#addonOwns = false;
    this.#sendAbort = undefined;
    if (this.#dead) {
      this.#dropOut();
      this.#closeSendFd();
    } else this.#flushOut();
  }

  /** The connection is gone: queued payload descriptors are closed, and the send descriptor once no send uses it. */
  #dropOut(): void {
    const dropped = this.#out.splice(0).flatMap((item) => (item.spans ? [item.spans] : []));
    this.#spanWritesDone(...dropped);
  }

  #closeSendFd(): void {
    if (this.#sendFd === undefined || this.#addonOwns) return;
    const fd = this.#sendFd;
    this.#sendFd = undefined;
    this.#closeFd(fd);
  }

  #release(spans: readonly OwnedSpan[]): void {
    for (const span of spans) this.#closeFd(span.fd);
  }

  #closeFd(fd: number): void {
    try {
      this.#zc!.close(fd);
    } catch (err) {
      debug('nbd client: closing a descriptor: %s', (err as Error).message);
    }
  }

  /**
   * Over TLS one write at a time, each payload a write of its own: node:tls copies a batch of
   * several buffers (a corked writev, or writes queued behind a pending one) into a fresh buffer
   * before encrypting, which would copy every WRITE payload once more. Request headers queued
   * meanwhile go out together, gathered into one small buffer (one TLS record).
   */
  #tlsWrite(): void {
    const q = this.#tlsOut;
    let n = 0;
    let k = 0;
    while (k < q.length && q[k]!.length <= SMALL_WRITE && n + q[k]!.length <= GATHER_LIMIT) n += q[k++]!.length;
    let chunk: Uint8Array | undefined;
    if (k > 1) {
      const gathered = Buffer.allocUnsafe(n);
      let at = 0;
      for (const b of q.splice(0, k)) {
        gathered.set(b, at);
        at += b.length;
      }
      chunk = gathered;
    } else chunk = q.shift();
    if (!chunk) return;
    this.#tlsWriting = true;
    this.#socket.write(chunk, (err) => {
      this.#tlsWriting = false;
      // A failed write ends the connection ('error', 'close'): what is left has nowhere to go.
      if (err || this.#dead) q.length = 0;
      else this.#tlsWrite();
    });
  }

  #get(cookie: number): Pending {
    const p = this.#pending.get(cookie);
    if (!p) throw protocolError(`reply for cookie ${cookie}, which no request in flight has`, { cookie });
    return p;
  }

  /** Checks a READ chunk lies inside its request and does not overlap earlier ones; returns its [start, end) in the buffer. */
  #claim(p: Pending, cookie: number, offset: number, length: number): [number, number] {
    if (p.command !== Cmd.READ || !p.into) throw protocolError(`read data for cookie ${cookie}, which is not a read`, { cookie });
    const start = offset - p.offset;
    if (start < 0 || length <= 0 || start + length > p.length) {
      throw protocolError(`read chunk ${offset}+${length} lies outside its request ${p.offset}+${p.length}`, { cookie });
    }
    if (p.covered === 0 && length === p.length) {
      p.covered = length;
      return [0, length];
    }
    p.ranges ??= [];
    for (let i = 0; i < p.ranges.length; i += 2) {
      if (start < p.ranges[i + 1]! && p.ranges[i]! < start + length)
        throw protocolError(`read chunk ${offset}+${length} overlaps an earlier one`, { cookie });
    }
    p.ranges.push(start, start + length);
    p.covered += length;
    return [start, start + length];
  }

  #onDirect(n: number): void {
    if (this.#dead) return;
    const d = this.#decoder;
    try {
      d.filledDirect(n);
      for (let m = d.next(); m !== undefined; m = d.next()) this.#onReply(m);
      if (this.busyPoll > 0 && this.#reads > 0) keepPolling(this.busyPoll);
    } catch (err) {
      this.#die(err instanceof VdError ? err : protocolError(String(err)));
    }
  }

  #onData(chunk: Uint8Array, borrowed: boolean): void {
    if (this.#dead) return;
    const d = this.#decoder;
    try {
      d.push(chunk);
      for (let m = d.next(); m !== undefined; m = d.next()) this.#onReply(m);
      if (borrowed) d.releaseInput();
      if (this.busyPoll > 0 && this.#reads > 0) keepPolling(this.busyPoll);
    } catch (err) {
      this.#die(err instanceof VdError ? err : protocolError(String(err)));
    }
  }

  #onReply(m: ServerMessage): void {
    switch (m.kind) {
      case 'simple': {
        const p = this.#get(m.cookie);
        if (m.error !== 0) p.error = fromErrno(m.error, commandName(p.command), '', { offset: p.offset, length: p.length });
        else if (p.command === Cmd.READ) p.covered = p.length;
        else if (p.command === Cmd.BLOCK_STATUS) throw protocolError('simple reply to BLOCK_STATUS');
        this.#complete(m.cookie, p);
        return;
      }
      case 'data':
        break;
      case 'hole': {
        const p = this.#get(m.cookie);
        const [a, b] = this.#claim(p, m.cookie, m.offset, m.length);
        p.into!.fill(0, a, b);
        break;
      }
      case 'blockStatus': {
        const p = this.#get(m.cookie);
        const name = this.info.contexts.get(m.contextId);
        if (p.command !== Cmd.BLOCK_STATUS || !name)
          throw protocolError(`block status for context ${m.contextId}, which was not selected`, { cookie: m.cookie });
        if (p.status!.has(name)) throw protocolError(`two block status chunks for ${name}`, { cookie: m.cookie });
        p.status!.set(name, m.extents);
        break;
      }
      case 'error': {
        const p = this.#get(m.cookie);
        p.error ??= fromErrno(m.error, commandName(p.command), m.message, { offset: m.offset ?? p.offset, length: p.length });
        break;
      }
      case 'none':
        this.#get(m.cookie);
        break;
      default:
        throw protocolError(`unexpected ${m.kind} message in transmission`);
    }
    if ((m as NbdReply & { done?: boolean }).done) this.#complete(m.cookie, this.#get(m.cookie));
  }

  #complete(cookie: number, p: Pending): void {
    this.#pending.delete(cookie);
    if (p.command === Cmd.READ) this.#reads--;
    let broken: VdError | undefined;
    if (p.error) p.reject(p.error);
    else if (p.command === Cmd.READ && p.covered !== p.length) {
      broken = protocolError(`read of ${p.length} bytes completed with ${p.covered} bytes of data`, { cookie });
    } else if (p.command === Cmd.BLOCK_STATUS && p.status!.size === 0) {
      broken = protocolError('block status completed without a status chunk', { cookie });
    } else p.resolve(p.status);
    this.#waiters.shift()?.();
    if (broken) {
      p.reject(broken);
      throw broken;
    }
  }

  #die(err: VdError): void {
    if (this.#dead && this.#pending.size === 0) return;
    const first = this.#dead === undefined;
    this.#dead ??= err;
    this.#decoder.fail(err);
    this.#socket.destroy();
    if (first) debug('nbd client: connection to %s closed: %s', this.uri, err.message);
    const reason = err.code === 'ERR_VD_PROTOCOL' ? err : this.#dead;
    for (const p of this.#pending.values()) p.reject(reason);
    this.#pending.clear();
    this.#reads = 0;
    for (const w of this.#waiters.splice(0)) w();
    // A send under way stops within ~100 ms and closes what it holds when it ends.
    this.#sendAbort?.abort(err);
    this.#dropOut();
    this.#closeSendFd();
    if (first) for (const f of this.#onDeath) f(err);
  }
}

function commandName(c: number): string {
  return ['read', 'write', 'disconnect', 'flush', 'trim', 'cache', 'write zeroes', 'block status'][c] ?? `command ${c}`;
}

// ---------------------------------------------------------------------------------------------
// Handshake

/** The option haggling, lock-step: one option out, its replies in, under one timeout. */
class Handshake {
  socket!: Duplex;
  readonly decoder = new ServerStreamDecoder();
  readonly #queue: ServerMessage[] = [];
  #wake: (() => void) | undefined;
  #error: VdError | undefined;
  serverFlags = 0;
  result!: ExportInfo;
  /** What the socket's send buffer was enlarged to, if it was. */
  sendBuffer: number | undefined;
  readonly receiver: Receiver = { deliver: () => {} };
  readonly #plain: boolean;
  /** STARTTLS done: a lost connection from here on is most likely a TLS refusal. */
  #secured = false;

  constructor(
    readonly target: NbdTarget,
    plain: boolean,
  ) {
    this.#plain = plain;
  }

  static async run<T>(target: NbdTarget, opts: HandshakeOptions, body: (h: Handshake) => Promise<T>): Promise<Handshake & { value: T }> {
    const sendBuffer = opts.sendBuffer ?? DEFAULT_SEND_BUFFER;
    checkSendBuffer(sendBuffer, 'sendBuffer');
    const h = new Handshake(target, !(opts.tls || target.tls));
    const uri = formatNbdUri(target);
    const timeout = opts.handshakeTimeout ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = () => h.#fail(new VdError('ERR_VD_ABORTED', `NBD connect to ${uri} aborted`, { cause: opts.signal?.reason }));
    try {
      if (opts.signal?.aborted) throw new VdError('ERR_VD_ABORTED', `NBD connect to ${uri} aborted`);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(
        () =>
          h.#fail(
            new VdError(
              'ERR_VD_TIMEOUT',
              `NBD server ${uri} did not finish the handshake in ${timeout} ms (a single-connection server may be busy with another client)`,
            ),
          ),
        timeout,
      );
      await h.#connect();
      // On the plain socket, so a TLS session over it gets the larger buffer too.
      if (target.kind !== 'tcp' && sendBuffer > 0) h.sendBuffer = sizeSendBuffer(h.socket, sendBuffer, await loadSetSendBuffer());
      await h.#greet();
      if (opts.tls || target.tls) await h.#startTls(opts.tls);
      const value = await body(h);
      h.socket.removeAllListeners('data');
      h.socket.removeAllListeners('error');
      h.socket.removeAllListeners('close');
      return Object.assign(h, { value });
    } catch (err) {
      h.socket?.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  #fail(err: VdError): void {
    this.#error ??= err;
    this.socket?.destroy();
    this.#wake?.();
  }

  /**
   * Reads into one reused buffer, or straight into the caller's when a data chunk is due: the
   * kernel (plain) or node:tls (one copy of each decrypted record) puts read data where it
   * belongs, with no allocation per read.
   */
  #readInto(): ReadInto {
    const scratch = Buffer.allocUnsafe(READ_BUFFER);
    let head = scratch.subarray(0, 0);
    const receiver = this.receiver;
    return {
      buffer: () => {
        const direct = receiver.direct?.();
        if (direct) return direct;
        const n = receiver.lookahead?.() ?? 0;
        if (n === 0 || n >= scratch.length) return scratch;
        // The usual size is kept, so a read costs no allocation.
        if (head.length !== n) head = scratch.subarray(0, n);
        return head;
      },
      callback: (n: number, buf: Uint8Array): boolean => {
        // Any view of scratch (its own memory: 256 KiB is never pooled) holds borrowed bytes.
        if (buf.buffer === scratch.buffer) receiver.deliver(buf.subarray(0, n), true);
        else receiver.filled?.(n);
        return true;
      },
    };
  }

  async #connect(): Promise<void> {
    const t = this.target;
    // TLS takes the socket over after STARTTLS and reads through its own `onread` (see #startTls).
    const onread = this.#plain ? this.#readInto() : undefined;
    const where = t.kind === 'tcp' ? { host: t.host, port: t.port, noDelay: true } : { path: t.path };
    const socket: Socket = netConnect(onread ? { ...where, onread } : where);
    this.#listen(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
      this.#wake = () => reject(this.#error);
    }).catch((err: NodeJS.ErrnoException) => {
      if (err instanceof VdError) throw err;
      const code = err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? 'ERR_VD_NOT_FOUND' : 'ERR_VD_IO';
      throw new VdError(code, `cannot connect to NBD server ${formatNbdUri(t)}: ${err.message}`, {
        cause: err,
        details: { errno: err.code },
      });
    });
    socket.setNoDelay(true);
  }

  #listen(socket: Duplex): void {
    this.socket = socket;
    this.receiver.deliver = (chunk, borrowed) => this.#onChunk(borrowed ? Uint8Array.prototype.slice.call(chunk) : chunk);
    socket.on('data', (chunk: Uint8Array) => this.#onChunk(chunk));
    socket.on('error', (err) => this.#fail(this.#dropped(`NBD handshake with ${formatNbdUri(this.target)} failed: ${err.message}`, err)));
    socket.on('close', () =>
      this.#fail(this.#dropped(`NBD server ${formatNbdUri(this.target)} closed the connection during the handshake`)),
    );
  }

  /**
   * A connection lost during the handshake. Right after a TLS 1.3 handshake the client has
   * finished before the server judged its certificate, so a refusal arrives as a reset here.
   */
  #dropped(message: string, cause?: Error): VdError {
    if (!this.#secured) return new VdError('ERR_VD_IO', message, { cause });
    return new VdError(
      'ERR_VD_TLS',
      `${message}; over TLS this usually means the server refused our client certificate or requires one (client-cert.pem and client-key.pem in tls-certificates=DIR)`,
      { cause, details: { reason: 'handshake' } },
    );
  }

  #onChunk(chunk: Uint8Array): void {
    try {
      this.decoder.push(chunk);
      for (let m = this.decoder.next(); m; m = this.decoder.next()) {
        this.#queue.push(m);
        // Stop at the end of the handshake: what follows belongs to the transmission decoder state.
        if (m.kind === 'exportName' || (m.kind === 'optionReply' && m.option === Opt.GO && m.reply === Rep.ACK)) break;
      }
    } catch (err) {
      this.#fail(err as VdError);
    }
    this.#wake?.();
  }

  async next(): Promise<ServerMessage> {
    for (;;) {
      const m = this.#queue.shift();
      if (m) return m;
      if (this.#error) throw this.#error;
      await new Promise<void>((r) => (this.#wake = r));
    }
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  async #greet(): Promise<void> {
    const g = await this.next();
    if (g.kind !== 'greeting') throw protocolError('expected the greeting');
    if (!(g.flags & HandshakeFlag.FIXED_NEWSTYLE)) throw protocolError('the server does not speak fixed newstyle');
    this.serverFlags = g.flags;
    this.send(encodeClientFlags(HandshakeFlag.FIXED_NEWSTYLE | (g.flags & HandshakeFlag.NO_ZEROES)));
  }

  async #startTls(tls: NbdClientTls | undefined): Promise<void> {
    if (!tls) throw new VdError('ERR_VD_TLS', `${formatNbdUri(this.target)} needs TLS: pass a TLS upgrade (e.g. from @vd/nbdssl)`);
    this.send(encodeOption(Opt.STARTTLS));
    const r = await this.#optionReply(Opt.STARTTLS);
    if (r.reply !== Rep.ACK)
      throw new VdError('ERR_VD_TLS', `the NBD server refused STARTTLS: ${decodeErrorText(r.data) || replyName(r.reply)}`, {
        details: { reason: 'starttls-refused', reply: r.reply },
      });
    // Plaintext queued behind the ACK would be read as if it came over TLS: a downgrade attempt.
    if (this.decoder.buffered > 0 || this.#queue.length > 0)
      throw new VdError('ERR_VD_TLS', 'the NBD server sent plaintext after accepting STARTTLS; refusing it', {
        details: { reason: 'plaintext-after-starttls' },
      });
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('error');
    plain.removeAllListeners('close');
    const secure = await tls.upgrade(plain, this.target, this.#readInto());
    (this as { decoder: ServerStreamDecoder }).decoder = new ServerStreamDecoder();
    this.decoder.skipGreeting();
    this.#secured = true;
    this.#listen(secure);
  }

  async #optionReply(option: number): Promise<{ reply: number; data: Uint8Array }> {
    const m = await this.next();
    if (m.kind !== 'optionReply') throw protocolError(`expected an option reply, got ${m.kind}`);
    if (m.option !== option) throw protocolError(`reply to option ${m.option} while option ${option} is pending`);
    return m;
  }

  /** Sends an option with no data; true when acknowledged, false when refused. */
  async #simple(option: number): Promise<boolean> {
    this.send(encodeOption(option));
    const r = await this.#optionReply(option);
    if (r.reply === Rep.ACK) return true;
    if (r.reply & 0x80000000) return false;
    throw protocolError(`unexpected reply ${r.reply} to option ${option}`);
  }

  async list(): Promise<{ name: string; description: string }[]> {
    this.send(encodeOption(Opt.LIST));
    const out: { name: string; description: string }[] = [];
    for (;;) {
      const r = await this.#optionReply(Opt.LIST);
      if (r.reply === Rep.SERVER) out.push(decodeServerReply(r.data));
      else if (r.reply === Rep.ACK) break;
      else throw new VdError('ERR_VD_REMOTE', `the NBD server refused to list exports: ${decodeErrorText(r.data) || replyName(r.reply)}`);
    }
    return out;
  }

  async abort(): Promise<void> {
    this.send(encodeOption(Opt.ABORT));
    // The server should ACK, but a plain close is fine too.
    await Promise.race([this.next().catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
    this.socket.end();
  }

  async #metaContexts(exportName: string, op: number, queries: readonly string[]): Promise<Map<number, string>> {
    this.send(encodeOption(op, encodeMetaContextRequest(exportName, queries)));
    const out = new Map<number, string>();
    for (;;) {
      const r = await this.#optionReply(op);
      if (r.reply === Rep.META_CONTEXT) {
        const { id, name } = decodeMetaContextReply(r.data);
        if (op === Opt.SET_META_CONTEXT && out.has(id)) throw protocolError(`meta context id ${id} given twice`);
        out.set(op === Opt.LIST_META_CONTEXT ? out.size : id, name);
      } else if (r.reply === Rep.ACK) return out;
      else {
        debug('nbd client: meta context option refused: %s', decodeErrorText(r.data) || replyName(r.reply));
        return new Map();
      }
    }
  }

  async go(exportName: string, opts: HandshakeOptions): Promise<void> {
    encodeString(exportName, 'export name');
    let extended = false;
    let structured = false;
    if (opts.extendedHeaders !== false) extended = await this.#simple(Opt.EXTENDED_HEADERS);
    if (!extended && opts.structuredReplies !== false) structured = await this.#simple(Opt.STRUCTURED_REPLY);
    let contexts = new Map<number, string>();
    const queries = opts.metaContexts ?? [];
    if ((structured || extended) && queries.length > 0) {
      const exact = queries.filter((q) => !q.endsWith(':'));
      const wild = queries.filter((q) => q.endsWith(':'));
      if (wild.length > 0) {
        for (const name of (await this.#metaContexts(exportName, Opt.LIST_META_CONTEXT, wild)).values())
          if (!exact.includes(name)) exact.push(name);
      }
      if (exact.length > 0) contexts = await this.#metaContexts(exportName, Opt.SET_META_CONTEXT, exact);
    }
    this.send(encodeOption(Opt.GO, encodeInfoRequest(exportName, [Info.BLOCK_SIZE, Info.DESCRIPTION])));
    const info: Partial<ExportInfo> = { blockSizeAdvertised: false };
    for (;;) {
      const r = await this.#optionReply(Opt.GO);
      if (r.reply === Rep.INFO) {
        const i = decodeInfoReply(r.data);
        if ('size' in i) {
          info.size = i.size;
          info.flags = i.flags;
        } else if ('minimum' in i) {
          info.minimum = i.minimum;
          info.preferred = i.preferred;
          info.maximum = i.maximum;
          info.blockSizeAdvertised = true;
        } else if ('description' in i) info.description = i.description;
        continue;
      }
      if (r.reply === Rep.ACK) break;
      const text = decodeErrorText(r.data);
      if (r.reply === Rep.ERR_UNSUP && !extended) {
        // A server without GO: fall back to EXPORT_NAME, which fails by closing the connection.
        this.decoder.expectExportName((this.serverFlags & HandshakeFlag.NO_ZEROES) !== 0);
        this.send(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode(exportName)));
        const m = await this.next();
        if (m.kind !== 'exportName') throw protocolError('expected the EXPORT_NAME reply');
        info.size = m.size;
        info.flags = m.flags;
        break;
      }
      throw goError(r.reply, text, exportName, formatNbdUri(this.target));
    }
    if (info.size === undefined || info.flags === undefined) throw protocolError('the server accepted GO without INFO_EXPORT');
    if (!Number.isSafeInteger(info.size)) throw protocolError(`export size ${info.size} is too large`);
    if (!(info.flags & TxFlag.HAS_FLAGS)) throw protocolError('transmission flags lack HAS_FLAGS');
    const minimum = info.minimum ?? 1;
    const maximum = info.maximum ?? 32 << 20;
    const preferred = info.preferred ?? 4096;
    if (!isPow2(minimum) || minimum > 65536 || !isPow2(preferred) || preferred < minimum || maximum < minimum) {
      throw protocolError(`block sizes ${minimum}/${preferred}/${maximum} are not valid`);
    }
    this.result = {
      size: info.size,
      flags: info.flags,
      minimum,
      preferred,
      maximum,
      blockSizeAdvertised: info.blockSizeAdvertised ?? false,
      structured: structured || extended,
      extended,
      contexts,
      ...(info.description ? { description: info.description } : {}),
    };
  }
}

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

const replyNames: Record<number, string> = Object.fromEntries(Object.entries(Rep).map(([k, v]) => [v, k]));

function replyName(r: number): string {
  return replyNames[r] ?? `reply 0x${r.toString(16)}`;
}

function goError(reply: number, text: string, exportName: string, uri: string): VdError {
  const why = text ? `: ${text}` : '';
  const details = { reply: replyName(reply), exportName };
  if (reply === Rep.ERR_UNKNOWN)
    return new VdError('ERR_VD_NOT_FOUND', `NBD server ${uri} has no export ${JSON.stringify(exportName)}${why}`, { details });
  if (reply === Rep.ERR_TLS_REQD)
    return new VdError('ERR_VD_TLS', `NBD server ${uri} requires TLS (use nbds:// with @vd/nbdssl)${why}`, {
      details: { ...details, reason: 'tls-required' },
    });
  if (reply === Rep.ERR_SHUTDOWN) return new VdError('ERR_VD_CLOSED', `NBD server ${uri} is shutting down${why}`, { details });
  if (reply === Rep.ERR_POLICY)
    return new VdError('ERR_VD_PERMISSION', `NBD server ${uri} refused export ${JSON.stringify(exportName)}${why}`, { details });
  return new VdError('ERR_VD_REMOTE', `NBD server ${uri} refused export ${JSON.stringify(exportName)} with ${replyName(reply)}${why}`, {
    details,
  });
}

/** The exports a server lists (NBD_OPT_LIST), then ABORT. */
export async function listExports(target: NbdTarget, opts: HandshakeOptions = {}): Promise<{ name: string; description: string }[]> {
  const hs = await Handshake.run(target, opts, async (h) => {
    const list = await h.list();
    await h.abort();
    return list;
  });
  hs.socket.destroy();
  return hs.value;
}
