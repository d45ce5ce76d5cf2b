import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  type Disk,
  type DiskInfo,
  type Extent,
  type IoOptions,
  VdError,
  type WriteOptions,
  type ZeroOptions,
} from '@vd/core';
import type { WithFileSpans } from './live-source.js';

/**
 * What clients of a served disk talk to: the tracked disk behind a gate. `pause()` closes the gate
 * (new requests wait) and resolves when every request that passed it has settled, so the tracker
 * and the redo log below see no I/O at all while a snapshot is taken or dropped. The gate has to
 * sit above the tracker: a write held below it would already carry the old change point.
 */
export class GateSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly #disk: Disk;
  #inflight = 0;
  #gate: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  constructor(disk: Disk) {
    this.#disk = disk;
    this.size = disk.size;
    const c = disk.capabilities;
    // The inner Disk emulates what its source lacks, so passing requests on is "native" here.
    this.capabilities = {
      ...c,
      zero: c.zero === 'none' ? 'none' : 'native',
      fua: c.fua === 'none' && !c.flush ? 'none' : 'native',
      extents: [...new Set([BASE_ALLOCATION, ...c.extents])],
    };
    if (c.readOnly) this._write = undefined;
    if (c.zero === 'none') this._zero = undefined;
    if (c.trim === 'none') this._trim = undefined;
  }

  get paused(): boolean {
    return this.#gate !== undefined;
  }

  /** Closes the gate and resolves when nothing is in flight; call the result to open it again. */
  async pause(): Promise<() => void> {
    while (this.#gate) await this.#gate;
    let open!: () => void;
    this.#gate = new Promise<void>((r) => {
      open = r;
    });
    while (this.#inflight > 0) await new Promise<void>((r) => (this.#drained = r));
    let opened = false;
    return () => {
      if (opened) return;
      opened = true;
      this.#gate = undefined;
      open();
    };
  }

  async #pass<T>(op: () => Promise<T>): Promise<T> {
    while (this.#gate) await this.#gate;
    this.#inflight++;
    try {
      return await op();
    } finally {
      if (--this.#inflight === 0 && this.#drained) {
        const d = this.#drained;
        this.#drained = undefined;
        d();
      }
    }
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.#pass(async () => {
      await this.#disk.readInto(offset, into, opts);
    });
  }

  _write? = (offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> => this.#pass(() => this.#disk.write(offset, data, opts));

  _zero? = (offset: number, length: number, opts: ZeroOptions): Promise<void> => this.#pass(() => this.#disk.zero(offset, length, opts));

  _trim? = (offset: number, length: number, opts: WriteOptions): Promise<void> => this.#pass(() => this.#disk.trim(offset, length, opts));

  _flush(opts: IoOptions): Promise<void> {
    return this.#pass(() => this.#disk.flush(opts));
  }

  _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    return this.#pass(async () => {
      const out: Extent[] = [];
      for await (const e of this.#disk.extents({ offset, length, context, signal: opts.signal })) out.push(e);
      return out;
    });
  }

  /** A zero-copy send (sendfile) counts as in flight until it is done: a pause waits for it too. */
  readonly _withFileSpans: WithFileSpans = (offset, length, fn, opts) =>
    this.#pass(() => this.#disk.withFileSpans(offset, length, fn, opts));

  _info(): DiskInfo {
    const { size: _size, transport: _transport, ...info } = this.#disk.info();
    return info;
  }

  async _close(): Promise<void> {
    if (this.#gate) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'close the disk after its snapshot operation');
    await this.#disk.close();
  }
}
