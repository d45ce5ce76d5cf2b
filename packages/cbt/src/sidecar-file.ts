import { constants, writeSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { type ByteStore, fromSystemError, VdError } from '@vd/core';

/**
 * The sidecar as a `ByteStore` on a local file: positional reads and writes, `flush` =
 * fdatasync. Created when missing (unless read-only); `undefined` when read-only and missing.
 */
export async function openSidecarFile(path: string, readOnly: boolean): Promise<ByteStore | undefined> {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'CBT sidecar path must be a non-empty string without NUL bytes', { details: { path } });
  }
  let fh: FileHandle;
  try {
    fh = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR | constants.O_CREAT, 0o644);
  } catch (err) {
    if (readOnly && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, `open CBT sidecar ${path}`);
  }
  let key: string | undefined;
  if (!readOnly) {
    // Two trackers writing one sidecar overwrite each other's pages, losing marks: one at a time.
    const st = await fh.stat({ bigint: true }).catch(async (err: unknown) => {
      await fh.close().catch(() => {});
      throw fromSystemError(err, `stat CBT sidecar ${path}`);
    });
    key = `${st.dev}:${st.ino}`;
    if (writers.has(key)) {
      await fh.close().catch(() => {});
      throw new VdError('ERR_VD_EXISTS', `CBT sidecar ${path} is already open for writing in this process; track the disk once`, {
        details: { path },
      });
    }
    writers.add(key);
  }
  const file = new SidecarFile(fh, path, readOnly, key);
  if (key) forgotten.register(file, key, file);
  return file;
}

/** Sidecars open for writing in this process, by device and inode. */
const writers = new Set<string>();
/**
 * A tracker dropped without close() leaves its sidecar's entry behind; node closes the
 * descriptor when it collects the file handle, and a new file may then get the same inode, which
 * would be refused as "already open". Collected with its SidecarFile, the entry goes too.
 */
const forgotten = new FinalizationRegistry<string>((key) => writers.delete(key));

class SidecarFile implements ByteStore {
  #closing: Promise<void> | undefined;

  constructor(
    readonly fh: FileHandle,
    readonly name: string,
    readonly readOnly: boolean,
    readonly key: string | undefined,
  ) {}

  async size(): Promise<number> {
    try {
      return (await this.fh.stat()).size;
    } catch (err) {
      throw fromSystemError(err, `stat ${this.name}`);
    }
  }

  async read(position: number, into: Uint8Array): Promise<number> {
    try {
      return (await this.fh.read(into, 0, into.length, position)).bytesRead;
    } catch (err) {
      throw fromSystemError(err, `read ${this.name} at ${position}`);
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done);
        if (bytesWritten <= 0) throw new VdError('ERR_VD_IO', `write ${this.name} at ${position + done}: no progress`);
        done += bytesWritten;
      }
    } catch (err) {
      throw fromSystemError(err, `write ${this.name} at ${position}`);
    }
  }

  /** For `boot` durability: a page reaches the page cache before the caller goes on. */
  writeSync(position: number, data: Uint8Array): void {
    try {
      let done = 0;
      while (done < data.length) {
        const n = writeSync(this.fh.fd, data, done, data.length - done, position + done);
        if (n <= 0) throw new VdError('ERR_VD_IO', `write ${this.name} at ${position + done}: no progress`);
        done += n;
      }
    } catch (err) {
      throw fromSystemError(err, `write ${this.name} at ${position}`);
    }
  }

  async truncate(size: number): Promise<void> {
    try {
      await this.fh.truncate(size);
    } catch (err) {
      throw fromSystemError(err, `truncate ${this.name}`);
    }
  }

  async flush(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (err) {
      throw fromSystemError(err, `fsync ${this.name}`);
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.fh
      .close()
      .catch((err: unknown) => {
        throw fromSystemError(err, `close ${this.name}`);
      })
      .finally(() => {
        if (this.key) writers.delete(this.key);
        forgotten.unregister(this);
      });
    return this.#closing;
  }
}
