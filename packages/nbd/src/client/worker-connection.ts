import type { Worker } from 'node:worker_threads';
import { abortError, debug, VdError } from '@vd/core';
import type * as protocol from '../protocol.js';
import { connectionLost, type HandshakeOptions } from './connection.js';
import type { NbdClientConnection } from './source.js';
import { formatNbdUri, type NbdTarget } from './uri.js';
import { deserializeError, type FromWorker, type ToWorker, type WorkerSetup, type WorkerUpgrade } from './worker-protocol.js';
import { park, takeThread } from './worker-threads.js';

/**
 * An NBD connection run in a worker thread (connection-worker.ts): the socket, the TLS session if
 * any and the NBD reply parsing live there, so with several connections (multi-conn) receiving
 * and decrypting run on several cores instead of all on the caller's thread. Read data comes back
 * in transferred buffers and is copied into the caller's here. A connection closed gracefully
 * leaves its thread idle for the next one (worker-threads.ts).
 */
export class WorkerConnection implements NbdClientConnection {
  readonly worker = true;
  readonly info: NbdClientConnection['info'];
  readonly uri: string;
  readonly #thread: Worker;
  readonly #pending = new Map<number, Pending>();
  /** Woken when no request is in flight any more (disconnect waits for that). */
  readonly #drained: (() => void)[] = [];
  #id = 0;
  #dead: VdError | undefined;
  readonly #listeners: { message: (m: FromWorker) => void; error: (err: Error) => void; exit: () => void };

  private constructor(thread: Worker, info: NbdClientConnection['info'], uri: string) {
    this.#thread = thread;
    this.info = info;
    this.uri = uri;
    this.#listeners = {
      message: (m) => this.#onMessage(m),
      error: (err) => this.#die(connectionLost(uri, err, 'its worker thread failed')),
      exit: () => this.#die(connectionLost(uri, undefined, 'its worker thread ended')),
    };
    thread.on('message', this.#listeners.message).on('error', this.#listeners.error).on('exit', this.#listeners.exit);
  }

  /**
   * Starts (or reuses) a worker that connects, upgrades when `upgrade` is given (TLS), and
   * negotiates. Rejects with the worker's error (its code and details kept: ERR_VD_TLS with the
   * thumbprints, …).
   */
  static open(
    target: NbdTarget,
    hs: HandshakeOptions,
    upgrade?: WorkerUpgrade,
    onPeer?: (peer: unknown, target: NbdTarget) => void,
  ): Promise<WorkerConnection> {
    const uri = formatNbdUri(target);
    const signal = hs.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, `NBD connect to ${uri}`));
    const setup: WorkerSetup = {
      target,
      handshake: {
        handshakeTimeout: hs.handshakeTimeout,
        structuredReplies: hs.structuredReplies,
        extendedHeaders: hs.extendedHeaders,
        metaContexts: hs.metaContexts,
        maxInFlight: hs.maxInFlight,
        sendBuffer: hs.sendBuffer,
        // A worker's loop sleeps between reads (see busy-poll.ts): polling is for the caller's thread.
        busyPoll: 0,
      },
      upgrade,
    };
    let taken: Worker | undefined;
    try {
      taken = takeThread();
    } catch (err) {
      return Promise.reject(
        new VdError('ERR_VD_IO', `NBD connect to ${uri}: cannot start a worker thread: ${(err as Error).message}`, { cause: err }),
      );
    }
    if (!taken) return Promise.reject(new VdError('ERR_VD_NOT_SUPPORTED', 'the NBD connection worker is not built (pnpm build)'));
    const thread = taken;
    thread.postMessage({ t: 'connect', setup } satisfies ToWorker);
    return new Promise<WorkerConnection>((resolve, reject) => {
      const fail = (err: unknown) => {
        done();
        void thread.terminate();
        reject(err);
      };
      const onMessage = (m: FromWorker) => {
        if (m.t === 'peer') {
          // As in this thread, an onPeer that throws refuses the server (and must not escape
          // this listener, where it would be an uncaught exception).
          try {
            onPeer?.(m.peer, target);
          } catch (err) {
            fail(err);
          }
        } else if (m.t === 'fail') fail(deserializeError(m.error));
        else if (m.t === 'open') {
          done();
          resolve(new WorkerConnection(thread, m.info, uri));
        }
      };
      const onError = (err: Error) =>
        fail(new VdError('ERR_VD_IO', `NBD connect to ${uri} failed in its worker thread: ${err.message}`, { cause: err }));
      const onExit = () => fail(new VdError('ERR_VD_IO', `NBD connect to ${uri}: the worker thread ended before the handshake finished`));
      const onAbort = () => fail(abortError(signal, `NBD connect to ${uri}`));
      const done = () => {
        thread.off('message', onMessage);
        thread.off('error', onError);
        thread.off('exit', onExit);
        signal?.removeEventListener('abort', onAbort);
      };
      thread.on('message', onMessage);
      thread.on('error', onError);
      thread.on('exit', onExit);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  get closed(): boolean {
    return this.#dead !== undefined;
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  read(offset: number, into: Uint8Array, flags = 0): Promise<void> {
    return this.#call({ t: 'read', id: 0, offset, length: into.length, flags }, undefined, into) as Promise<void>;
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    // A copy in a buffer of its own, transferred to the worker: the caller keeps `data` (a Buffer's
    // slice() is a view, maybe of a shared pool, so it is copied by hand).
    const copy = new Uint8Array(data.length);
    copy.set(data);
    return this.#call({ t: 'write', id: 0, offset, data: copy.buffer, flags }, [copy.buffer]) as Promise<void>;
  }

  flush(): Promise<void> {
    return this.#call({ t: 'flush', id: 0 }) as Promise<void>;
  }

  trim(offset: number, length: number, flags = 0): Promise<void> {
    return this.#call({ t: 'trim', id: 0, offset, length, flags }) as Promise<void>;
  }

  zero(offset: number, length: number, flags = 0): Promise<void> {
    return this.#call({ t: 'zero', id: 0, offset, length, flags }) as Promise<void>;
  }

  cache(offset: number, length: number): Promise<void> {
    return this.#call({ t: 'cache', id: 0, offset, length }) as Promise<void>;
  }

  blockStatus(offset: number, length: number, flags = 0): Promise<Map<string, protocol.BlockDescriptor[]>> {
    return this.#call({ t: 'blockStatus', id: 0, offset, length, flags }) as Promise<Map<string, protocol.BlockDescriptor[]>>;
  }

  /**
   * Soft disconnect: waits for requests in flight, then the worker sends DISC and closes. Its
   * thread is kept idle for the next connection, or ended if it does not release within 3 s.
   */
  async disconnect(): Promise<void> {
    while (this.#pending.size > 0 && !this.#dead) await new Promise<void>((r) => this.#drained.push(r));
    if (this.#dead) return;
    this.#dead = new VdError('ERR_VD_CLOSED', `NBD connection to ${this.uri} is closed`);
    const thread = this.#thread;
    let settle!: (released: boolean) => void;
    const released = new Promise<boolean>((resolve) => {
      settle = resolve;
    });
    const onMessage = (m: FromWorker) => m.t === 'released' && settle(true);
    const onGone = () => settle(false);
    thread.on('message', onMessage).once('exit', onGone).once('error', onGone);
    thread.postMessage({ t: 'disconnect' } satisfies ToWorker);
    const timer = setTimeout(onGone, 3000);
    const reusable = await released;
    clearTimeout(timer);
    thread.off('message', onMessage).off('exit', onGone).off('error', onGone);
    this.#detach();
    if (reusable) park(thread);
    else await thread.terminate();
  }

  destroy(err?: Error): void {
    this.#die(err instanceof VdError ? err : new VdError('ERR_VD_CLOSED', `NBD connection to ${this.uri} was destroyed`, { cause: err }));
  }

  #call(m: ToWorker & { id: number }, transfer?: ArrayBuffer[], into?: Uint8Array): Promise<unknown> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = ++this.#id;
    m.id = id;
    let resolve!: (v: unknown) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<unknown>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.#pending.set(id, { resolve, reject, into });
    this.#thread.postMessage(m, transfer ?? []);
    return promise;
  }

  #onMessage(m: FromWorker): void {
    if (m.t === 'done') {
      const p = this.#pending.get(m.id);
      if (m.buf) {
        if (p?.into) p.into.set(new Uint8Array(m.buf, 0, p.into.length));
        // Back to the worker's pool, so the next read does not fault in fresh pages.
        if (!this.#dead) this.#thread.postMessage({ t: 'recycle', buf: m.buf } satisfies ToWorker, [m.buf]);
      }
      if (!p) return;
      this.#settled(m.id);
      p.resolve(m.value);
    } else if (m.t === 'err') {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#settled(m.id);
      p.reject(deserializeError(m.error));
    } else if (m.t === 'dead') this.#die(deserializeError(m.error));
  }

  #die(err: VdError): void {
    // Once dead (or disconnecting) nothing is pending: #call refuses new requests.
    if (this.#dead) return;
    this.#dead = err;
    debug('nbd client: worker connection to %s closed: %s', this.uri, err.message);
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#wakeDrained();
    // Listeners stay: the thread's exit after terminate finds this connection already dead.
    void this.#thread.terminate();
  }

  #detach(): void {
    const l = this.#listeners;
    this.#thread.off('message', l.message).off('error', l.error).off('exit', l.exit);
  }

  #settled(id: number): void {
    this.#pending.delete(id);
    if (this.#pending.size === 0) this.#wakeDrained();
  }

  #wakeDrained(): void {
    for (const w of this.#drained.splice(0)) w();
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  into: Uint8Array | undefined;
}

/**
 * `NbdClientOptions.connectExtra` that runs each connection in its own worker thread, upgraded by
 * `upgrade` (TLS) when given; functions and the signal stay in this thread (`onPeer` is called
 * from here).
 */
export function workerConnector(
  upgrade?: WorkerUpgrade,
  onPeer?: (peer: unknown, target: NbdTarget) => void,
): (target: NbdTarget, hs: HandshakeOptions) => Promise<NbdClientConnection> {
  return (target, hs) => WorkerConnection.open(target, hs, upgrade, onPeer);
}
