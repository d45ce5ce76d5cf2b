import { execFileSync } from 'node:child_process';
import { constants } from 'node:fs';
import { type FileHandle, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { fromSystemError, VdError } from '../../src/errors.js';
import type { ByteStore, StoreResolver } from '../../src/spec.js';

export function hasPeer(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}
/** With VD_REQUIRE_PEERS=1 the interop tests run even without the peer, and fail loudly. */
export const skipWithout = (cmd: string) => !hasPeer(cmd) && process.env.VD_REQUIRE_PEERS !== '1';

/** A minimal file ByteStore for tests (the real one is the file transport's). */
export class TestFileStore implements ByteStore {
  constructor(
    readonly name: string,
    readonly readOnly: boolean,
    private readonly fh: FileHandle,
  ) {}
  static async open(path: string, readOnly: boolean, create = false): Promise<TestFileStore> {
    try {
      const flags = create ? constants.O_RDWR | constants.O_CREAT | constants.O_EXCL : readOnly ? constants.O_RDONLY : constants.O_RDWR;
      return new TestFileStore(path, readOnly, await open(path, flags, 0o644));
    } catch (err) {
      throw fromSystemError(err, `open ${path}`);
    }
  }
  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }
  async read(position: number, into: Uint8Array): Promise<number> {
    return (await this.fh.read(into, 0, into.length, position)).bytesRead;
  }
  async write(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new VdError('ERR_VD_READ_ONLY', `${this.name} is read-only`);
    let done = 0;
    while (done < data.length) done += (await this.fh.write(data, done, data.length - done, position + done)).bytesWritten;
  }
  async truncate(size: number): Promise<void> {
    await this.fh.truncate(size);
  }
  async flush(): Promise<void> {
    await this.fh.datasync();
  }
  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Opens names relative to `dir`; counts open stores so tests can assert nothing leaks. */
export class TestResolver implements StoreResolver {
  openCount = 0;
  constructor(readonly dir: string) {}
  path(name: string): string {
    return isAbsolute(name) ? name : join(this.dir, name);
  }
  async #track(s: TestFileStore): Promise<ByteStore> {
    this.openCount++;
    const close = s.close.bind(s);
    s.close = async () => {
      this.openCount--;
      await close();
    };
    return s;
  }
  async open(name: string, opts: { readOnly: boolean }): Promise<ByteStore> {
    return this.#track(await TestFileStore.open(this.path(name), opts.readOnly));
  }
  async create(name: string): Promise<ByteStore> {
    return this.#track(await TestFileStore.open(this.path(name), false, true));
  }
  async exists(name: string): Promise<boolean> {
    try {
      await (await open(this.path(name), 'r')).close();
      return true;
    } catch {
      return false;
    }
  }
}

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-vmdk-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export function qemu(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
export function qemuIo(...args: string[]): string {
  return execFileSync('qemu-io', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** A growable in-memory ByteStore, for fuzzing without touching the disk. */
export class MemStore implements ByteStore {
  bytes: Uint8Array;
  length: number;
  constructor(
    readonly name: string,
    init: Uint8Array = new Uint8Array(0),
    readonly readOnly = false,
  ) {
    this.bytes = new Uint8Array(init);
    this.length = init.length;
  }
  async size(): Promise<number> {
    return this.length;
  }
  async read(position: number, into: Uint8Array): Promise<number> {
    if (position >= this.length) return 0;
    const n = Math.min(into.length, this.length - position);
    into.set(this.bytes.subarray(position, position + n));
    return n;
  }
  async write(position: number, data: Uint8Array): Promise<void> {
    const end = position + data.length;
    if (end > this.bytes.length) {
      const grown = new Uint8Array(Math.max(end, this.bytes.length * 2));
      grown.set(this.bytes.subarray(0, this.length));
      this.bytes = grown;
    }
    this.bytes.set(data, position);
    this.length = Math.max(this.length, end);
  }
  async truncate(size: number): Promise<void> {
    if (size > this.bytes.length) await this.write(size - 1, new Uint8Array(1));
    this.length = size;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  snapshot(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

/** A resolver over named in-memory stores (files that exist), creating new ones on demand. */
export class MemResolver implements StoreResolver {
  constructor(readonly files = new Map<string, MemStore>()) {}
  async open(name: string, opts: { readOnly: boolean }): Promise<ByteStore> {
    const f = this.files.get(name);
    if (!f) throw new VdError('ERR_VD_NOT_FOUND', `${name} not found`);
    if (!opts.readOnly) return f;
    // A read-only view of the same bytes.
    return {
      name,
      readOnly: true,
      size: () => f.size(),
      read: (p, i) => f.read(p, i),
      write: async () => {
        throw new VdError('ERR_VD_READ_ONLY', 'read-only');
      },
      flush: async () => {},
      close: async () => {},
    };
  }
  async create(name: string): Promise<ByteStore> {
    if (this.files.has(name)) throw new VdError('ERR_VD_EXISTS', `${name} exists`);
    const s = new MemStore(name);
    this.files.set(name, s);
    return s;
  }
  async exists(name: string): Promise<boolean> {
    return this.files.has(name);
  }
}
