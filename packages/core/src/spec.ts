/**
 * The vd specification, version 1: what a transport or format implements (a `BlockSource`) and
 * what a transport declares. Members are only ever appended, and new ones are optional, so a
 * plugin built against an older `@vd/core` keeps working.
 *
 * Implementor methods start with `_`: the `Disk` wrapper calls them only with legal arguments
 * (checked range, non-zero length, aligned, within block-size limits, capability present), so a
 * source never validates what the wrapper already has.
 */

/** How a source provides an operation: itself, by the wrapper's emulation, or not at all. */
export type Support = 'none' | 'emulate' | 'native';

export interface BlockSizeLimits {
  /** Offsets and lengths must be multiples of this (1 = byte-addressable). */
  minimum: number;
  /** The size that performs best; the copy engine rounds its chunks to it. */
  preferred: number;
  /** The largest single request; the wrapper splits larger ones. */
  maximum: number;
}

export interface Concurrency {
  /** `serial`: one request at a time. `parallel`: up to `maxInFlight` at once. */
  model: 'serial' | 'parallel';
  maxInFlight: number;
}

/** What a block source can do, declared once when it is opened. */
export interface Capabilities {
  readOnly: boolean;
  /** A flush makes earlier writes durable. `false`: flush is accepted and does nothing. */
  flush: boolean;
  /** Force unit access on write, zero and trim. `emulate`: the wrapper flushes after the request. */
  fua: Support;
  /** Writing zeroes. `emulate`: the wrapper writes zero-filled buffers. */
  zero: Support;
  /** Zero requests may be refused up front when they would be no faster than a write. */
  fastZero: boolean;
  /** Discard. Advisory: trimmed bytes read back as unspecified data unless `trimReadsZero`. */
  trim: Support;
  /** After a trim the range reads as zeroes (a sparse file, a zero-filling device). */
  trimReadsZero: boolean;
  /** Extent contexts `_extents` answers, e.g. `base:allocation`, `qemu:dirty-bitmap:b0`. */
  extents: readonly string[];
  blockSize: BlockSizeLimits;
  concurrency: Concurrency;
  /**
   * Several handles on the same disk see each other's flushed writes (NBD multi-conn). Lets the
   * copy engine open more connections.
   */
  multiConn: boolean;
}

/** The allocation context every disk answers; the wrapper synthesizes it when a source does not. */
export const BASE_ALLOCATION = 'base:allocation';

/**
 * For `base:allocation`: `data` may hold non-zero bytes; `zero` is allocated but reads as zeroes;
 * `hole` is unallocated and reads as zeroes. Other contexts name their own types (`changed`,
 * `unchanged` for change tracking).
 */
export type AllocationType = 'data' | 'zero' | 'hole';
export type ExtentType = AllocationType | 'changed' | 'unchanged' | (string & {});

export interface Extent {
  offset: number;
  length: number;
  type: ExtentType;
}

export interface IoOptions {
  signal?: AbortSignal | undefined;
}

export interface WriteOptions extends IoOptions {
  /** Force unit access: the data is durable when the call resolves. */
  fua?: boolean | undefined;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep the range allocated (NBD_CMD_FLAG_NO_HOLE); default lets the source punch a hole. */
  noHole?: boolean | undefined;
  /** Fail with ERR_VD_NOT_SUPPORTED instead of zeroing slowly (NBD_CMD_FLAG_FAST_ZERO). */
  fast?: boolean | undefined;
}

/** Facts about a disk beyond its size, for `vd info` and `disk.info()`. Formats add their own keys. */
export interface DiskInfo {
  /** Format name: `raw`, `vmdk`, `nbd` (remote, format unknown). */
  format: string;
  /** Sub-format or layout, e.g. `monolithicSparse`. */
  subformat?: string;
  /** Bytes actually allocated in the backing storage, when known. */
  allocatedBytes?: number;
  [key: string]: unknown;
}

/**
 * The implementor's side of a disk. Everything but `_read` and `_close` is optional; the
 * capability manifest must agree with which methods exist.
 */
export interface BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  /** Fill `into` (exactly `into.length` bytes) from `offset`. */
  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void>;
  _write?(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void>;
  _flush?(opts: IoOptions): Promise<void>;
  _zero?(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  _trim?(offset: number, length: number, opts: WriteOptions): Promise<void>;
  /**
   * Extents from `offset`, contiguous and in order, covering at least the first byte of the range
   * and at most the range (the wrapper clips and asks again for the rest).
   */
  _extents?(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]>;
  _info?(): DiskInfo;
  /** Key/value metadata the format keeps (VMDK `ddb.*` keys), VixDiskLib_GetMetadataKeys + ReadMetadata. */
  _getMetadata?(): Promise<Record<string, string>>;
  /** Sets (`undefined` removes) one key, durably (VixDiskLib_WriteMetadata). */
  _setMetadata?(key: string, value: string | undefined): Promise<void>;
  /** Graceful: called once, after every request the wrapper issued has settled. */
  _close(): Promise<void>;
  /** Abortive: drop connections, fail what is in flight. Defaults to `_close`. */
  _destroy?(err?: Error): Promise<void>;
  /**
   * Where the bytes of a range sit in local files, for zero-copy consumers (sendfile): runs `fn`
   * with spans covering the range in order, keeping their descriptors open until it settles.
   * Resolves undefined, without calling `fn`, when the range does not lie in local files as is
   * (compressed or zeroed grains, holes over no parent, remote, in memory).
   */
  _withFileSpans?<T>(
    offset: number,
    length: number,
    fn: (spans: readonly FileSpan[]) => Promise<T>,
    opts: IoOptions,
  ): Promise<T | undefined>;
  /**
   * Zero-copy writes (sendfile): writes at `offset` the bytes `spans` hold, in order, as one
   * request no larger than `blockSize.maximum`. The spans' descriptors may be closed once this
   * returns its promise: a source that sends later dups them before. Resolves true once written, or
   * false, having written nothing, where it cannot (a TLS connection, no native addon): the caller
   * writes from a buffer.
   */
  _writeFileSpans?(offset: number, spans: readonly FileSpan[], opts: WriteOptions): Promise<boolean>;
}

/** The answer of `Transport.probe`: can this transport reach the disk, and if not, why. */
export type ProbeResult = { ok: true } | { ok: false; reason: string };

export interface OpenOptions extends IoOptions {
  readOnly?: boolean | undefined;
  /** Force a format (`raw`, `vmdk`) instead of detecting it from the first bytes. */
  format?: string | undefined;
  /** Format-specific switches, passed to the format driver (e.g. VMDK `ignoreCidMismatch`). */
  formatOptions?: Record<string, unknown> | undefined;
}

/**
 * A way of reaching bytes. Passed explicitly to `openDisk`, tried in order. A transport's own
 * settings (credentials, sockets, certificates) go to its factory, not here.
 */
export interface Transport {
  readonly specificationVersion: 'v1';
  readonly name: string;
  /** URI schemes it handles, without the colon: `file`, `nbd`, `nbd+unix`. */
  readonly schemes: readonly string[];
  /** Cheap check whether `open` can work; must not throw for a location it cannot reach. */
  probe(location: URL, opts: OpenOptions): Promise<ProbeResult>;
  open(location: URL, opts: OpenOptions): Promise<BlockSource>;
}

/**
 * Positional byte storage a format reads and writes through (a local file, a hot-added
 * datastore file, a SAN extent map), so the same format code serves every path.
 */
export interface ByteStore {
  /** A name for messages (a path or URI). */
  readonly name: string;
  readonly readOnly: boolean;
  size(): Promise<number>;
  /** Reads up to `into.length` bytes at `position`; returns how many were read (short at EOF). */
  read(position: number, into: Uint8Array): Promise<number>;
  write(position: number, data: Uint8Array): Promise<void>;
  truncate?(size: number): Promise<void>;
  /** Punch a hole (deallocate) where the platform can; resolves false where it cannot. */
  punchHole?(position: number, length: number): Promise<boolean>;
  /** Allocated and unallocated ranges where the platform can tell (SEEK_DATA/SEEK_HOLE). */
  allocation?(position: number, length: number): Promise<Extent[] | undefined>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Bytes the storage occupies (a file's blocks), where cheaply known; for `DiskInfo.allocatedBytes`. */
  allocatedBytes?(): number | undefined;
  /**
   * Runs `fn` with the store's open descriptor, which stays open (close() waits) until `fn`
   * settles; ERR_VD_CLOSED once close() has begun. Only a store over a local file or device.
   */
  withDescriptor?<T>(fn: (fd: number) => Promise<T>): Promise<T>;
}

/**
 * Opens other files relative to the one being opened (VMDK extents, parents of a redo log), so
 * a format never touches paths itself.
 */
export interface StoreResolver {
  open(name: string, opts: { readOnly: boolean }): Promise<ByteStore>;
  create?(name: string): Promise<ByteStore>;
  exists?(name: string): Promise<boolean>;
  /** Deletes a file `create` made (a failed create cleans up); a name already gone is no error. */
  remove?(name: string): Promise<void>;
}

export interface FormatOpenContext extends OpenOptions {
  resolver: StoreResolver;
  /** The store's first bytes (up to 4 KiB), when detecting the format read them: not to read again. */
  head?: Uint8Array | undefined;
}

/** An on-disk layout that turns a ByteStore into a BlockSource. */
export interface FormatDriver {
  readonly name: string;
  /** True when the first bytes are this format's; `raw` answers true for anything. */
  detect(head: Uint8Array): boolean;
  open(store: ByteStore, ctx: FormatOpenContext): Promise<BlockSource>;
  /** Lays out a new, empty disk of `ctx.size` bytes in a freshly created, empty store. */
  create?(store: ByteStore, ctx: FormatCreateContext): Promise<void>;
}

export interface FormatCreateContext extends IoOptions {
  /** Virtual size in bytes, a positive safe integer. */
  size: number;
  /** Format-specific switches (e.g. a VMDK subformat or adapter type). */
  formatOptions?: Record<string, unknown> | undefined;
  /** Creates and opens sibling files (VMDK extents) next to the new disk. */
  resolver: StoreResolver;
}

/**
 * `length` bytes of a disk that are bytes `position..position+length` of the local file open as
 * `fd`. Valid only inside the callback that received it: the descriptor may be closed (and its
 * number reused) afterwards. Bytes past the file's end read as zeroes.
 */
export interface FileSpan {
  fd: number;
  position: number;
  length: number;
}
