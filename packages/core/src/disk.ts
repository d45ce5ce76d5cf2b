import { onAbort } from './abort-hub.js';
import { effectiveCapabilities } from './capabilities.js';
import { zeroBuffer } from './copy/zeroes.js';
import { channels } from './diagnostics.js';
import { abortError, fromSystemError, throwIfAborted, VdError } from './errors.js';
import { Limiter } from './limiter.js';
import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  type DiskInfo,
  type Extent,
  type FileSpan,
  type IoOptions,
  type WriteOptions,
  type ZeroOptions,
} from './spec.js';

/** How one transport fared in `openDisk`, in the order they were tried. */
export interface SelectionAttempt {
  transport: string;
  outcome: 'selected' | 'skipped' | 'failed';
  reason: string;
  code?: string;
}

export interface DiskOptions {
  readOnly?: boolean | undefined;
  /** Name of the transport that opened the source (`memory` when wrapped directly). */
  transport?: string;
  /** The URI or path it was opened from. */
  location?: string;
  selection?: SelectionAttempt[];
}

export interface ExtentsOptions extends IoOptions {
  offset?: number;
  length?: number;
  context?: string;
}

/** Zero requests carry no payload; split them only so a 32-bit wire length always fits. */
const ZERO_CHUNK = 1 << 30;
/** Emulated zeroes are written in requests of this size (from the shared zero buffer). */
const ZERO_WRITE = 1 << 20;

type Op = 'read' | 'write' | 'flush' | 'zero' | 'trim' | 'extents';

/**
 * The consumer's handle on a disk. It validates every call, enforces and emulates capabilities,
 * splits requests to the source's limits and keeps no more in flight than the source allows, so
 * a source only ever sees legal calls.
 */
export class Disk implements AsyncDisposable {
  readonly size: number;
  readonly capabilities: Readonly<Capabilities>;
  readonly transport: string;
  readonly location: string | undefined;
  /** Every transport `openDisk` tried and why the earlier ones were passed over. */
  readonly selection: readonly SelectionAttempt[];

  readonly #source: BlockSource;
  readonly #limiter: Limiter;
  readonly #inflight = new Set<Promise<unknown>>();
  /** Accepted writes, zeroes and trims whose emulated FUA flush is still to come. */
  readonly #finishing = new Set<Promise<unknown>>();
  #state: 'open' | 'closing' | 'closed' = 'open';
  #closing: Promise<void> | undefined;
  /** Set by destroy(): the source is ended that way, never also closed gracefully. */
  #destroying: Promise<void> | undefined;

  constructor(source: BlockSource, opts: DiskOptions = {}) {
    this.#source = source;
    this.capabilities = Object.freeze(effectiveCapabilities(source, opts));
    this.size = source.size;
    this.transport = opts.transport ?? 'memory';
    this.location = opts.location;
    this.selection = Object.freeze([...(opts.selection ?? [])]);
    this.#limiter = new Limiter(this.capabilities.concurrency.maxInFlight);
    if (channels.open.hasSubscribers) channels.open.publish({ disk: this, location: this.location, transport: this.transport });
  }

  get closed(): boolean {
    return this.#state !== 'open';
  }

  /** Requests accepted and not yet settled (queued or at the source). */
  get pending(): number {
    return this.#inflight.size;
  }

  info(): DiskInfo & { size: number; transport: string } {
    const info = this.#source._info?.() ?? { format: 'raw' };
    return { ...info, size: this.size, transport: this.transport };
  }

  /** The format's key/value metadata (VMDK `ddb.*`); empty where the format keeps none. */
  async metadata(opts: IoOptions = {}): Promise<Record<string, string>> {
    this.#checkOpen('metadata');
    throwIfAborted(opts.signal, 'metadata');
    return (await this.#source._getMetadata?.()) ?? {};
  }

  /** Sets one metadata key (`undefined` removes it), durably. */
  async setMetadata(key: string, value: string | undefined, opts: IoOptions = {}): Promise<void> {
    this.#checkWritable('setMetadata');
    throwIfAborted(opts.signal, 'setMetadata');
    if (typeof key !== 'string' || key.length === 0)
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'setMetadata: key must be a non-empty string');
    if (!this.#source._setMetadata) throw new VdError('ERR_VD_NOT_SUPPORTED', `setMetadata: ${this.info().format} disks keep no metadata`);
    await this.#source._setMetadata(key, value);
  }

  /** Reads into a new buffer. */
  async read(offset: number, length: number, opts: IoOptions = {}): Promise<Uint8Array> {
    this.#checkRange('read', offset, length);
    const into = new Uint8Array(length);
    await this.#readChecked(offset, into, opts);
    return into;
  }

  /** Reads `into.length` bytes into the caller's buffer (the zero-copy path); resolves to it. */
  async readInto(offset: number, into: Uint8Array, opts: IoOptions = {}): Promise<Uint8Array> {
    if (!(into instanceof Uint8Array)) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'read: `into` must be a Uint8Array');
    this.#checkRange('read', offset, into.length);
    await this.#readChecked(offset, into, opts);
    return into;
  }

  /** `data` must not be modified until the promise settles. */
  async write(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    if (!(data instanceof Uint8Array)) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'write: `data` must be a Uint8Array');
    this.#checkWritable('write');
    this.#checkRange('write', offset, data.length);
    const fua = this.#fuaMode(opts.fua);
    const max = this.capabilities.blockSize.maximum;
    const source = this.#source;
    const parts: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += max) {
      const chunk = data.subarray(at, Math.min(at + max, data.length));
      const o = { signal: opts.signal, fua: fua === 'native' };
      parts.push(this.#submit('write', offset + at, chunk.length, opts.signal, () => source._write!(offset + at, chunk, o)));
    }
    await this.#finish(parts, fua === 'emulate', opts.signal);
  }

  /**
   * Zero-copy write: writes at `offset` the bytes that local-file `spans` hold (as
   * `withFileSpans` gives them), without reading them into memory; an NBD target sends them with
   * sendfile. Resolves false, having written nothing, where the disk's source cannot (local and
   * in-memory disks, TLS, a request above `blockSize.maximum`, FUA without native support): write
   * from a buffer instead. Keep the spans valid until the promise settles; a source that sends
   * later takes descriptors of its own when the request starts. `signal` gives up on the request
   * as for `write` (it may still land, as a write may).
   */
  async writeFileSpans(offset: number, spans: readonly FileSpan[], opts: WriteOptions = {}): Promise<boolean> {
    this.#checkWritable('write');
    let length = 0;
    for (const s of spans) {
      if (
        !Number.isSafeInteger(s.fd) ||
        s.fd < 0 ||
        !Number.isSafeInteger(s.position) ||
        s.position < 0 ||
        !Number.isSafeInteger(s.length) ||
        s.length <= 0
      )
        throw new VdError(
          'ERR_VD_INVALID_ARGUMENT',
          'writeFileSpans: each span needs a descriptor, a non-negative position and a positive length',
          {
            details: { span: { ...s } },
          },
        );
      length += s.length;
    }
    this.#checkRange('write', offset, length);
    const source = this.#source;
    const fua = this.#fuaMode(opts.fua);
    if (typeof source._writeFileSpans !== 'function' || length > this.capabilities.blockSize.maximum || fua === 'emulate') return false;
    const o = { signal: opts.signal, fua: fua === 'native' };
    return this.#submit('write', offset, length, opts.signal, () => source._writeFileSpans!(offset, spans, o));
  }

  async flush(opts: IoOptions = {}): Promise<void> {
    this.#checkOpen('flush');
    if (!this.capabilities.flush) {
      throwIfAborted(opts.signal, 'flush');
      return;
    }
    const source = this.#source;
    await this.#submit('flush', 0, 0, opts.signal, () => source._flush!({ signal: opts.signal }));
  }

  /** Makes the range read as zeroes; emulated by writing zeroes where the source cannot. */
  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.#checkWritable('zero');
    this.#checkRange('zero', offset, length);
    const mode = this.capabilities.zero;
    if (mode === 'none') throw new VdError('ERR_VD_NOT_SUPPORTED', `zero: ${this.transport} disk cannot write zeroes`);
    if (opts.fast && !this.capabilities.fastZero) {
      throw new VdError('ERR_VD_NOT_SUPPORTED', 'zero: a fast zero was asked for and this disk cannot zero faster than it writes', {
        details: { fast: true },
      });
    }
    const fua = this.#fuaMode(opts.fua);
    const source = this.#source;
    const parts: Promise<void>[] = [];
    if (mode === 'native') {
      const step = ZERO_CHUNK - (ZERO_CHUNK % this.capabilities.blockSize.minimum);
      for (let at = 0; at < length; at += step) {
        const n = Math.min(step, length - at);
        const o = { signal: opts.signal, fua: fua === 'native', noHole: opts.noHole, fast: opts.fast };
        parts.push(this.#submit('zero', offset + at, n, opts.signal, () => source._zero!(offset + at, n, o)));
      }
    } else {
      // 1 MiB writes, or one minimum block where that is larger (a multiple of it, as every request must be).
      const { minimum, maximum } = this.capabilities.blockSize;
      const step = Math.min(Math.max(ZERO_WRITE, minimum), maximum);
      const zeroes = zeroBuffer(step);
      for (let at = 0; at < length; at += step) {
        const n = Math.min(step, length - at);
        const o = { signal: opts.signal, fua: false };
        parts.push(this.#submit('write', offset + at, n, opts.signal, () => source._write!(offset + at, zeroes.subarray(0, n), o)));
      }
    }
    await this.#finish(parts, fua === 'emulate' || (mode === 'emulate' && opts.fua === true), opts.signal);
  }

  /** Advisory discard: succeeds and does nothing where the source cannot trim. */
  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    this.#checkWritable('trim');
    this.#checkRange('trim', offset, length);
    const mode = this.capabilities.trim;
    if (mode === 'none') throw new VdError('ERR_VD_NOT_SUPPORTED', `trim: ${this.transport} disk cannot trim`);
    if (mode === 'emulate') {
      throwIfAborted(opts.signal, 'trim');
      return;
    }
    const fua = this.#fuaMode(opts.fua);
    const source = this.#source;
    const step = ZERO_CHUNK - (ZERO_CHUNK % this.capabilities.blockSize.minimum);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < length; at += step) {
      const n = Math.min(step, length - at);
      const o = { signal: opts.signal, fua: fua === 'native' };
      parts.push(this.#submit('trim', offset + at, n, opts.signal, () => source._trim!(offset + at, n, o)));
    }
    await this.#finish(parts, fua === 'emulate', opts.signal);
  }

  /**
   * The extents of a range in a context, contiguous, in order, covering it exactly; adjacent
   * extents of one type are merged. `base:allocation` is answered for every disk: as one `data`
   * extent when the source cannot tell.
   */
  async *extents(opts: ExtentsOptions = {}): AsyncGenerator<Extent, void, undefined> {
    const offset = opts.offset ?? 0;
    const length = opts.length ?? this.size - offset;
    const context = opts.context ?? BASE_ALLOCATION;
    this.#checkOpen('extents');
    if (length === 0 && offset <= this.size && Number.isSafeInteger(offset)) return;
    this.#checkRange('extents', offset, length);
    if (!this.capabilities.extents.includes(context)) {
      if (context !== BASE_ALLOCATION) {
        throw new VdError('ERR_VD_NOT_SUPPORTED', `extents: ${this.transport} disk offers no context ${context}`, {
          details: { context, offered: this.capabilities.extents },
        });
      }
      throwIfAborted(opts.signal, 'extents');
      yield { offset, length, type: 'data' };
      return;
    }
    const source = this.#source;
    const end = offset + length;
    let cursor = offset;
    let held: Extent | undefined;
    while (cursor < end) {
      const at = cursor;
      const got = await this.#submit('extents', at, end - at, opts.signal, () =>
        source._extents!(at, end - at, context, { signal: opts.signal }),
      );
      if (!Array.isArray(got) || got.length === 0) throw badExtents(this.transport, at, 'no extent returned');
      for (const e of got) {
        if (cursor >= end) break;
        if (e.offset !== cursor || !Number.isSafeInteger(e.length) || e.length <= 0 || typeof e.type !== 'string') {
          throw badExtents(this.transport, cursor, `extent ${JSON.stringify(e)} does not continue at ${cursor}`);
        }
        const n = Math.min(e.length, end - cursor);
        if (held && held.type === e.type) {
          held.length += n;
        } else {
          if (held) yield held;
          held = { offset: cursor, length: n, type: e.type };
        }
        cursor += n;
      }
    }
    if (held) yield held;
  }

  /**
   * Zero-copy access for consumers that move bytes without reading them (an NBD server's
   * sendfile): runs `fn` with the local-file spans that hold `offset..offset+length`, in order.
   * The range is checked like a read's. Resolves undefined, without calling `fn`, where the
   * disk's source cannot map the range (remote and in-memory disks; compressed or zeroed VMDK
   * grains, holes over no parent): read instead.
   *
   * `fn` runs as a request in flight: `close()` waits for it, and the descriptors stay open (not
   * closed, so their numbers are not reused) until it settles, even after `destroy()`. It is not
   * counted against the source's concurrency limit. Writes racing it behave as a concurrent read
   * would: either bytes may be seen. Use the spans only inside `fn`, and keep `fn` bounded in
   * time: a stalled `fn` holds up `close()`.
   */
  async withFileSpans<T>(
    offset: number,
    length: number,
    fn: (spans: readonly FileSpan[]) => Promise<T>,
    opts: IoOptions = {},
  ): Promise<T | undefined> {
    this.#checkRange('withFileSpans', offset, length);
    throwIfAborted(opts.signal, 'withFileSpans');
    const source = this.#source;
    if (typeof source._withFileSpans !== 'function') return undefined;
    // Observers see it as the read it stands for (op 'read', `zeroCopy: true`).
    const observed = channels.requestStart.hasSubscribers || channels.requestEnd.hasSubscribers;
    const call = !observed
      ? fn
      : async (spans: readonly FileSpan[]) => {
          channels.requestStart.publish({ disk: this, op: 'read', offset, length, zeroCopy: true });
          try {
            const result = await fn(spans);
            channels.requestEnd.publish({ disk: this, op: 'read', offset, length, zeroCopy: true });
            return result;
          } catch (err) {
            channels.requestEnd.publish({ disk: this, op: 'read', offset, length, zeroCopy: true, error: err });
            throw err;
          }
        };
    return track(this.#inflight, source._withFileSpans(offset, length, call, { signal: opts.signal }));
  }

  /** Graceful and idempotent: waits for every accepted request, then closes the source. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#state = 'closing';
    this.#closing = (async () => {
      while (this.#inflight.size > 0 || this.#finishing.size > 0) await Promise.allSettled([...this.#inflight, ...this.#finishing]);
      if (this.#destroying) return this.#destroying;
      try {
        await this.#source._close();
      } catch (err) {
        throw fromSystemError(err, 'close');
      } finally {
        this.#state = 'closed';
        if (channels.close.hasSubscribers) channels.close.publish({ disk: this });
      }
    })();
    return this.#closing;
  }

  /** Abortive and idempotent: fails queued requests and tells the source to drop what it has. */
  destroy(err?: Error): Promise<void> {
    if (this.#state === 'closed') return this.#closing ?? Promise.resolve();
    const reason = err ?? new VdError('ERR_VD_CLOSED', 'disk destroyed');
    this.#state = 'closed';
    this.#limiter.rejectAll(reason);
    const source = this.#source;
    this.#closing = this.#destroying = (async () => {
      try {
        await (source._destroy ? source._destroy(err) : source._close());
      } catch {
        // destroying: the source's own failure adds nothing
      }
      if (channels.close.hasSubscribers) channels.close.publish({ disk: this, error: err });
    })();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #readChecked(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    const max = this.capabilities.blockSize.maximum;
    const source = this.#source;
    const parts: Promise<void>[] = [];
    for (let at = 0; at < into.length; at += max) {
      const chunk = into.subarray(at, Math.min(at + max, into.length));
      const o = { signal: opts.signal };
      parts.push(this.#submit('read', offset + at, chunk.length, opts.signal, () => source._read(offset + at, chunk, o)));
    }
    await settleAll(parts);
  }

  /**
   * Settles a request's parts, then flushes when FUA is emulated. The flush belongs to a request
   * accepted before any close(), so it is issued even while closing, and close() waits for it.
   */
  #finish(parts: Promise<void>[], flush: boolean, signal: AbortSignal | undefined): Promise<void> {
    if (!flush) return settleAll(parts);
    const done = settleAll(parts).then(async () => {
      if (!this.capabilities.flush) return throwIfAborted(signal, 'flush');
      const source = this.#source;
      await this.#submit('flush', 0, 0, signal, () => source._flush!({ signal }), true);
    });
    return track(this.#finishing, done);
  }

  #fuaMode(fua: boolean | undefined): 'none' | 'emulate' | 'native' {
    if (!fua) return 'none';
    const mode = this.capabilities.fua;
    if (mode === 'none') {
      // Without FUA the only durable promise is a flush; fall back to it when the source flushes.
      return this.capabilities.flush ? 'emulate' : 'none';
    }
    return mode;
  }

  /**
   * Queues one legal request behind the concurrency limit and tracks it until it settles, even
   * when the caller's signal gives up on it first (so `close()` still waits for it).
   */
  #submit<T>(
    op: Op,
    offset: number,
    length: number,
    signal: AbortSignal | undefined,
    call: () => Promise<T>,
    accepted = false,
  ): Promise<T> {
    if (!accepted) this.#checkOpen(op);
    const limiter = this.#limiter;
    const task = (async () => {
      await limiter.acquire(signal);
      try {
        throwIfAborted(signal, op);
        if (this.#state === 'closed') throw new VdError('ERR_VD_CLOSED', `${op}: disk is closed`);
        if (channels.requestStart.hasSubscribers) channels.requestStart.publish({ disk: this, op, offset, length });
        try {
          const result = await call();
          if (channels.requestEnd.hasSubscribers) channels.requestEnd.publish({ disk: this, op, offset, length });
          return result;
        } catch (err) {
          if (channels.requestEnd.hasSubscribers) channels.requestEnd.publish({ disk: this, op, offset, length, error: err });
          if (signal?.aborted && !(err instanceof VdError)) throw abortError(signal, op);
          throw fromSystemError(err, `${op} at ${offset}`);
        }
      } finally {
        limiter.release();
      }
    })();
    track(this.#inflight, task);
    return signal ? raceAbort(task, signal, op) : task;
  }

  #checkOpen(op: string): void {
    if (this.#state !== 'open') throw new VdError('ERR_VD_CLOSED', `${op}: disk is ${this.#state === 'closing' ? 'closing' : 'closed'}`);
  }

  #checkWritable(op: string): void {
    this.#checkOpen(op);
    if (this.capabilities.readOnly) throw new VdError('ERR_VD_READ_ONLY', `${op}: disk is read-only`);
  }

  #checkRange(op: string, offset: number, length: number): void {
    this.#checkOpen(op);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${op}: offset ${offset} is not a non-negative safe integer`, { details: { offset } });
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${op}: length ${length} is not a non-negative safe integer`, { details: { length } });
    }
    if (length === 0) throw new VdError('ERR_VD_INVALID_ARGUMENT', `${op}: length is zero`, { details: { offset, length } });
    if (offset + length > this.size) {
      throw new VdError('ERR_VD_OUT_OF_RANGE', `${op}: ${offset}+${length} reaches past the end of the disk (${this.size} bytes)`, {
        details: { offset, length, size: this.size },
      });
    }
    const min = this.capabilities.blockSize.minimum;
    if (min > 1 && (offset % min !== 0 || length % min !== 0)) {
      throw new VdError('ERR_VD_ALIGNMENT', `${op}: ${offset}+${length} is not aligned to ${min} bytes`, {
        details: { offset, length, minimum: min },
      });
    }
  }
}

function badExtents(transport: string, offset: number, why: string): VdError {
  return new VdError('ERR_VD_PROTOCOL', `extents from ${transport} at ${offset}: ${why}`, { details: { offset } });
}

/** Waits for every part, then throws the first failure (no part is left running unobserved). */
/** Keeps `task` in `set` until it settles (close() waits for what the set holds). */
function track<T>(set: Set<Promise<unknown>>, task: Promise<T>): Promise<T> {
  set.add(task);
  const untrack = () => set.delete(task);
  task.then(untrack, untrack);
  return task;
}

async function settleAll(parts: Promise<void>[]): Promise<void> {
  if (parts.length === 1) return parts[0];
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

function raceAbort<T>(task: Promise<T>, signal: AbortSignal, op: string): Promise<T> {
  if (signal.aborted) {
    task.catch(() => {});
    return Promise.reject(abortError(signal, op));
  }
  return new Promise<T>((resolve, reject) => {
    const unsubscribe = onAbort(signal, () => reject(abortError(signal, op)));
    task.then(
      (v) => {
        unsubscribe();
        resolve(v);
      },
      (e) => {
        unsubscribe();
        reject(e);
      },
    );
  });
}
