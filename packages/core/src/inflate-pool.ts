import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

/**
 * A small pool of worker threads that inflate batches of zlib streams (compressed VMDK grains).
 * One message per batch: the compressed bytes are transferred, not copied, and the output comes
 * back in a transferred buffer that is reused for later batches. Workers start on the first batch
 * (batches that come before one is ready are inflated by the caller), hold the process open only
 * while they have work, and stop after 5 s idle or 1 s after the last user releases the pool.
 * Why workers and batches: inline `inflateSync` of a 32 MiB request blocks the event loop ~50 ms
 * and uses one core; one async zlib call per 64 KiB grain costs more CPU than the inflate.
 */

/** The worker: plain CommonJS evaluated from a string, so it runs the same from `src` and `dist`. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { inflateSync } = require('node:zlib');
parentPort.on('message', (job) => {
  const src = new Uint8Array(job.src);
  const out = new Uint8Array(job.out);
  const n = job.spans.length / 2;
  const lengths = new Uint32Array(n);
  let bad = -1;
  let message = '';
  let code = '';
  for (let i = 0; i < n; i++) {
    try {
      const grain = inflateSync(src.subarray(job.spans[2 * i], job.spans[2 * i] + job.spans[2 * i + 1]), {
        maxOutputLength: job.grainBytes,
        chunkSize: Math.max(job.grainBytes, 64),
      });
      out.set(grain, i * job.grainBytes);
      lengths[i] = grain.length;
    } catch (err) {
      bad = i;
      message = String(err && err.message);
      code = String(err && err.code);
      break;
    }
  }
  parentPort.postMessage({ id: job.id, out: job.out, src: job.src, lengths, bad, message, code }, [job.out, job.src]);
});
`;

export interface InflateBatch {
  /** The compressed bytes, from `sourceBuffer` or in an ArrayBuffer of their own: it is transferred to a worker (detached here). */
  src: Uint8Array;
  /** Start (relative to `src`) and length of each zlib stream, in pairs. */
  spans: Uint32Array;
  /** Most bytes one stream may inflate to; each stream's output starts at `i * grainBytes`. */
  grainBytes: number;
}

export interface InflateResult {
  /** Stream i's output at `i * grainBytes`, `lengths[i]` long; bytes after that are stale. */
  out: Uint8Array;
  lengths: Uint32Array;
  /** The first stream that failed (streams after it were not inflated), or -1. */
  failed: number;
  /** Why it failed (zlib's error, or maxOutputLength exceeded). */
  error?: Error;
  /** Gives `out` back for reuse; call once its bytes are copied out. */
  release(): void;
}

/** The batch was not inflated because its worker died; its `src` is gone, so read it again. */
export class InflateLost extends Error {}

interface Job {
  id: number;
  batch: InflateBatch;
  resolve: (r: InflateResult) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  busy: Map<number, Job>;
  /** The worker has started (until then, batches are inflated by the caller). */
  online: boolean;
}

const IDLE_MS = 5000;
/** Batches in flight per worker: one being inflated and one queued, so no worker waits for a message. */
const DEPTH = 2;
/** Buffers of each kind (output, source) kept for reuse: enough for the batches in flight, few enough to bound memory (≤ ~4 MiB each). */
const SPARE_BUFFERS = 6;

export interface InflatePoolOptions {
  /** Worker threads; 0 inflates inline. Default: `VD_INFLATE_THREADS`, else the cores less one, 1 to 4. */
  threads?: number;
  /** Requests whose compressed grains inflate to fewer bytes than this stay inline (the message round trip costs more). */
  minBatchBytes?: number;
  /** Most output bytes in one batch. */
  maxBatchBytes?: number;
  /** How long workers outlive the last user (default 1 s). */
  closeGraceMs?: number;
}

/** One core is left to the thread that reads, copies and writes (on 2 cores a second worker only added CPU time). */
function defaultThreads(): number {
  const env = process.env.VD_INFLATE_THREADS;
  if (env !== undefined && env !== '' && Number.isSafeInteger(Number(env)) && Number(env) >= 0) return Math.min(Number(env), 64);
  return Math.max(1, Math.min(availableParallelism() - 1, 4));
}

export class InflatePool {
  threads: number;
  minBatchBytes: number;
  maxBatchBytes: number;
  /** How long workers outlive the last user. */
  closeGraceMs: number;
  readonly #slots: Slot[] = [];
  readonly #queue: Job[] = [];
  /** Output and source buffers back from workers, kept for reuse (fresh pages cost a fault each). */
  readonly #spare: ArrayBuffer[] = [];
  readonly #spareSrc: ArrayBuffer[] = [];
  #users = 0;
  #nextId = 1;
  #idle: NodeJS.Timeout | undefined;

  constructor(opts: InflatePoolOptions = {}) {
    this.threads = opts.threads ?? defaultThreads();
    this.minBatchBytes = opts.minBatchBytes ?? 256 * 1024;
    this.maxBatchBytes = opts.maxBatchBytes ?? 2 * 1024 * 1024;
    this.closeGraceMs = opts.closeGraceMs ?? 1000;
  }

  /** A user (an open compressed extent) keeps the pool; the last `release` stops the workers. */
  acquire(): void {
    this.#users++;
    // A user arriving within the last one's grace keeps the warm workers for the full idle time.
    if (this.#users === 1) this.#armIdle();
  }

  release(): void {
    if (this.#users > 0) this.#users--;
    // A short grace, so closing one disk and opening the next (a chain, a VM's disks) keeps a warm
    // worker: a new one costs ~30 ms of CPU to start and more to warm up.
    if (this.#users === 0) this.#armIdle();
  }

  /**
   * (Re)starts the idle timer when the workers have nothing to do: they stop after 5 s, or after
   * the grace when no user holds the pool. The delay follows the users at the time of arming, so
   * `acquire` and `release` re-arm it; the callback checks again when it fires and stops nothing
   * that has work. Unref'd, like idle workers: it never keeps the process alive.
   */
  #armIdle(): void {
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = undefined;
    if (this.#slots.length === 0 || this.pending > 0) return;
    this.#idle = setTimeout(
      () => {
        this.#idle = undefined;
        // Work came in (#pump re-arms when it drains) or the workers are gone already.
        if (this.pending === 0 && this.#slots.length > 0) this.stop();
      },
      this.#users > 0 ? IDLE_MS : this.closeGraceMs,
    );
    this.#idle.unref();
  }

  /** Whether a request whose compressed grains inflate to `bytes` should go to the workers. */
  worthIt(bytes: number): boolean {
    return this.threads > 0 && bytes >= this.minBatchBytes;
  }

  /** Number of live workers (for tests and diagnostics). */
  get liveWorkers(): number {
    return this.#slots.length;
  }

  /** Batches queued or being inflated. */
  get pending(): number {
    return this.#queue.length + this.#slots.reduce((n, s) => n + s.busy.size, 0);
  }

  /** Starts a worker if none runs; resolves once one is ready, false if it could not start. */
  async ready(): Promise<boolean> {
    if (this.#slots.some((s) => s.online)) return true;
    let slot: Slot;
    try {
      slot = this.#slots[0] ?? this.#spawn();
    } catch {
      return false;
    }
    return new Promise((resolve) => {
      slot.worker.once('online', () => resolve(true));
      slot.worker.once('exit', () => resolve(false));
    });
  }

  /**
   * Inflates a batch on a worker, or returns undefined when no worker has started yet (one is
   * started): the caller inflates that batch itself, so a cold pool never delays a read.
   */
  inflate(batch: InflateBatch): Promise<InflateResult> | undefined {
    if (this.#slots.length < Math.max(1, this.threads)) {
      try {
        this.#spawn();
      } catch {
        // Workers are not allowed here (a permission model, an embedder): inflate inline from now on.
        this.threads = 0;
        return undefined;
      }
    }
    if (!this.#slots.some((s) => s.online)) return undefined;
    return new Promise((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, batch, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#slots.length === 0) {
      // No worker left (stopped, or each one died): callers read their bytes again and inflate inline.
      for (const job of this.#queue.splice(0)) job.reject(new InflateLost('inflate pool stopped'));
    }
    while (this.#queue.length > 0) {
      const slot = this.#slots.reduce<Slot | undefined>((a, s) => (s.online && (!a || s.busy.size < a.busy.size) ? s : a), undefined);
      if (!slot || slot.busy.size >= DEPTH) break;
      const job = this.#queue.shift()!;
      const need = job.batch.grainBytes * (job.batch.spans.length / 2);
      const out = this.#take(this.#spare, need);
      const src = job.batch.src;
      // Transfer the whole backing store (the caller owns it); a view that starts inside one is copied.
      const whole = src.byteOffset === 0 && !(src.buffer instanceof SharedArrayBuffer);
      const srcBuf = whole ? src.buffer : src.slice().buffer;
      if (slot.busy.size === 0) slot.worker.ref();
      slot.busy.set(job.id, job);
      slot.worker.postMessage({ id: job.id, src: srcBuf, spans: job.batch.spans, grainBytes: job.batch.grainBytes, out }, [
        srcBuf as ArrayBuffer,
        out,
      ]);
    }
    this.#armIdle();
  }

  /**
   * A buffer to read a batch's compressed bytes into (its contents are not zeroed): one that came
   * back from a worker when one fits, so batch after batch reuses the same pages.
   */
  sourceBuffer(bytes: number): Uint8Array {
    return new Uint8Array(this.#take(this.#spareSrc, bytes), 0, bytes);
  }

  /** A kept buffer of at least `bytes` from `list`, else a new one with room to grow (up to a batch). */
  #take(list: ArrayBuffer[], bytes: number): ArrayBuffer {
    return takeFrom(list, bytes) ?? new ArrayBuffer(Math.max(bytes, Math.min(this.maxBatchBytes, bytes * 2)));
  }

  /** Keeps a buffer for reuse; huge ones (grains of several MiB) are left to the GC, so memory stays bounded. */
  #keep(list: ArrayBuffer[], buf: ArrayBuffer): void {
    if (this.#slots.length > 0 && list.length < SPARE_BUFFERS && buf.byteLength <= 2 * this.maxBatchBytes + 65536) list.push(buf);
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, name: 'vd-inflate' });
    const slot: Slot = { worker, busy: new Map(), online: false };
    worker.unref();
    worker.on('online', () => {
      slot.online = true;
      this.#pump();
    });
    worker.on(
      'message',
      (m: { id: number; out: ArrayBuffer; src: ArrayBuffer; lengths: Uint32Array; bad: number; message: string; code: string }) => {
        this.#keep(this.#spareSrc, m.src);
        const job = slot.busy.get(m.id);
        if (!job) return;
        slot.busy.delete(m.id);
        if (slot.busy.size === 0) worker.unref();
        let released = false;
        const result: InflateResult = {
          out: new Uint8Array(m.out),
          lengths: m.lengths,
          failed: m.bad,
          release: () => {
            if (released) return;
            released = true;
            this.#keep(this.#spare, m.out);
          },
        };
        if (m.bad >= 0) result.error = Object.assign(new Error(m.message), { code: m.code });
        job.resolve(result);
        this.#pump();
      },
    );
    const lose = (err: unknown) => {
      const i = this.#slots.indexOf(slot);
      if (i >= 0) this.#slots.splice(i, 1);
      for (const job of slot.busy.values()) job.reject(new InflateLost('inflate worker stopped', { cause: err }));
      slot.busy.clear();
      this.#pump();
    };
    worker.on('error', lose);
    worker.on('exit', (code) => lose(new Error(`exit ${code}`)));
    this.#slots.push(slot);
    return slot;
  }

  /** Stops the workers; batches still running are lost (their callers re-read and inflate inline). */
  stop(): void {
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = undefined;
    this.#spare.length = 0;
    this.#spareSrc.length = 0;
    for (const s of this.#slots.splice(0)) void s.worker.terminate();
    this.#pump();
  }
}

/** A kept buffer of at least `bytes` and not wastefully larger, removed from `list`. */
function takeFrom(list: ArrayBuffer[], bytes: number): ArrayBuffer | undefined {
  const i = list.findIndex((b) => b.byteLength >= bytes && b.byteLength <= bytes * 2 + 65536);
  return i >= 0 ? list.splice(i, 1)[0] : undefined;
}

/** The process-wide pool the VMDK reader uses. */
export const inflatePool = new InflatePool();
