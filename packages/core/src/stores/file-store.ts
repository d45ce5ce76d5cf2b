import { constants, fstatSync, type StatsBase } from 'node:fs';
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { fromSystemError, VdError } from '../errors.js';
import type { ByteStore, Extent } from '../spec.js';
import { loadSparse, type SparseOps } from './sparse.js';

export interface FileStoreOptions {
  /** Open `O_RDONLY`; writes fail with ERR_VD_READ_ONLY. */
  readOnly?: boolean | undefined;
  /** Create the file (a regular file); fails with ERR_VD_EXISTS when it exists, unless `overwrite`. */
  create?: boolean | undefined;
  /** With `create`: truncate an existing file instead of failing. */
  overwrite?: boolean | undefined;
  /** `false`: do not use `@vd/sparse` even when it is installed (no holes reported or punched). */
  sparse?: boolean | undefined;
}

/** Yield to the event loop after this many data extents, so mapping a fragmented file stays fair. */
const EXTENTS_PER_TURN = 256;

/**
 * A local regular file or block device as a `ByteStore`. Reads and writes go straight to the
 * caller's buffer at a position (no seek pointer, no copies). With `@vd/sparse` loaded, a regular
 * file also answers `allocation` (SEEK_DATA/SEEK_HOLE) and `punchHole` (fallocate); without it
 * those members are absent, so formats fall back to reporting data and writing zeroes.
 */
export class FileStore implements ByteStore {
  readonly name: string;
  readonly readOnly: boolean;
  /** `file`: a regular file; `block`: a block device (fixed size, no hole handling). */
  readonly kind: 'file' | 'block';
  /** Present only where holes can be punched: a regular file with `@vd/sparse` loaded. */
  readonly punchHole?: (position: number, length: number) => Promise<boolean>;
  /** Present only where holes can be found: a regular file with `@vd/sparse` loaded. */
  readonly allocation?: (position: number, length: number) => Promise<Extent[]>;

  readonly #fh: FileHandle;
  readonly #blockSize: number | undefined;
  #closing: Promise<void> | undefined;
  /**
   * Hole punches on the thread pool and `withDescriptor` callers: both use the raw fd outside the
   * FileHandle's own tracking, so close() waits for them.
   */
  readonly #rawFdUsers = new Set<Promise<unknown>>();

  private constructor(
    fh: FileHandle,
    name: string,
    readOnly: boolean,
    kind: 'file' | 'block',
    blockSize: number | undefined,
    sparse: SparseOps | undefined,
  ) {
    this.#fh = fh;
    this.name = name;
    this.readOnly = readOnly;
    this.kind = kind;
    this.#blockSize = blockSize;
    if (sparse && kind === 'file') {
      this.allocation = (position, length) => this.#allocation(sparse, position, length);
      if (!readOnly) this.punchHole = (position, length) => this.#punchHole(sparse, position, length);
    }
  }

  /** Opens (or with `create`, creates) `path`. Anything but a regular file or block device is refused. */
  static async open(path: string, opts: FileStoreOptions = {}): Promise<FileStore> {
    if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `a file path must be a non-empty string without NUL bytes`, { details: { path } });
    }
    const readOnly = opts.readOnly === true;
    if (readOnly && opts.create) throw new VdError('ERR_VD_INVALID_ARGUMENT', `cannot create ${path} read-only`);
    let flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (opts.create) flags |= constants.O_CREAT | (opts.overwrite ? constants.O_TRUNC : constants.O_EXCL);
    // Look before opening: opening a FIFO blocks until a writer comes, and opening some character
    // devices acts (a tape rewinds). The fstat after the open settles what was actually opened.
    const before = await stat(path).catch(() => undefined);
    if (before && !before.isFile() && !before.isBlockDevice()) throw notADisk(path, before);
    const [fh, sparse] = await Promise.all([
      open(path, flags, 0o644).catch((err: unknown) => {
        // Refused for writing is often fixed by not writing: say so.
        const hint =
          !readOnly && ['EACCES', 'EPERM', 'EROFS'].includes((err as NodeJS.ErrnoException)?.code ?? '')
            ? ' (open read-only to only read it)'
            : '';
        throw fromSystemError(err, `open ${path}${opts.create ? ' to create it' : readOnly ? '' : ' read-write'}${hint}`);
      }),
      opts.sparse === false ? undefined : loadSparse(),
    ]);
    try {
      const st = await fh.stat({ bigint: true });
      if (st.isFile()) return new FileStore(fh, path, readOnly, 'file', undefined, sparse);
      if (st.isBlockDevice()) return new FileStore(fh, path, readOnly, 'block', await blockDeviceSize(fh, st.rdev, path, sparse), sparse);
      throw notADisk(path, st);
    } catch (err) {
      await fh.close().catch(() => {});
      throw fromSystemError(err, `open ${path}`);
    }
  }

  async size(): Promise<number> {
    this.#checkOpen('size');
    if (this.#blockSize !== undefined) return this.#blockSize;
    try {
      return (await this.#fh.stat()).size;
    } catch (err) {
      throw fromSystemError(err, `stat ${this.name}`);
    }
  }

  /** Bytes the file occupies on disk (`st_blocks` × 512); undefined for block devices. */
  allocatedBytes(): number | undefined {
    if (this.kind !== 'file' || this.#closing) return undefined;
    try {
      return fstatSync(this.#fh.fd).blocks * 512;
    } catch {
      return undefined;
    }
  }

  async read(position: number, into: Uint8Array): Promise<number> {
    this.#checkOpen('read');
    checkRange('read', position, into.length);
    try {
      const { bytesRead } = await this.#fh.read(into, 0, into.length, position);
      return bytesRead;
    } catch (err) {
      throw fromSystemError(err, `read ${this.name} at ${position}`);
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#checkWritable('write');
    checkRange('write', position, data.length);
    try {
      let done = 0;
      // write(2) may write less than asked (a signal, a full quota near the limit); carry on.
      while (done < data.length) {
        const { bytesWritten } = await this.#fh.write(data, done, data.length - done, position + done);
        if (bytesWritten <= 0) throw new VdError('ERR_VD_IO', `write ${this.name} at ${position + done}: no progress`);
        done += bytesWritten;
      }
    } catch (err) {
      throw fromSystemError(err, `write ${this.name} at ${position}`);
    }
  }

  async truncate(size: number): Promise<void> {
    this.#checkWritable('truncate');
    if (!Number.isSafeInteger(size) || size < 0)
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `truncate: size ${size} is not a safe non-negative integer`);
    if (this.kind === 'block') throw new VdError('ERR_VD_NOT_SUPPORTED', `truncate: ${this.name} is a block device; its size is fixed`);
    try {
      await this.#fh.truncate(size);
    } catch (err) {
      throw fromSystemError(err, `truncate ${this.name}`);
    }
  }

  async flush(): Promise<void> {
    this.#checkOpen('flush');
    if (this.readOnly) return;
    try {
      await this.#fh.datasync();
    } catch (err) {
      throw fromSystemError(err, `flush ${this.name}`);
    }
  }

  /**
   * Idempotent; later calls resolve when the first one has. Waits for hole punches in flight: they
   * run on the thread pool with the raw fd, which closing first would leave to a file that reuses it.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled(this.#rawFdUsers);
      await this.#fh.close();
    })().catch((err: unknown) => {
      throw fromSystemError(err, `close ${this.name}`);
    });
    return this.#closing;
  }

  /**
   * Lends the raw descriptor to `fn` (zero-copy sends); close() waits until `fn` settles, so the
   * number is never closed, or reused by another file, while `fn` may still use it.
   */
  async withDescriptor<T>(fn: (fd: number) => Promise<T>): Promise<T> {
    this.#checkOpen('withDescriptor');
    const using = (async () => fn(this.#fh.fd))();
    this.#rawFdUsers.add(using);
    try {
      return await using;
    } finally {
      this.#rawFdUsers.delete(using);
    }
  }

  async #allocation(sparse: SparseOps, position: number, length: number): Promise<Extent[]> {
    this.#checkOpen('allocation');
    checkRange('allocation', position, length);
    const fd = this.#fh.fd;
    const end = position + length;
    const out: Extent[] = [];
    let cursor = position;
    let turns = 0;
    try {
      while (cursor < end) {
        // Past the last data (ENXIO, also past EOF) everything reads as zeroes: a hole.
        const data = sparse.seekData(fd, cursor);
        if (data < 0 || data >= end) {
          out.push({ offset: cursor, length: end - cursor, type: 'hole' });
          break;
        }
        if (data > cursor) out.push({ offset: cursor, length: data - cursor, type: 'hole' });
        // EOF counts as a hole, so this always finds one; a concurrent truncate may put it before `data`.
        const hole = Math.min(Math.max(sparse.seekHole(fd, data), data + 1), end);
        out.push({ offset: data, length: hole - data, type: 'data' });
        cursor = hole;
        if (++turns % EXTENTS_PER_TURN === 0) {
          await new Promise(setImmediate);
          // The fd is raw: once close() has begun it may be closed, or another file's, by now.
          this.#checkOpen('allocation');
        }
      }
    } catch (err) {
      throw fromSystemError(err, `allocation of ${this.name} at ${cursor}`);
    }
    return out;
  }

  async #punchHole(sparse: SparseOps, position: number, length: number): Promise<boolean> {
    this.#checkWritable('punchHole');
    checkRange('punchHole', position, length);
    if (length === 0) return true;
    let punching: Promise<boolean> | undefined;
    try {
      punching = sparse.punchHole(this.#fh.fd, position, length);
      this.#rawFdUsers.add(punching);
      return await punching;
    } catch (err) {
      throw fromSystemError(err, `punch hole in ${this.name} at ${position}+${length}`);
    } finally {
      if (punching) this.#rawFdUsers.delete(punching);
    }
  }

  #checkOpen(op: string): void {
    if (this.#closing) throw new VdError('ERR_VD_CLOSED', `${op}: ${this.name} is closed`);
  }

  #checkWritable(op: string): void {
    this.#checkOpen(op);
    if (this.readOnly) throw new VdError('ERR_VD_READ_ONLY', `${op}: ${this.name} is open read-only`);
  }
}

function notADisk(path: string, st: StatsBase<unknown>): VdError {
  const what = st.isDirectory()
    ? 'a directory'
    : st.isCharacterDevice()
      ? 'a character device'
      : st.isFIFO()
        ? 'a FIFO'
        : st.isSocket()
          ? 'a socket'
          : 'not a regular file or block device';
  return new VdError('ERR_VD_INVALID_ARGUMENT', `${path} is ${what}; a disk is a regular file or a block device`, { details: { path } });
}

function checkRange(op: string, position: number, length: number): void {
  if (
    !Number.isSafeInteger(position) ||
    position < 0 ||
    !Number.isSafeInteger(length) ||
    length < 0 ||
    !Number.isSafeInteger(position + length)
  ) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${op}: ${position}+${length} is not a safe non-negative range`, {
      details: { position, length },
    });
  }
}

/**
 * A block device's `st_size` is 0; Linux publishes its size in 512-byte sectors under
 * /sys/dev/block/MAJOR:MINOR/size. Without sysfs, SEEK_HOLE from 0 answers the device end
 * (a block device is all data).
 */
async function blockDeviceSize(fh: FileHandle, rdev: bigint, path: string, sparse: SparseOps | undefined): Promise<number> {
  // glibc's major()/minor() bit layout of dev_t.
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  try {
    const text = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'latin1');
    const sectors = Number(text.trim());
    if (Number.isSafeInteger(sectors * 512) && sectors >= 0) return sectors * 512;
  } catch {
    // no sysfs (not Linux, or a container without it): try the seek below
  }
  const end = sparse ? sparse.seekHole(fh.fd, 0) : -1;
  if (Number.isSafeInteger(end) && end >= 0) return end;
  throw new VdError('ERR_VD_NOT_SUPPORTED', `cannot tell the size of block device ${path} (no /sys/dev/block and no @vd/sparse)`, {
    details: { path },
  });
}
