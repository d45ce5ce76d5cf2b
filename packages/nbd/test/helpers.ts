import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseNbdUri } from '../src/client/uri.js';

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

export interface CuttableProxy {
  port: number;
  /** Drops every connection. */
  cut: () => void;
  /** New connections are dropped at once. */
  refuse: boolean;
  /** New connections are accepted and never answered (a server that never greets). */
  silent: boolean;
  accepted: number;
  close: () => Promise<void>;
}

/**
 * A TCP proxy to the NBD server at `uri`: a network that fails under the client. With `cutAfter`,
 * each connection is cut (both sides) once that many bytes came from the client.
 */
export async function tcpProxy(uri: string, opts: { cutAfter?: number } = {}): Promise<CuttableProxy> {
  const t = parseNbdUri(uri);
  if (t.kind !== 'tcp') throw new Error('tcp expected');
  const sockets = new Set<Socket>();
  const proxy = createServer((c) => {
    out.accepted++;
    if (out.refuse) {
      c.destroy();
      return;
    }
    if (out.silent) {
      sockets.add(c);
      c.on('error', () => c.destroy());
      return;
    }
    const up = netConnect({ host: t.host, port: t.port });
    sockets.add(c).add(up);
    const drop = () => {
      c.destroy();
      up.destroy();
    };
    up.pipe(c);
    if (opts.cutAfter === undefined) c.pipe(up);
    else {
      let seen = 0;
      c.on('data', (d: Buffer) => {
        up.write(d);
        seen += d.length;
        if (seen > opts.cutAfter!) drop();
      });
    }
    c.on('error', drop).on('close', drop);
    up.on('error', drop).on('close', drop);
  });
  const out: CuttableProxy = {
    port: 0,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    refuse: false,
    silent: false,
    accepted: 0,
    close: () => new Promise((r) => proxy.close(() => r())),
  };
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  out.port = (proxy.address() as { port: number }).port;
  return out;
}
