import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  type DiskInfo,
  type Extent,
  type FileSpan,
  type IoOptions,
  readOnlyCapabilities,
  VdError,
  type WriteOptions,
  type ZeroOptions,
} from '@vd/core';
import type { Overlay } from './overlay.js';

const ZEROES = new Uint8Array(1 << 20);
/** Consolidation copies grains with this many in flight. */
const COPY_PARALLEL = 8;
/** Passes over the redo log while writes continue, before the last (paused) one. */
const COPY_PASSES = 8;
/** Stop the concurrent passes once this few grains are left; the paused pass copies them. */
const PAUSED_GRAINS = 64;

/**
 * The block source of a served disk: the base file, or while a snapshot exists, its redo log over
 * the frozen base. The tracker sits on top, so tracking runs unbroken across snapshots, and above
 * it a `Gate`, which is how a snapshot is taken and dropped between two requests.
 *
 * Capabilities are fixed when it is made (the Disk wrapper caches them) and hold in both modes.
 */
export class LiveSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly base: BlockSource;
  #overlay: Overlay | undefined;

  constructor(base: BlockSource, overlay?: Overlay) {
    if (base.capabilities.readOnly || !base._write) throw new VdError('ERR_VD_READ_ONLY', 'a served disk must be writable');
    this.base = base;
    this.size = base.size;
    this.#overlay = overlay;
    const c = base.capabilities;
    this.capabilities = {
      ...c,
      readOnly: false,
      flush: true,
      fua: 'emulate',
      zero: 'native',
      fastZero: false,
      trim: c.trim === 'none' ? 'none' : 'native',
      trimReadsZero: c.trim !== 'none' && c.trimReadsZero,
      extents: [BASE_ALLOCATION],
      multiConn: true,
    };
    if (c.trim === 'none') this._trim = undefined;
  }

  get overlay(): Overlay | undefined {
    return this.#overlay;
  }

  /** Switches writes to `overlay` (or back to the base with undefined). Only while nothing is in flight (the gate above is paused). */
  switchTo(overlay: Overlay | undefined): void {
    this.#overlay = overlay;
  }

  async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    const ov = this.#overlay;
    if (!ov) return this.base._read(offset, into, opts);
    const parts = overlayRuns(ov, offset, offset + into.length).map(({ at, end, inData }) => {
      const view = into.subarray(at - offset, end - offset);
      return inData ? ov.readData(at, view) : this.base._read(at, view, opts);
    });
    await settle(parts);
  }

  /**
   * Zero-copy reads (sendfile): grains in the redo log from its data file (which has the disk's
   * layout), the rest from the base's files. A write landing meanwhile goes to the redo log and
   * leaves the bytes sent as they were, as a read just before it would have.
   */
  readonly _withFileSpans: WithFileSpans = async (offset, length, fn, opts) => {
    if (!this.base._withFileSpans) return undefined;
    const ov = this.#overlay;
    const runs = ov && overlayRuns(ov, offset, offset + length);
    if (!ov || !runs?.some((r) => r.inData)) return this.base._withFileSpans(offset, length, fn, opts);
    return this.base._withFileSpans(
      offset,
      length,
      (below) =>
        ov.withDataDescriptor((fd) =>
          fn(
            runs.flatMap((r) =>
              r.inData ? [{ fd, position: r.at, length: r.end - r.at }] : sliceSpans(below, r.at - offset, r.end - r.at),
            ),
          ),
        ),
      opts,
    );
  };

  _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const ov = this.#overlay;
    if (!ov) return this.base._write!(offset, data, { ...opts, fua: false });
    return ov.write(offset, data, (o, into) => this.base._read(o, into, opts));
  }

  async _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (!this.#overlay && this.base._zero && this.base.capabilities.zero === 'native') {
      return this.base._zero(offset, length, { ...opts, fua: false, fast: false });
    }
    // A redo log holds zeroes as written grains: a zeroed grain must hide the parent's bytes.
    for (let at = offset; at < offset + length; at += ZEROES.length) {
      await this._write(at, ZEROES.subarray(0, Math.min(ZEROES.length, offset + length - at)), opts);
    }
  }

  _trim? = (offset: number, length: number, opts: WriteOptions): Promise<void> => {
    if (!this.#overlay) return this.base._trim!(offset, length, { ...opts, fua: false });
    return this._zero(offset, length, opts);
  };

  async _flush(opts: IoOptions): Promise<void> {
    const ov = this.#overlay;
    if (ov) await ov.flush();
    else if (this.base._flush) await this.base._flush(opts);
  }

  async _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    if (context !== BASE_ALLOCATION) throw new VdError('ERR_VD_NOT_SUPPORTED', `extents context ${context} is not offered`);
    {
      const ov = this.#overlay;
      if (!ov) return this.#baseExtents(offset, length, opts);
      // The first run of grains alike (all in the redo log, or all in the base); the wrapper asks on.
      const end = offset + length;
      const g = Math.floor(offset / ov.grain);
      const inData = ov.map[g] === 1;
      let g2 = g + 1;
      while (g2 * ov.grain < end && (ov.map[g2] === 1) === inData) g2++;
      const runEnd = Math.min(end, g2 * ov.grain);
      if (inData) return [{ offset, length: runEnd - offset, type: 'data' }];
      return this.#baseExtents(offset, runEnd - offset, opts);
    }
  }

  async #baseExtents(offset: number, length: number, opts: IoOptions): Promise<Extent[]> {
    if (!this.base._extents || !this.base.capabilities.extents.includes(BASE_ALLOCATION)) return [{ offset, length, type: 'data' }];
    return this.base._extents(offset, length, BASE_ALLOCATION, opts);
  }

  _info(): DiskInfo {
    const info = this.base._info?.() ?? { format: 'raw' };
    const ov = this.#overlay;
    return ov ? { ...info, redoLog: { grain: ov.grain, allocatedGrains: ov.allocatedGrains() } } : info;
  }

  /**
   * Copies the redo log's grains into the base while writes continue (pass after pass over what
   * was written meanwhile), then pauses, copies the rest, flushes the base and switches back.
   * The base reads the same as the live disk when it resolves; the redo log's files may go.
   *
   * `recorded` runs while paused, once the base holds everything, before any write reaches the
   * base directly: it must make the redo log's retirement durable, or a restart would apply the
   * log again over those writes. When it fails, the redo log stays in use.
   */
  async consolidate(pause: () => Promise<() => void>, opts: IoOptions & { recorded?: () => Promise<void> } = {}): Promise<void> {
    const ov = this.#overlay;
    if (!ov) return;
    ov.dirty.set(ov.map);
    for (let pass = 0; pass < COPY_PASSES; pass++) {
      const left = countDirty(ov);
      if (left <= PAUSED_GRAINS) break;
      await this.#copyDirty(ov, opts);
    }
    const resume = await pause();
    try {
      await this.#copyDirty(ov, opts);
      if (this.base._flush) await this.base._flush(opts);
      await opts.recorded?.();
      this.#overlay = undefined;
    } finally {
      resume();
    }
  }

  async #copyDirty(ov: Overlay, opts: IoOptions): Promise<void> {
    let next = 0;
    const worker = async () => {
      const buf = new Uint8Array(ov.grain);
      for (;;) {
        while (next < ov.grains && ov.dirty[next] !== 1) next++;
        if (next >= ov.grains) return;
        const g = next++;
        // Cleared before the read: a write landing after it sets the flag again and is copied next pass.
        ov.dirty[g] = 0;
        const view = buf.subarray(0, ov.grainLength(g));
        await ov.readData(g * ov.grain, view);
        await this.base._write!(g * ov.grain, view, { signal: opts.signal });
      }
    };
    await settle(Array.from({ length: COPY_PARALLEL }, worker));
  }

  async _close(): Promise<void> {
    try {
      await this.#overlay?.close();
    } finally {
      await this.base._close();
    }
  }
}

function countDirty(ov: Overlay): number {
  let n = 0;
  for (let g = 0; g < ov.grains; g++) n += ov.dirty[g]!;
  return n;
}

/** BlockSource's zero-copy hook, as the sources here pass it on. */
export type WithFileSpans = NonNullable<BlockSource['_withFileSpans']>;

/** `[start, end)` cut where the redo log's map changes: runs wholly in the redo log (`inData`) or wholly not. */
function overlayRuns(ov: Overlay, start: number, end: number): { at: number; end: number; inData: boolean }[] {
  const runs = [];
  for (let at = start; at < end; ) {
    const g = Math.floor(at / ov.grain);
    const inData = ov.map[g] === 1;
    let g2 = g + 1;
    while (g2 * ov.grain < end && (ov.map[g2] === 1) === inData) g2++;
    const runEnd = Math.min(end, g2 * ov.grain);
    runs.push({ at, end: runEnd, inData });
    at = runEnd;
  }
  return runs;
}

/** The part of `spans` (which cover a range in order) from `skip` bytes in, `length` bytes long. */
function sliceSpans(spans: readonly FileSpan[], skip: number, length: number): FileSpan[] {
  const out: FileSpan[] = [];
  let pos = 0;
  for (const s of spans) {
    const from = Math.max(skip, pos);
    const to = Math.min(skip + length, pos + s.length);
    if (from < to) out.push({ fd: s.fd, position: s.position + (from - pos), length: to - from });
    pos += s.length;
    if (pos >= skip + length) break;
  }
  return out;
}

async function settle(parts: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * The frozen base of a snapshot as a read-only source. It shares the live disk's base source
 * (which nothing writes while the snapshot exists) and does not close it.
 */
export class FrozenSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  constructor(
    readonly base: BlockSource,
    readonly extra: { contexts: Record<string, (offset: number, length: number) => Extent[]> } = { contexts: {} },
  ) {
    this.size = base.size;
    const c = base.capabilities;
    this.capabilities = {
      ...readOnlyCapabilities(c),
      extents: [BASE_ALLOCATION, ...Object.keys(extra.contexts)],
      multiConn: true,
    };
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.base._read(offset, into, opts);
  }

  /** The base's files: nothing writes them while the snapshot exists. */
  readonly _withFileSpans: WithFileSpans = async (offset, length, fn, opts) => this.base._withFileSpans?.(offset, length, fn, opts);

  async _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    const ctx = this.extra.contexts[context];
    if (ctx) return ctx(offset, length);
    if (!this.base._extents || !this.base.capabilities.extents.includes(BASE_ALLOCATION)) return [{ offset, length, type: 'data' }];
    return this.base._extents(offset, length, BASE_ALLOCATION, opts);
  }

  _info(): DiskInfo {
    return { ...(this.base._info?.() ?? { format: 'raw' }), snapshot: true };
  }

  async _close(): Promise<void> {}
}
