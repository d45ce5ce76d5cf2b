import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { BASE_ALLOCATION, type BufferPool, type Disk, debug, type FileSpan, isVdError, VdError } from '@vd/core';
import { extentFlags, matchesQuery } from '../contexts.js';
import { toErrno } from '../errno.js';
import {
  type BlockDescriptor,
  ClientStreamDecoder,
  Cmd,
  CmdFlag,
  decodeInfoRequest,
  decodeMetaContextRequest,
  Errno,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeNoneChunk,
  encodeOptionReply,
  encodeServerReply,
  HandshakeFlag,
  Info,
  type NbdRequest,
  Opt,
  protocolError,
  Rep,
  ReplyFlag,
  SIMPLE_REPLY_SIZE,
  TxFlag,
  writeDataChunkHeader,
  writeSimpleReply,
} from '../protocol.js';
import { readInto } from '../read-into.js';
import { type SetSendBuffer, sizeSendBuffer } from '../send-buffer.js';
import type { SendSlots, ZeroCopyOps } from '../sendfile.js';
import type { NbdExport, NbdServerStats, NbdServerTls, ResolvedLimits } from './options.js';

/** What a connection needs from its server. */
export interface ServerContext {
  readonly limits: ResolvedLimits;
  readonly pool: BufferPool;
  readonly tls: NbdServerTls | undefined;
  readonly extendedHeaders: boolean;
  readonly structuredReplies: boolean;
  readonly shuttingDown: boolean;
  /** The sendfile calls, once `@vd/sparse` has loaded (undefined: copy every READ). */
  readonly zeroCopy: ZeroCopyOps | undefined;
  /** SO_SNDBUF from `@vd/sparse`, when loaded and `limits.sendBuffer` asks for a size. */
  readonly setSendBuffer: SetSendBuffer | undefined;
  readonly sendSlots: SendSlots;
  readonly stats: NbdServerStats;
  findExport(name: string): NbdExport | undefined;
  exports(): readonly NbdExport[];
}

const ALLOWED_FLAGS: Record<number, number> = {
  [Cmd.READ]: CmdFlag.FUA | CmdFlag.DF,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.DISC]: 0,
  [Cmd.FLUSH]: CmdFlag.FUA,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.CACHE]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE,
};

/** A READ reply to go out zero-copy: its header, then its file spans. */
interface ZeroCopyReply {
  header: Uint8Array;
  spans: readonly FileSpan[];
  /** Told whether it went out (or the connection ended); false asks the READ to be copied. */
  done: (sent: boolean) => void;
}

/** Output waiting its turn: bytes for node to write, or a reply for the addon to send. */
type Pending = { data: Uint8Array; cb: (() => void) | undefined; send?: undefined } | { send: ZeroCopyReply };

/** A connection's read buffer for requests (WRITE payloads go straight to their own buffers). */
const RECEIVE_SCRATCH = 64 << 10;

/**
 * Zero-copy replies queued back to back leave in one job on the pool (one round trip through the
 * event loop for all of them, not one each), up to these bounds: the job holds a pool thread and
 * the socket, so it stays short enough to be fair to the server's other connections.
 */
const SEND_BATCH_REPLIES = 64;
const SEND_BATCH_BYTES = 32 << 20;
/** The addon's limit of pieces per call. */
const SEND_PIECES_MAX = 1024;

/**
 * Whether a source's spans hold exactly `length` bytes: the reply header already promises that
 * many, so spans short (or long, or malformed) would leave the client reading the next reply as data.
 */
function spansCover(spans: readonly FileSpan[], length: number): boolean {
  let total = 0;
  for (const s of spans) {
    if (!(Number.isSafeInteger(s.fd) && s.fd >= 0 && Number.isSafeInteger(s.position) && s.position >= 0)) return false;
    if (!(Number.isSafeInteger(s.length) && s.length >= 0)) return false;
    total += s.length;
  }
  return total === length;
}

/** The 32-bit descriptor length limit of compact block status, kept aligned. */
const COMPACT_EXTENT_MAX = 0x1_0000_0000 - 65536;

/**
 * One client: the option haggling, then requests served concurrently (up to the in-flight limit)
 * with replies written as they complete. The connection owns its socket and nothing else.
 */
export class ServerConnection {
  #socket: Duplex;
  #decoder: ClientStreamDecoder;
  readonly #ctx: ServerContext;
  #noZeroes = false;
  #structured = false;
  #extended = false;
  #tlsDone = false;
  /** Selected contexts: id → name, for the export they were set on. */
  #contexts: string[] = [];
  /** The export the selected contexts were set for ('' resolves to the default export). */
  #contextExport: NbdExport | undefined;
  #export: NbdExport | undefined;
  #disk: Disk | undefined;
  #readOnly = true;
  #inflight = 0;
  #state: 'handshake' | 'upgrading' | 'transmission' | 'draining' | 'closed' = 'handshake';
  #handshakeTimer: NodeJS.Timeout | undefined;
  /** Armed while a request is half-received in transmission. */
  #frameTimer: NodeJS.Timeout | undefined;
  #corked = false;
  #idle: (() => void) | undefined;
  /**
   * Replies stay whole and ordered while two writers share the socket: node's stream and the
   * addon's sendfile on a pool thread. Everything goes out through this FIFO: a zero-copy send
   * starts only when node has handed all earlier bytes to the kernel (no write callback pending),
   * and node writes nothing while the send runs.
   */
  readonly #out: Pending[] = [];
  /** Node writes whose callback has not come yet (bytes possibly still in node or libuv). */
  #nodeWrites = 0;
  /** A batch of zero-copy sends owns the socket (and uses the dup'd descriptor). */
  #addonOwns = false;
  /** A batch of zero-copy sends starts on the next tick. */
  #sendsDue = false;
  /** A dup of the socket's descriptor for the addon: node closing its own cannot let it reach a reused number. */
  #sendFd: number | undefined;
  /** Zero-copy is off for this connection (TLS, not a socket with a descriptor, dup failed). */
  #zeroCopyOff = false;
  /** Zero-copy READs of this connection between choosing the path and their send's end. */
  #zeroCopyPending = 0;
  readonly #sendAbort = new AbortController();
  readonly closed: Promise<void>;
  #resolveClosed!: () => void;

  constructor(socket: Duplex, ctx: ServerContext) {
    this.#socket = socket;
    this.#ctx = ctx;
    this.#decoder = new ClientStreamDecoder({ maxOptionData: ctx.limits.maxOptionData, maxPayload: ctx.limits.maxPayload });
    this.closed = new Promise((r) => {
      this.#resolveClosed = r;
    });
    (socket as Socket).setNoDelay?.(true);
    // A unix socket gets a larger send buffer (`limits.sendBuffer`), whether its READs go
    // zero-copy, copied, or over TLS: each wakeup of the reader then takes more.
    if (sizeSendBuffer(socket, ctx.limits.sendBuffer, ctx.setSendBuffer) !== undefined) ctx.stats.enlargedSendBuffers++;
    this.#handshakeTimer = setTimeout(() => this.#abort('handshake not finished in time'), ctx.limits.handshakeTimeout);
    this.#handshakeTimer.unref?.();
    this.#attach(socket);
    this.#write(encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
  }

  get inTransmission(): boolean {
    return this.#state === 'transmission';
  }

  /** Graceful: stop taking requests, finish those in flight, then close. */
  async shutdown(): Promise<void> {
    // Draining already (the client sent DISC): its requests in flight finish, then it closes.
    if (this.#state === 'closed' || this.#state === 'draining') return;
    if (this.#state !== 'transmission') {
      this.#abort('server shutting down');
      return;
    }
    // Keep reading (and dropping) what arrives, so a client that goes away is noticed.
    this.#state = 'draining';
    this.#socket.resume();
    if (this.#inflight > 0) await new Promise<void>((r) => (this.#idle = r));
    this.#end();
  }

  destroy(): void {
    this.#abort('connection destroyed');
  }

  #attach(socket: Duplex): void {
    socket.on('data', (chunk: Uint8Array) => this.#received(chunk));
    socket.on('drain', () => this.#pump());
    socket.on('error', (err) => {
      if (this.#state !== 'upgrading') this.#abort(err);
    });
    socket.on('close', () => {
      if (this.#state !== 'upgrading') this.#finish();
    });
  }

  /** Input from the socket: a chunk to decode, or `direct` bytes read straight into the payload due. */
  #received(chunk: Uint8Array | undefined, direct = 0): void {
    if (this.#state === 'closed' || this.#state === 'upgrading' || this.#state === 'draining') return;
    try {
      if (chunk) this.#decoder.push(chunk);
      else this.#decoder.filledDirect(direct);
    } catch (err) {
      this.#abort(err);
      return;
    }
    this.#pump();
    this.#watchFrame();
  }

  /**
   * From transmission on, the socket reads into a scratch buffer of this connection, or straight
   * into the pooled buffer of a WRITE whose payload is arriving: no Buffer per read for the GC
   * (over TLS, per 16 KiB record), and payloads are not queued in pieces and joined. Where
   * `readInto` cannot take effect, 'data' events go on as before.
   */
  #receiveDirect(): void {
    const socket = this.#socket;
    const scratch = Buffer.allocUnsafeSlow(RECEIVE_SCRATCH);
    readInto(socket, {
      buffer: () => (this.#socket === socket ? this.#decoder.directTarget() : undefined) ?? scratch,
      callback: (n, buf) => {
        if (buf.buffer !== scratch.buffer) {
          this.#ctx.stats.directWriteBytes += n;
          this.#received(undefined, n);
          return true;
        }
        this.#received(buf.subarray(0, n));
        // What is left queued points into scratch, which the next read overwrites.
        this.#decoder.releaseInput();
        return true;
      },
    });
  }

  /** Drops a client that leaves part of a request unsent for too long. */
  #watchFrame(): void {
    const partial = this.#state === 'transmission' && this.#decoder.buffered > 0 && this.#inflight < this.#ctx.limits.maxInFlight;
    if (partial && !this.#frameTimer) {
      this.#frameTimer = setTimeout(() => {
        this.#frameTimer = undefined;
        if (this.#state === 'transmission' && this.#decoder.buffered > 0 && this.#inflight < this.#ctx.limits.maxInFlight) {
          this.#abort('a request stayed half-received too long');
        }
      }, this.#ctx.limits.frameTimeout);
      this.#frameTimer.unref?.();
    } else if (!partial && this.#frameTimer) {
      clearTimeout(this.#frameTimer);
      this.#frameTimer = undefined;
    }
  }

  #pump(): void {
    while (this.#state === 'handshake' || this.#state === 'transmission') {
      if (this.#state === 'transmission') {
        if (
          this.#inflight >= this.#ctx.limits.maxInFlight ||
          this.#socket.writableNeedDrain ||
          this.#out.length > this.#ctx.limits.maxInFlight * 2
        ) {
          this.#socket.pause();
          return;
        }
      }
      let msg: ReturnType<ClientStreamDecoder['next']>;
      try {
        msg = this.#decoder.next();
      } catch (err) {
        this.#abort(err);
        return;
      }
      if (!msg) {
        if (this.#socket.isPaused()) this.#socket.resume();
        return;
      }
      if (this.#frameTimer) {
        clearTimeout(this.#frameTimer);
        this.#frameTimer = undefined;
      }
      try {
        if (msg.kind === 'flags') this.#onFlags(msg.flags);
        else if (msg.kind === 'option') this.#onOption(msg.option, msg.data);
        else this.#onRequest(msg);
      } catch (err) {
        this.#abort(err);
        return;
      }
    }
  }

  // ---- handshake

  #onFlags(flags: number): void {
    if (flags & ~(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES))
      throw protocolError(`client sent unknown handshake flags 0x${flags.toString(16)}`);
    if (!(flags & HandshakeFlag.FIXED_NEWSTYLE)) throw protocolError('client does not speak fixed newstyle');
    this.#noZeroes = (flags & HandshakeFlag.NO_ZEROES) !== 0;
  }

  #reply(option: number, reply: number, data?: Uint8Array): void {
    this.#write(encodeOptionReply(option, reply, data));
  }

  #error(option: number, reply: number, message: string): void {
    this.#reply(option, reply, new TextEncoder().encode(message));
  }

  #onOption(option: number, data: Uint8Array): void {
    const ctx = this.#ctx;
    if (ctx.shuttingDown && option !== Opt.ABORT) {
      this.#error(option, Rep.ERR_SHUTDOWN, 'server is shutting down');
      return;
    }
    if (ctx.tls?.required && !this.#tlsDone && option !== Opt.STARTTLS && option !== Opt.ABORT) {
      if (option === Opt.EXPORT_NAME) throw protocolError('EXPORT_NAME before TLS on a TLS-only server');
      this.#error(option, Rep.ERR_TLS_REQD, 'this server requires TLS: send STARTTLS first');
      return;
    }
    switch (option) {
      case Opt.EXPORT_NAME: {
        if (this.#extended) throw protocolError('EXPORT_NAME after extended headers were negotiated');
        const name = new TextDecoder().decode(data);
        const exp = this.#findExport(name);
        if (!exp) throw protocolError(`client asked for unknown export ${JSON.stringify(name)} with EXPORT_NAME`);
        this.#select(exp);
        this.#write(encodeExportNameReply(exp.disk.size, this.#flags(), this.#noZeroes));
        this.#enterTransmission();
        return;
      }
      case Opt.ABORT:
        this.#reply(option, Rep.ACK);
        this.#end();
        return;
      case Opt.LIST:
        if (data.length > 0) {
          this.#error(option, Rep.ERR_INVALID, 'LIST takes no data');
          return;
        }
        for (const e of ctx.exports()) {
          if (ctx.tls?.authorize && !ctx.tls.authorize(e.name, this.#socket)) continue;
          this.#reply(option, Rep.SERVER, encodeServerReply(e.name, e.description ?? ''));
        }
        this.#reply(option, Rep.ACK);
        return;
      case Opt.STARTTLS: {
        const tls = ctx.tls;
        const refused = this.#refused(option, [
          [!tls, Rep.ERR_POLICY, 'this server does not offer TLS'],
          [data.length > 0, Rep.ERR_INVALID, 'STARTTLS takes no data'],
          [this.#tlsDone, Rep.ERR_INVALID, 'TLS is already on'],
        ]);
        if (refused || !tls) return;
        this.#reply(option, Rep.ACK);
        this.#startTls(tls);
        return;
      }
      case Opt.INFO:
      case Opt.GO:
        this.#onInfo(option, data);
        return;
      case Opt.STRUCTURED_REPLY: {
        const refused = this.#refused(option, [
          [!ctx.structuredReplies, Rep.ERR_UNSUP, 'structured replies are off'],
          [data.length > 0, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data'],
          [this.#extended, Rep.ERR_EXT_HEADER_REQD, 'extended headers are already on'],
          [this.#structured, Rep.ERR_INVALID, 'structured replies are already on'],
        ]);
        if (refused) return;
        this.#structured = true;
        this.#reply(option, Rep.ACK);
        return;
      }
      case Opt.EXTENDED_HEADERS: {
        const refused = this.#refused(option, [
          [!ctx.extendedHeaders, Rep.ERR_UNSUP, 'extended headers are off'],
          [data.length > 0, Rep.ERR_INVALID, 'EXTENDED_HEADERS takes no data'],
          [this.#extended, Rep.ERR_INVALID, 'extended headers are already on'],
        ]);
        if (refused) return;
        this.#extended = true;
        this.#reply(option, Rep.ACK);
        return;
      }
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.#onMetaContext(option, data);
        return;
      default:
        this.#error(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  #onInfo(option: number, data: Uint8Array): void {
    let req: { name: string; infos: number[] };
    try {
      req = decodeInfoRequest(data);
    } catch (err) {
      this.#error(option, Rep.ERR_INVALID, (err as Error).message);
      return;
    }
    const exp = this.#findExport(req.name);
    if (!exp) {
      this.#error(option, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.name)}`);
      return;
    }
    const disk = exp.disk;
    if (disk.closed) {
      this.#error(option, Rep.ERR_SHUTDOWN, 'the export is closed');
      return;
    }
    this.#reply(option, Rep.INFO, encodeInfoExport(disk.size, this.#flagsFor(exp)));
    const { minimum, maximum } = this.#blockSizes(disk);
    this.#reply(option, Rep.INFO, encodeInfoBlockSize(minimum, this.#preferred(disk), maximum));
    if (req.infos.includes(Info.NAME)) this.#reply(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name));
    if (req.infos.includes(Info.DESCRIPTION) && exp.description)
      this.#reply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, exp.description));
    this.#reply(option, Rep.ACK);
    if (option === Opt.GO) {
      this.#select(exp);
      this.#enterTransmission();
    }
  }

  #onMetaContext(option: number, data: Uint8Array): void {
    const set = option === Opt.SET_META_CONTEXT;
    if (set) this.#contexts = [];
    if (!this.#structured && !this.#extended) {
      this.#error(option, Rep.ERR_INVALID, 'negotiate structured replies first');
      return;
    }
    let req: { name: string; queries: string[] };
    try {
      req = decodeMetaContextRequest(data);
    } catch (err) {
      this.#error(option, Rep.ERR_INVALID, (err as Error).message);
      return;
    }
    const exp = this.#findExport(req.name);
    if (!exp) {
      this.#error(option, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.name)}`);
      return;
    }
    const offered = offeredContexts(exp.disk);
    const picked: string[] = [];
    if (req.queries.length === 0) {
      if (!set) picked.push(...offered);
    } else {
      for (const q of req.queries) {
        for (const name of offered) if (matchesQuery(q, name, !set) && !picked.includes(name)) picked.push(name);
      }
    }
    if (set) {
      this.#contexts = picked;
      this.#contextExport = exp;
    }
    for (let i = 0; i < picked.length; i++) this.#reply(option, Rep.META_CONTEXT, encodeMetaContextReply(set ? i + 1 : 0, picked[i]!));
    this.#reply(option, Rep.ACK);
  }

  /** Answers the first of `refusals` whose condition holds, in order; whether one did. */
  #refused(option: number, refusals: readonly (readonly [boolean, number, string])[]): boolean {
    const hit = refusals.find(([applies]) => applies);
    if (hit) this.#error(option, hit[1], hit[2]);
    return hit !== undefined;
  }

  /** The export by name, if this client may use it (TLS per-export authorization). */
  #findExport(name: string): NbdExport | undefined {
    const exp = this.#ctx.findExport(name);
    if (exp && this.#ctx.tls?.authorize && !this.#ctx.tls.authorize(exp.name, this.#socket)) return undefined;
    return exp;
  }

  #startTls(tls: NbdServerTls): void {
    // Bytes that arrived behind STARTTLS were sent before the handshake: never act on them.
    if (this.#decoder.buffered > 0) throw protocolError('client sent data after STARTTLS before the TLS handshake');
    this.#state = 'upgrading';
    const plain = this.#socket;
    plain.pause();
    plain.removeAllListeners('data');
    tls.upgrade(plain).then(
      (secure) => {
        if (this.#state !== 'upgrading') {
          secure.destroy();
          return;
        }
        // No negotiation state survives STARTTLS (CVE-2021-3716).
        this.#structured = false;
        this.#extended = false;
        this.#contexts = [];
        this.#tlsDone = true;
        this.#socket = secure;
        this.#decoder = new ClientStreamDecoder({ maxOptionData: this.#ctx.limits.maxOptionData, maxPayload: this.#ctx.limits.maxPayload });
        this.#decoder.skipFlags();
        this.#state = 'handshake';
        this.#attach(secure);
      },
      (err) => {
        this.#state = 'handshake';
        this.#abort(err);
      },
    );
  }

  #select(exp: NbdExport): void {
    this.#export = exp;
    this.#disk = exp.disk;
    this.#readOnly = exp.readOnly === true || exp.disk.capabilities.readOnly;
    if (this.#contextExport !== exp) this.#contexts = [];
  }

  #enterTransmission(): void {
    clearTimeout(this.#handshakeTimer);
    const pool = this.#ctx.pool;
    this.#decoder.enterTransmission(this.#extended, (n) => pool.get(n));
    this.#state = 'transmission';
    this.#receiveDirect();
    debug('nbd server: client entered transmission on export %s', this.#export?.name);
  }

  #flags(): number {
    return this.#flagsFor(this.#export!);
  }

  #flagsFor(exp: NbdExport): number {
    const caps = exp.disk.capabilities;
    const ro = exp.readOnly === true || caps.readOnly;
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.CAN_MULTI_CONN | TxFlag.SEND_CACHE;
    if (this.#structured || this.#extended) f |= TxFlag.SEND_DF;
    if (ro) return f | TxFlag.READ_ONLY;
    f |= TxFlag.SEND_FUA;
    if (caps.trim !== 'none') f |= TxFlag.SEND_TRIM;
    if (caps.zero !== 'none') f |= TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
    return f;
  }

  #blockSizes(disk: Disk): { minimum: number; maximum: number } {
    const minimum = disk.capabilities.blockSize.minimum;
    const max = this.#ctx.limits.maxPayload;
    return { minimum, maximum: max - (max % minimum) };
  }

  /**
   * The disk's best transfer size, capped at 1 MiB: clients such as nbdcopy raise their request
   * size to it, and fewer, larger requests cost a JavaScript server less per byte.
   */
  #preferred(disk: Disk): number {
    const { minimum, preferred } = disk.capabilities.blockSize;
    return Math.max(minimum, 512, Math.min(preferred, 1 << 20));
  }

  // ---- transmission

  #onRequest(req: NbdRequest): void {
    if (this.#state !== 'transmission') return;
    if (req.command === Cmd.DISC) {
      this.#state = 'draining';
      this.#socket.resume();
      if (this.#inflight === 0) this.#end();
      else this.#idle = () => this.#end();
      return;
    }
    this.#inflight++;
    this.#serve(req).then(
      () => this.#done(),
      (err) => {
        this.#abort(err);
        this.#done();
      },
    );
  }

  #done(): void {
    this.#inflight--;
    if (this.#inflight === 0 && this.#idle) {
      const idle = this.#idle;
      this.#idle = undefined;
      idle();
      return;
    }
    if (this.#state === 'transmission') this.#pump();
  }

  /** Checks a request against the export; answers an errno, or 0 when it may go to the disk. */
  #check(req: NbdRequest): [number, string] {
    const disk = this.#disk!;
    const { command, flags, offset, length } = req;
    const allowed = ALLOWED_FLAGS[command];
    if (allowed === undefined) return [Errno.EINVAL, `unknown command ${command}`];
    const extra = flags & ~allowed & ~(this.#extended ? CmdFlag.PAYLOAD_LEN : 0);
    if (extra) return [Errno.EINVAL, `flags 0x${extra.toString(16)} are not valid on command ${command}`];
    if (req.payload && command !== Cmd.WRITE) return [Errno.EINVAL, 'this command takes no payload'];
    if (flags & CmdFlag.DF && !(this.#structured || this.#extended)) return [Errno.EINVAL, 'DF needs structured replies'];
    if (command === Cmd.FLUSH) return offset === 0 && length === 0 ? [0, ''] : [Errno.EINVAL, 'FLUSH takes offset and length 0'];
    const writes = command === Cmd.WRITE || command === Cmd.TRIM || command === Cmd.WRITE_ZEROES;
    if (writes && this.#readOnly) return [Errno.EPERM, 'the export is read-only'];
    if (command === Cmd.TRIM && disk.capabilities.trim === 'none') return [Errno.EINVAL, 'the export cannot trim'];
    if (command === Cmd.WRITE_ZEROES && disk.capabilities.zero === 'none') return [Errno.EINVAL, 'the export cannot write zeroes'];
    if (length === 0) return [Errno.EINVAL, 'zero-length request'];
    if (!Number.isSafeInteger(offset + length) || offset + length > disk.size) {
      return [
        command === Cmd.WRITE ? Errno.ENOSPC : Errno.EINVAL,
        `${offset}+${length} is past the end of the export (${disk.size} bytes)`,
      ];
    }
    const min = disk.capabilities.blockSize.minimum;
    if (min > 1 && command !== Cmd.BLOCK_STATUS && (offset % min !== 0 || length % min !== 0))
      return [Errno.EINVAL, `not aligned to ${min} bytes`];
    if ((command === Cmd.READ || command === Cmd.WRITE) && length > this.#ctx.limits.maxPayload) {
      return [Errno.EINVAL, `${length} bytes is more than the maximum payload ${this.#ctx.limits.maxPayload}`];
    }
    if (command === Cmd.BLOCK_STATUS && this.#contexts.length === 0) return [Errno.EINVAL, 'no meta context was negotiated'];
    return [0, ''];
  }

  async #serve(req: NbdRequest): Promise<void> {
    try {
      await this.#execute(req);
    } finally {
      // The decoder took it from the pool (see #enterTransmission); the disk is done with it.
      if (req.payload) this.#ctx.pool.release(req.payload);
    }
  }

  async #execute(req: NbdRequest): Promise<void> {
    const [errno, why] = this.#check(req);
    if (errno !== 0) {
      this.#replyError(req, errno, why);
      return;
    }
    const disk = this.#disk!;
    const { command, flags, offset, length } = req;
    const fua = (flags & CmdFlag.FUA) !== 0;
    try {
      switch (command) {
        case Cmd.READ:
          await this.#read(req);
          return;
        case Cmd.WRITE:
          await disk.write(offset, req.payload!, { fua });
          break;
        case Cmd.FLUSH:
          await disk.flush();
          break;
        case Cmd.TRIM:
          await disk.trim(offset, length, { fua });
          break;
        case Cmd.WRITE_ZEROES:
          await disk.zero(offset, length, { fua, noHole: (flags & CmdFlag.NO_HOLE) !== 0, fast: (flags & CmdFlag.FAST_ZERO) !== 0 });
          break;
        case Cmd.CACHE:
          break;
        case Cmd.BLOCK_STATUS:
          await this.#blockStatus(req);
          return;
      }
      this.#replyOk(req);
    } catch (err) {
      if (isVdError(err, 'ERR_VD_CLOSED') && this.#state === 'closed') return;
      this.#replyError(req, toErrno(err, command === Cmd.WRITE ? 'write' : 'other'), errMessage(err));
    }
  }

  async #read(req: NbdRequest): Promise<void> {
    if (this.#zeroCopyApplies() && (await this.#readZeroCopy(req))) return;
    this.#ctx.stats.copiedReads++;
    const pool = this.#ctx.pool;
    // Over TLS the reply is one buffer, header then data: node:tls copies any batch of several
    // buffers into a fresh one before encrypting, and a lone header would be a record of its own.
    const header = this.#tlsDone ? this.#readHeader(req) : undefined;
    const at = header?.length ?? 0;
    const buf = pool.get(at + req.length);
    try {
      await this.#disk!.readInto(req.offset, buf.subarray(at));
    } catch (err) {
      pool.release(buf);
      throw err;
    }
    if (this.#state === 'closed') {
      pool.release(buf);
      return;
    }
    if (header) buf.set(header);
    else this.#write(this.#readHeader(req));
    this.#write(buf, () => pool.release(buf));
  }

  #readHeader(req: NbdRequest): Uint8Array {
    const header = Buffer.allocUnsafe(40);
    const n =
      this.#structured || this.#extended
        ? writeDataChunkHeader(header, 0, this.#extended, ReplyFlag.DONE, req.cookie, req.offset, req.offset, req.length)
        : writeSimpleReply(header, 0, 0, req.cookie);
    return header.subarray(0, n);
  }

  /**
   * Whether this READ may go zero-copy: the addon loaded, a plain (not TLS) socket with a
   * descriptor, and a send slot free now or held by this connection's earlier sends.
   */
  #zeroCopyApplies(): boolean {
    if (!this.#ctx.zeroCopy || this.#zeroCopyOff || this.#state !== 'transmission') return false;
    // All slots busy: copy, unless this connection already has zero-copy replies under way; then
    // this one queues behind them, and their slot is free again by its turn.
    if (!this.#ctx.sendSlots.available && this.#zeroCopyPending === 0) return false;
    if (this.#sendFd === undefined) {
      const s = this.#socket;
      const fd = (s as { _handle?: { fd?: unknown } })._handle?.fd;
      if (this.#tlsDone || !(s instanceof Socket) || s instanceof TLSSocket || typeof fd !== 'number' || fd < 0) {
        this.#zeroCopyOff = true;
        debug('nbd server: READ replies on this connection are copied (not a plain socket)');
        return false;
      }
    }
    return true;
  }

  /** A dup of the socket's descriptor for the addon, made on the first zero-copy send. */
  #sendDescriptor(zc: ZeroCopyOps): number | undefined {
    if (this.#sendFd !== undefined) return this.#sendFd;
    try {
      this.#sendFd = zc.dup((this.#socket as unknown as { _handle: { fd: number } })._handle.fd);
      debug('nbd server: READ replies on this connection go zero-copy (sendfile)');
    } catch (err) {
      this.#zeroCopyOff = true;
      debug('nbd server: cannot dup the socket (%s); READ replies are copied', errMessage(err));
      return undefined;
    }
    return this.#sendFd;
  }

  /**
   * Header + sendfile from the file that holds the range. False when the disk cannot map the
   * range or every send slot is busy: then the caller copies. A send that fails part-way leaves
   * a half-written reply, so the connection is dropped.
   */
  async #readZeroCopy(req: NbdRequest): Promise<boolean> {
    const header = this.#readHeader(req);
    this.#zeroCopyPending++;
    try {
      const send = (spans: readonly FileSpan[]) => {
        if (spansCover(spans, req.length)) return this.#sendSpans(header, spans);
        debug("nbd server: the disk's file spans for %d+%d do not cover it; the READ is copied", req.offset, req.length);
        return Promise.resolve(false);
      };
      return (await this.#disk!.withFileSpans(req.offset, req.length, send)) === true;
    } finally {
      this.#zeroCopyPending--;
    }
  }

  /**
   * Queues the reply and resolves once it went out (true; also when the connection ended first),
   * or false, having sent nothing, when no send slot was free by its turn.
   */
  #sendSpans(header: Uint8Array, spans: readonly FileSpan[]): Promise<boolean> {
    if (this.#state === 'closed' || this.#socket.destroyed) return Promise.resolve(true);
    return new Promise((done) => {
      this.#out.push({ send: { header, spans, done } });
      this.#flushOut();
    });
  }

  /**
   * The socket is the addon's now: sends the zero-copy replies at the head of the queue as one
   * batch. Without a send slot they go back to their READs to be copied.
   */
  #startSends(): void {
    const zc = this.#ctx.zeroCopy!;
    const batch: ZeroCopyReply[] = [];
    let bytes = 0;
    while (batch.length < SEND_BATCH_REPLIES && bytes < SEND_BATCH_BYTES) {
      const next = this.#out[0];
      if (!next?.send) break;
      this.#out.shift();
      batch.push(next.send);
      for (const span of next.send.spans) bytes += span.length;
    }
    const slots = this.#ctx.sendSlots;
    const fd = this.#sendDescriptor(zc);
    if (fd === undefined || !slots.tryAcquire()) {
      for (const r of batch) r.done(false);
      return;
    }
    this.#addonOwns = true;
    const pieces = batch.flatMap((r) =>
      r.spans.map((span, i) => ({ header: i === 0 ? r.header : null, fileFd: span.fd, position: span.position, length: span.length })),
    );
    const opts = { stallTimeout: this.#ctx.limits.sendStallTimeout, signal: this.#sendAbort.signal };
    (async () => {
      let copied = 0;
      for (let at = 0; at < pieces.length; at += SEND_PIECES_MAX)
        copied += await zc.sendFiles(fd, pieces.slice(at, at + SEND_PIECES_MAX), opts);
      return copied;
    })().then(
      (copied) => {
        const stats = this.#ctx.stats;
        stats.zeroCopyReads += batch.length;
        stats.zeroCopyBatches++;
        // A file sendfile refuses (EINVAL) went through the addon's buffer: whole, just not zero-copy.
        if (copied > 0) debug('nbd server: sendfile refused the file; %d bytes were read and sent through a buffer', copied);
        stats.bufferedSendBytes += copied;
        this.#endSends(slots, batch);
      },
      (err) => {
        this.#abort(err);
        this.#endSends(slots, batch);
      },
    );
  }

  #endSends(slots: SendSlots, batch: readonly ZeroCopyReply[]): void {
    slots.release();
    this.#addonOwns = false;
    for (const r of batch) r.done(true);
    this.#closeSendFd();
    this.#flushOut();
    if (this.#state === 'transmission' && this.#out.length === 0) this.#pump();
  }

  async #blockStatus(req: NbdRequest): Promise<void> {
    const disk = this.#disk!;
    const reqOne = (req.flags & CmdFlag.REQ_ONE) !== 0;
    const maxExtents = reqOne ? 1 : this.#ctx.limits.maxExtents;
    const end = Math.min(disk.size, req.offset + req.length);
    const cap = this.#extended ? Number.MAX_SAFE_INTEGER : COMPACT_EXTENT_MAX;
    const chunks: Uint8Array[] = [];
    for (let id = 1; id <= this.#contexts.length; id++) {
      const context = this.#contexts[id - 1]!;
      const out: BlockDescriptor[] = [];
      for await (const e of disk.extents({ offset: req.offset, length: end - req.offset, context })) {
        const flags = extentFlags(context, e.type);
        let left = e.length;
        while (left > 0 && out.length < maxExtents) {
          const n = Math.min(left, cap);
          const last = out[out.length - 1];
          if (last && last.flags === flags && last.length + n <= cap) last.length += n;
          else out.push({ length: n, flags });
          left -= n;
        }
        if (out.length >= maxExtents) break;
      }
      chunks.push(
        encodeBlockStatusChunk(this.#extended, id === this.#contexts.length ? ReplyFlag.DONE : 0, req.cookie, req.offset, id, out),
      );
    }
    if (this.#state === 'closed') return;
    for (const c of chunks) this.#write(c);
  }

  #replyOk(req: NbdRequest): void {
    if (this.#extended) {
      this.#write(encodeNoneChunk(true, req.cookie, req.offset));
      return;
    }
    const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, 0, 0, req.cookie);
    this.#write(b);
  }

  #replyError(req: NbdRequest, errno: number, message: string): void {
    if (this.#state === 'closed') return;
    debug('nbd server: request %d at %d+%d failed: %s', req.command, req.offset, req.length, message);
    if (this.#structured || this.#extended) {
      this.#write(encodeErrorChunk(this.#extended, ReplyFlag.DONE, req.cookie, req.offset, errno, message));
      return;
    }
    const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, 0, errno, req.cookie);
    this.#write(b);
  }

  // ---- output

  /** Writes are corked until the next tick, so replies finishing together go out in one writev. */
  #write(data: Uint8Array, cb?: () => void): void {
    const s = this.#socket;
    if (this.#state === 'closed' || s.destroyed) {
      cb?.();
      return;
    }
    // Over TLS one write at a time: node would gather writes queued behind a pending one into a
    // batch, which node:tls copies whole into a fresh buffer before encrypting.
    if (this.#addonOwns || this.#out.length > 0 || (this.#tlsDone && this.#nodeWrites > 0)) {
      this.#out.push({ data, cb });
      return;
    }
    this.#nodeWrite(data, cb);
  }

  #nodeWrite(data: Uint8Array, cb: (() => void) | undefined): void {
    const s = this.#socket;
    if (!this.#corked) {
      this.#corked = true;
      s.cork();
      process.nextTick(() => {
        this.#corked = false;
        s.uncork();
      });
    }
    this.#nodeWrites++;
    s.write(data, () => {
      this.#nodeWrites--;
      cb?.();
      if (this.#out.length > 0) this.#flushOut();
    });
  }

  /** Hands queued output on in order; zero-copy sends wait until node has written everything before them. */
  #flushOut(startSends = false): void {
    const queued = this.#out.length;
    this.#drainOut(startSends);
    // #pump stops reading requests while too much output waits here; carry on once it went out.
    if (this.#out.length < queued && this.#state === 'transmission' && this.#socket.isPaused()) process.nextTick(() => this.#pump());
  }

  /** `startSends`: the tick that lets a batch gather has passed; zero-copy replies at the head go now. */
  #drainOut(startSends: boolean): void {
    while (!this.#addonOwns && this.#out.length > 0) {
      if (this.#state === 'closed' || this.#socket.destroyed) {
        this.#dropOut();
        return;
      }
      const next = this.#out[0]!;
      if (next.send) {
        if (this.#nodeWrites > 0) return; // the last write's callback flushes again
        if (this.#socket.writableLength > 0) {
          setImmediate(() => this.#flushOut());
          return;
        }
        if (startSends) {
          this.#startSends();
          continue;
        }
        // Start on the next tick: the READs that arrived with this one queue their replies in the
        // meantime and go in the same batch.
        if (!this.#sendsDue) {
          this.#sendsDue = true;
          process.nextTick(() => {
            this.#sendsDue = false;
            this.#flushOut(true);
          });
        }
        return;
      }
      if (this.#tlsDone && this.#nodeWrites > 0) return; // see #write
      this.#out.shift();
      this.#nodeWrite(next.data, next.cb);
    }
  }

  /** The connection is gone: waiting sends learn it, queued buffers go back. */
  #dropOut(): void {
    for (const p of this.#out.splice(0)) {
      if (p.send) p.send.done(true);
      else p.cb?.();
    }
  }

  /** Closes the dup'd descriptor once the connection is over and no send uses it. */
  #closeSendFd(): void {
    if (this.#sendFd === undefined || this.#addonOwns || this.#state !== 'closed') return;
    const fd = this.#sendFd;
    this.#sendFd = undefined;
    try {
      this.#ctx.zeroCopy?.close(fd);
    } catch (err) {
      debug('nbd server: closing the send descriptor: %s', errMessage(err));
    }
  }

  #end(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    clearTimeout(this.#handshakeTimer);
    const s = this.#socket;
    s.end();
    this.#closeSendFd();
    // A client that never closes its side is dropped after a grace period.
    setTimeout(() => s.destroy(), 5000).unref();
  }

  #abort(err: unknown): void {
    if (this.#state === 'closed') return;
    debug('nbd server: closing connection: %s', errMessage(err));
    this.#state = 'closed';
    clearTimeout(this.#handshakeTimer);
    this.#socket.destroy();
    this.#finish();
  }

  #finish(): void {
    if (this.#state !== 'closed') this.#state = 'closed';
    clearTimeout(this.#handshakeTimer);
    clearTimeout(this.#frameTimer);
    // A send in flight stops within one poll slice; the descriptor closes when it has.
    this.#sendAbort.abort();
    this.#dropOut();
    this.#closeSendFd();
    if (this.#idle) {
      const idle = this.#idle;
      this.#idle = undefined;
      idle();
    }
    this.#resolveClosed();
  }
}

/** Contexts an export offers: what its disk answers, and base:allocation always (the Disk synthesizes it). */
export function offeredContexts(disk: Disk): string[] {
  const list = [...disk.capabilities.extents];
  if (!list.includes(BASE_ALLOCATION)) list.unshift(BASE_ALLOCATION);
  return list;
}

function errMessage(err: unknown): string {
  if (err instanceof VdError || err instanceof Error) return err.message;
  return String(err);
}
