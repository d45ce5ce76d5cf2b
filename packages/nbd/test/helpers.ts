import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Peers' environment: /usr/bin first, so nbdsh finds the system python3 with the libnbd binding. */
export const peerEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' };

/** Runs a peer asynchronously (our server lives in this process, so never block the loop). */
export async function run(cmd: string, args: string[], opts: { input?: string; timeout?: number } = {}): Promise<string> {
  const child = execFileP(cmd, args, { env: peerEnv, timeout: opts.timeout ?? 60_000, maxBuffer: 64 << 20, encoding: 'utf8' });
  if (opts.input !== undefined) {
    child.child.stdin?.end(opts.input);
  }
  const { stdout } = await child;
  return stdout;
}

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-nbd-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A deterministic pattern: byte i of block b is (b * 31 + i) & 255, never all zero. */
export function pattern(length: number, seed = 1): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 255 || 1;
  return b;
}

/** A sparse raw file of `size` bytes with data written at the given offsets. */
export async function sparseRaw(path: string, size: number, data: [number, Uint8Array][]): Promise<void> {
  const fh = await open(path, 'w+');
  try {
    await fh.truncate(size);
    for (const [at, bytes] of data) await fh.write(bytes, 0, bytes.length, at);
  } finally {
    await fh.close();
  }
}
