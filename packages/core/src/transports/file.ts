import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { throwIfAborted, VdError } from '../errors.js';
import { rawFormat } from '../formats/raw.js';
import { vmdkFormat } from '../formats/vmdk/index.js';
import type { BlockSource, ByteStore, FormatDriver, OpenOptions, ProbeResult, Transport } from '../spec.js';
import { fileResolver } from '../stores/file-resolver.js';
import { FileStore } from '../stores/file-store.js';

/** Format drivers tried, in order, when none is named; `raw` accepts anything, so it goes last. */
export const defaultFormats: readonly FormatDriver[] = [vmdkFormat, rawFormat];

export interface FileTransportOptions {
  /** Format drivers to detect from, in order (default `defaultFormats`). */
  formats?: readonly FormatDriver[];
}

/** Enough of the file for every driver's `detect` (VMDK magic or descriptor header). */
const HEAD_BYTES = 4096;

/** The local path of a `file:` URL; a remote host or a NUL byte is refused. */
export function filePath(location: URL): string {
  if (location.protocol !== 'file:') throw new VdError('ERR_VD_INVALID_ARGUMENT', `${location.href} is not a file: URL`);
  let path: string;
  try {
    path = fileURLToPath(location);
  } catch (err) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${location.href} is not a local file (${(err as Error).message})`, { cause: err });
  }
  if (path.includes('\0')) throw new VdError('ERR_VD_INVALID_ARGUMENT', `${location.href}: a path must not contain NUL bytes`);
  return path;
}

/** The store's first bytes, as many as it has up to HEAD_BYTES. */
async function readHead(store: ByteStore): Promise<Uint8Array> {
  const head = new Uint8Array(HEAD_BYTES);
  let got = 0;
  while (got < head.length) {
    const n = await store.read(got, head.subarray(got));
    if (n <= 0) break;
    got += n;
  }
  return head.subarray(0, got);
}

/**
 * The driver named by `format`, or the first in `formats` whose `detect` accepts the file's head
 * (`head` when the caller read it already).
 */
export async function pickFormat(
  store: ByteStore,
  formats: readonly FormatDriver[],
  format: string | undefined,
  head?: Uint8Array,
): Promise<FormatDriver> {
  const names = formats.map((f) => f.name).join(', ');
  if (format !== undefined) {
    const named = formats.find((f) => f.name === format);
    if (!named)
      throw new VdError('ERR_VD_UNKNOWN_FORMAT', `unknown format ${JSON.stringify(format)}; this transport knows ${names}`, {
        details: { format },
      });
    return named;
  }
  const bytes = head ?? (await readHead(store));
  const found = formats.find((f) => f.detect(bytes));
  if (!found) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${store.name} is in none of the formats ${names}; name one with \`format\``);
  return found;
}

/**
 * Local disk images and block devices: `file:` URLs (a plain path given to `openDisk` becomes
 * one). The format is named by `format` or detected from the first bytes; sibling files (VMDK
 * extents and parents) are opened relative to the disk's directory.
 */
export function file(options: FileTransportOptions = {}): Transport {
  const formats = options.formats ?? defaultFormats;
  return {
    specificationVersion: 'v1',
    name: 'file',
    schemes: ['file'],

    // Only what makes this transport the wrong one is a skip. A missing or forbidden file is left
    // to `open`, whose coded error (ERR_VD_NOT_FOUND, ERR_VD_PERMISSION) then reaches the caller.
    async probe(location: URL, _opts: OpenOptions): Promise<ProbeResult> {
      let path: string;
      try {
        path = filePath(location);
      } catch (err) {
        return { ok: false, reason: (err as Error).message };
      }
      try {
        const st = await stat(path);
        if (st.isFile() || st.isBlockDevice()) return { ok: true };
        const what = st.isDirectory() ? 'a directory' : st.isCharacterDevice() ? 'a character device' : 'neither a file nor a block device';
        return { ok: false, reason: `${path} is ${what}, not a disk image` };
      } catch {
        return { ok: true };
      }
    },

    async open(location: URL, opts: OpenOptions): Promise<BlockSource> {
      throwIfAborted(opts.signal, 'open');
      const path = filePath(location);
      const store = await FileStore.open(path, { readOnly: opts.readOnly === true });
      try {
        // Read once: the driver gets the bytes detection looked at (a VMDK's header) too.
        const head = opts.format === undefined ? await readHead(store) : undefined;
        const driver = await pickFormat(store, formats, opts.format, head);
        throwIfAborted(opts.signal, 'open');
        return await driver.open(store, { ...opts, resolver: fileResolver(dirname(path)), head });
      } catch (err) {
        await store.close().catch(() => {});
        throw err;
      }
    },
  };
}
