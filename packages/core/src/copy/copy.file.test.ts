import { execFileSync } from 'node:child_process';
import { readSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk } from '../create.js';
import { Disk } from '../disk.js';
import { rawFormat } from '../formats/raw.js';
import { MemorySource } from '../memory.js';
import { openDisk } from '../open-disk.js';
import type { FileSpan } from '../spec.js';
import { loadSparse } from '../stores/sparse.js';
import { file } from '../transports/file.js';
import { copyDisk } from './copy.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sparse = await loadSparse();
const transports = [file()];

function hasPeer(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}
const skipQemu = !hasPeer('qemu-img') && process.env.VD_REQUIRE_PEERS !== '1';

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = ((i * 31 + seed) ^ (i >>> 9)) & 0xff || 1;
  return out;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-copy-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A 64 MiB sparse raw file with 1.25 MiB of data and 2 MiB of allocated zeroes. */
async function sparseSource(path: string): Promise<void> {
  await createDisk(path, { size: 64 * MiB });
  const disk = await openDisk(path, { transports });
  try {
    await disk.write(0, pattern(1 * MiB, 1));
    await disk.write(10 * MiB, new Uint8Array(2 * MiB)); // allocated, but zero
    await disk.write(40 * MiB + 64 * KiB, pattern(256 * KiB, 2));
  } finally {
    await disk.close();
  }
}

describe('copyDisk between files', () => {
  it('copies a sparse file to a fresh sparse file that stays sparse', async () => {
    const src = join(dir, 'sparse-src.img');
    const dst = join(dir, 'sparse-dst.img');
    await sparseSource(src);
    await createDisk(dst, { size: 64 * MiB });
    const source = await openDisk(src, { transports, readOnly: true });
    const target = await openDisk(dst, { transports });
    const result = await copyDisk(source, target, { targetIsZero: true, verify: true });
    await Promise.all([source.close(), target.close()]);

    expect(result.verified).toBe(true);
    expect(result.bytesWritten).toBe(1 * MiB + 256 * KiB);
    if (sparse) {
      // Holes are never read: only data extents (which include the allocated zeroes).
      expect(result.bytesRead).toBeLessThanOrEqual(3 * MiB + 256 * KiB + 64 * KiB);
    }
    expect(Buffer.compare(await readFile(dst), await readFile(src))).toBe(0);
    const allocated = (await stat(dst)).blocks * 512;
    // The data and a little file-system slack; neither the holes nor the zero chunks.
    expect(allocated).toBeLessThanOrEqual(1 * MiB + 256 * KiB + 256 * KiB);
    expect((await stat(dst)).size).toBe(64 * MiB);
  });

  it('overwrites an old file, punching the holes back in', async () => {
    const src = join(dir, 'over-src.img');
    const dst = join(dir, 'over-dst.img');
    await sparseSource(src);
    await createDisk(dst, { size: 64 * MiB });
    const old = await openDisk(dst, { transports });
    await old.write(0, pattern(64 * MiB, 3));
    await old.close();
    const source = await openDisk(src, { transports, readOnly: true });
    const target = await openDisk(dst, { transports });
    const result = await copyDisk(source, target, { verify: true });
    await Promise.all([source.close(), target.close()]);
    expect(result.verified).toBe(true);
    expect(Buffer.compare(await readFile(dst), await readFile(src))).toBe(0);
    if (sparse) expect((await stat(dst)).blocks * 512).toBeLessThan(8 * MiB);
  });

  it.skipIf(skipQemu)('copies a raw file into a new VMDK that qemu-img finds identical', async () => {
    const src = join(dir, 'vmdk-src.img');
    const dst = join(dir, 'vmdk-dst.vmdk');
    await sparseSource(src);
    await createDisk(dst, { size: 64 * MiB, format: 'vmdk' });
    const source = await openDisk(src, { transports, readOnly: true });
    const target = await openDisk(dst, { transports });
    const result = await copyDisk(source, target, { targetIsZero: true, verify: true });
    await Promise.all([source.close(), target.close()]);
    expect(result.verified).toBe(true);
    // qemu-img exits 0 when the guest-visible contents are equal, 1 when they differ.
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', src, dst]);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', dst]).toString()) as { 'actual-size': number };
    expect(info['actual-size']).toBeLessThan(8 * MiB);
  });
});

/**
 * A target that writes from file spans the way a sendfile transport would (reading them through
 * their descriptors), declining whenever `accept` says so: it records what it was asked.
 */
class SpanTarget extends MemorySource {
  asked = 0;
  sent = 0;
  constructor(
    size: number,
    readonly accept: (call: number) => boolean,
  ) {
    super(size);
  }
  async _writeFileSpans(offset: number, spans: readonly FileSpan[]): Promise<boolean> {
    if (!this.accept(this.asked++)) return false;
    const bytes = new Uint8Array(spans.reduce((n, x) => n + x.length, 0));
    let at = 0;
    for (const x of spans) at += readSync(x.fd, bytes, at, x.length, x.position);
    await this._write(offset, bytes);
    this.sent++;
    return true;
  }
}

describe('copyDisk onto a target that writes from file spans', () => {
  const size = 16 * MiB;
  let src: string;
  let bytes: Uint8Array;
  beforeAll(async () => {
    src = join(dir, 'spans-src.raw');
    bytes = pattern(size, 7);
    await writeFile(src, bytes);
  });
  const copyOnto = async (t: SpanTarget, opts: Parameters<typeof copyDisk>[2] = {}) => {
    const source = await openDisk(src, { transports: [file({ formats: [rawFormat] })], readOnly: true });
    const target = new Disk(t, { transport: 'memory' });
    try {
      await copyDisk(source, target, { chunkSize: MiB, inFlight: 1, targetIsZero: false, ...opts });
      // Whether the target holds the source's bytes.
      return Buffer.compare(await target.read(0, size), bytes) === 0;
    } finally {
      await Promise.all([source.close(), target.close()]);
    }
  };

  it('sends every chunk from the files, asks again after a decline once it has sent, and lands the bytes', async () => {
    // Busy now and then (every third request), as a transport whose send slots are taken.
    const t = new SpanTarget(size, (call) => call % 3 !== 1);
    expect(await copyOnto(t)).toBe(true);
    expect(t.asked).toBe(16);
    expect(t.sent).toBe(16 - 5);
  });

  it('asks no more after a first decline: such a target cannot (TLS, no addon)', async () => {
    const t = new SpanTarget(size, () => false);
    expect(await copyOnto(t)).toBe(true);
    expect(t.asked).toBe(1);
  });

  it('never asks when digests are taken: they must describe the bytes written', async () => {
    for (const opts of [{ checksums: true }, { verify: true }]) {
      const t = new SpanTarget(size, () => true);
      expect(await copyOnto(t, opts)).toBe(true);
      expect(t.asked).toBe(0);
    }
  });
});
