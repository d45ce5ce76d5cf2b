import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runConformance } from '@vd/conformance/vitest';
import { type Disk, isVdError, memoryDisk, openDisk } from '@vd/core';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { type CuttableProxy, tcpProxy } from '../../test/helpers.js';
import { NbdServer, type NbdServerOptions } from '../index.js';
import { DEFAULT_CLIENT_IN_FLIGHT } from '../protocol.js';
import { connectionLost, type HandshakeOptions, listExports, NbdConnection } from './connection.js';
import { type NbdClientConnection, NbdClientSource } from './source.js';
import { nbd } from './transport.js';
import { formatNbdUri, type NbdTarget, parseNbdUri } from './uri.js';

const MiB = 1 << 20;

interface Served {
  server: NbdServer;
  uri: string;
  disk: Disk;
}

const cleanups: (() => Promise<void>)[] = [];

async function serve(disk: Disk, opts: Partial<NbdServerOptions> = {}, name = 'd'): Promise<Served> {
  const server = new NbdServer({ exports: [{ name, disk }], ...opts });
  const { uri } = await server.listen({ port: 0 });
  cleanups.push(async () => {
    await server.close();
    await disk.close().catch(() => {});
  });
  return { server, uri, disk };
}

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/** `cuttableProxy` from the test helpers, closed after the test. */
async function cuttableProxy(uri: string): Promise<CuttableProxy> {
  const proxy = await tcpProxy(uri);
  cleanups.push(() => proxy.close());
  return proxy;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed + (i >> 12)) & 255;
  return b;
}

describe('NBD URIs', () => {
  it('parses the standard forms', () => {
    expect(parseNbdUri('nbd://example.com/disk')).toEqual({
      kind: 'tcp',
      host: 'example.com',
      port: 10809,
      exportName: 'disk',
      tls: false,
    });
    expect(parseNbdUri('nbd://[::1]:1234/a%20b')).toEqual({ kind: 'tcp', host: '::1', port: 1234, exportName: 'a b', tls: false });
    expect(parseNbdUri('nbd://h//abs')).toMatchObject({ exportName: '/abs' });
    expect(parseNbdUri('nbd+unix:///e?socket=/tmp/s.sock')).toEqual({ kind: 'unix', path: '/tmp/s.sock', exportName: 'e', tls: false });
    expect(parseNbdUri('nbds://h/')).toMatchObject({ tls: true, exportName: '' });
    expect(() => parseNbdUri('nbd+unix:///e')).toThrow(/socket/);
    expect(() => parseNbdUri('http://h/e')).toThrow(/not an NBD URI/);
    expect(formatNbdUri(parseNbdUri('nbd+unix:///e?socket=/tmp/s.sock'))).toBe('nbd+unix:///e?socket=%2Ftmp%2Fs.sock');
  });

  it('probe says why an nbds URI cannot be opened without TLS', async () => {
    const r = await nbd().probe(new URL('nbds://h/e'), {});
    expect(r).toMatchObject({ ok: false });
  });
});

describe('connectionLost', () => {
  it('is a retryable ERR_VD_IO that keeps its cause, with the reason in parentheses when given', () => {
    const cause = new Error('EPIPE');
    const plain = connectionLost('nbd://h/e', cause);
    expect(isVdError(plain, 'ERR_VD_IO')).toBe(true);
    expect(plain.message).toBe('NBD connection to nbd://h/e was lost');
    expect(plain.cause).toBe(cause);
    expect(plain.details.connectionLost).toBe(true);
    const why = connectionLost('nbd://h/e', undefined, 'its worker thread ended');
    expect(why.message).toBe('NBD connection to nbd://h/e was lost (its worker thread ended)');
    expect(why.details.connectionLost).toBe(true);
  });
});

describe('client against our server', () => {
  it('negotiates extended headers with our server and reads, writes, zeroes, trims, flushes', async () => {
    const { uri } = await serve(memoryDisk(16 * MiB));
    const disk = await openDisk(uri, { transports: [nbd()] });
    cleanups.push(() => disk.close());
    expect(disk.info()).toMatchObject({ format: 'nbd', extendedHeaders: true, structuredReplies: true });
    const data = pattern(3 * MiB + 512, 3);
    await disk.write(MiB - 512, data, { fua: true });
    expect(Buffer.compare(await disk.read(MiB - 512, data.length), data)).toBe(0);
    await disk.zero(MiB, MiB, { noHole: true });
    await disk.trim(2 * MiB, MiB);
    await disk.flush();
    const got = await disk.read(MiB - 512, 512);
    expect(Buffer.compare(got, data.subarray(0, 512))).toBe(0);
    expect((await disk.read(MiB, 2 * MiB)).every((b) => b === 0)).toBe(true);
    const ext = [];
    for await (const e of disk.extents()) ext.push(e);
    expect(ext[0]).toEqual({ offset: 0, length: MiB - 4096, type: 'hole' });
    expect(ext.find((e) => e.offset === MiB)?.type).toBe('zero');
  });

  it.each<[string, { extendedHeaders: boolean; structuredReplies?: boolean }]>([
    ['structured replies only', { extendedHeaders: false }],
    ['simple replies only', { extendedHeaders: false, structuredReplies: false }],
  ])('falls back to %s', async (_name, opts) => {
    const { uri } = await serve(memoryDisk(4 * MiB), opts);
    const disk = await openDisk(uri, { transports: [nbd()] });
    cleanups.push(() => disk.close());
    const info = disk.info();
    expect(info.extendedHeaders).toBe(false);
    expect(info.structuredReplies).toBe(opts.structuredReplies !== false);
    const data = pattern(MiB, 9);
    await disk.write(4096, data);
    expect(Buffer.compare(await disk.read(4096, data.length), data)).toBe(0);
    // Without structured replies there is no block status; the wrapper reports one data extent.
    expect(disk.capabilities.extents.length).toBe(opts.structuredReplies === false ? 0 : 1);
    const err = await disk.read(4 * MiB - 512, 1024).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_OUT_OF_RANGE')).toBe(true);
  });

  it('pipelines many requests with a bounded window and splits to the maximum block size', async () => {
    const { server, uri } = await serve(memoryDisk(64 * MiB), { limits: { maxPayload: MiB } });
    const disk = await openDisk(uri, { transports: [nbd({ maxInFlight: 4, connections: 1 })] });
    cleanups.push(() => disk.close());
    expect(disk.capabilities.blockSize.maximum).toBe(MiB);
    const big = pattern(10 * MiB + 4096, 5);
    await disk.write(0, big);
    const reads = Array.from({ length: 64 }, (_, i) => disk.read(i * 65536, 65536));
    const parts = await Promise.all(reads);
    for (const [i, p] of parts.entries()) expect(Buffer.compare(p, big.subarray(i * 65536, (i + 1) * 65536))).toBe(0);
    expect(Buffer.compare(await disk.read(0, big.length), big)).toBe(0);
    expect(server.connections).toBe(1);
  });

  it('opens several connections only when the server advertises multi-conn', async () => {
    const { server, uri } = await serve(memoryDisk(4 * MiB));
    const disk = await openDisk(uri, { transports: [nbd({ connections: 3 })] });
    cleanups.push(() => disk.close());
    expect(disk.capabilities.multiConn).toBe(true);
    expect(disk.info().connections).toBe(3);
    expect(server.connections).toBe(3);
    // Writes on one connection are visible to reads on another after a flush.
    const data = pattern(MiB, 1);
    await Promise.all([disk.write(0, data), disk.write(MiB, data)]);
    await disk.flush();
    const back = await Promise.all([0, 1, 2, 3].map((i) => disk.read(i * 512 * 1024, 512 * 1024)));
    expect(Buffer.compare(Buffer.concat(back.slice(0, 2)), data)).toBe(0);
  });

  it.each([
    ['a unix socket', 3, false, 'unix', false],
    ['TCP', 3, true, 'tcp', false],
    ['a unix socket, past the first window', 3 * 4, true, 'unix', false],
    ['a unix socket, to a worker connection', 3, true, 'unix', true],
  ] as const)('reads over %s, %i at once: the second connection gets some: %s; writes spread', async (_, reads, second, kind, worker) => {
    // A connectExtra of plain in-thread connections, so the reads each one gets can be counted;
    // flagged as a worker's where the case says.
    const served = await serve(memoryDisk(4 * MiB, { data: pattern(4 * MiB, 9) }));
    let uri = served.uri;
    if (kind === 'unix') {
      const dir = await mkdtemp(join(tmpdir(), 'vd-nbd-fill-'));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      uri = (await served.server.listen({ path: join(dir, 's.sock') })).uri;
    }
    const extra: NbdConnection[] = [];
    const connectExtra = async (target: NbdTarget, o: HandshakeOptions) => {
      const c = await NbdConnection.open(target, o);
      if (worker) Object.defineProperty(c, 'worker', { value: true });
      extra.push(c);
      return c;
    };
    const disk = await openDisk(uri, { transports: [nbd({ connections: 2, maxInFlight: 4, connectExtra })], readOnly: true });
    cleanups.push(() => disk.close());
    await vi.waitFor(() => expect(disk.info().connections).toBe(2));
    const onSecond = vi.spyOn(extra[0]!, 'read');
    const got = await Promise.all(Array.from({ length: reads }, (_, i) => disk.read(i * 65536, 65536)));
    for (const [i, g] of got.entries()) expect(Buffer.compare(g, pattern(4 * MiB, 9).subarray(i * 65536, (i + 1) * 65536))).toBe(0);
    if (!second) expect(onSecond).not.toHaveBeenCalled();
    else expect(onSecond).toHaveBeenCalled();
    // Writes spread whatever the socket.
    const rw = await openDisk(uri, { transports: [nbd({ connections: 2, maxInFlight: 4, connectExtra })] });
    cleanups.push(() => rw.close());
    await vi.waitFor(() => expect(rw.info().connections).toBe(2));
    const writes = vi.spyOn(extra[1]!, 'write');
    await Promise.all([0, 1, 2].map((i) => rw.write(i * 65536, pattern(65536, i))));
    expect(writes).toHaveBeenCalled();
  });

  it('opens as many connections as there are cores, at most 4, by default', async () => {
    const { server, uri } = await serve(memoryDisk(MiB));
    const disk = await openDisk(uri, { transports: [nbd()] });
    cleanups.push(() => disk.close());
    expect(disk.info().connections).toBe(Math.min(4, availableParallelism()));
    expect(server.connections).toBe(Math.min(4, availableParallelism()));
  });

  it('connectExtra: reads start on the first connection, the others join when open, a close stops those still opening', async () => {
    const { server, uri } = await serve(memoryDisk(4 * MiB));
    const gates: (() => void)[] = [];
    const opened: NbdClientConnection[] = [];
    const signals: (AbortSignal | undefined)[] = [];
    const connectExtra = async (t: NbdTarget, o: HandshakeOptions) => {
      signals.push(o.signal);
      await new Promise<void>((r) => gates.push(r));
      const c = await NbdConnection.open(t, o);
      opened.push(c);
      return c;
    };
    const disk = await openDisk(uri, { transports: [nbd({ connections: 3, connectExtra })] });
    expect(disk.info().connections).toBe(1);
    expect(disk.capabilities.concurrency.maxInFlight).toBe(3 * DEFAULT_CLIENT_IN_FLIGHT);
    const data = pattern(MiB, 3);
    await disk.write(0, data);
    expect(Buffer.compare(Buffer.from(await disk.read(0, MiB)), data)).toBe(0);
    gates.shift()!();
    await vi.waitFor(() => expect(disk.info().connections).toBe(2));
    expect(server.connections).toBe(2);
    // Closed with one still opening: its handshake is aborted (a server that never greets it must
    // not hold the close up), and the close waits until it gave up.
    const closing = disk.close();
    expect(signals[1]?.aborted).toBe(true);
    gates.shift()!();
    await closing;
    expect(opened.length).toBe(1);
    expect(opened.every((c) => c.closed)).toBe(true);
  });

  it('a connectExtra that throws instead of rejecting costs only that connection', async () => {
    const { server, uri } = await serve(memoryDisk(4 * MiB));
    const connectExtra = (): Promise<NbdClientConnection> => {
      throw new Error('no threads here');
    };
    const disk = await openDisk(uri, { transports: [nbd({ connections: 2, connectExtra })] });
    expect((await disk.read(0, 4096)).length).toBe(4096);
    expect(disk.info().connections).toBe(1);
    await disk.close();
    await vi.waitFor(() => expect(server.connections).toBe(0));
  });

  it('close and destroy do not wait for extra connections stuck in their handshake: those are dropped at once', async () => {
    const { uri } = await serve(memoryDisk(4 * MiB));
    const real = parseNbdUri(uri);
    if (real.kind !== 'tcp') throw new Error('expected a TCP export');
    for (const how of ['close', 'destroy'] as const) {
      // The first connection reaches the server; later ones are accepted and never greeted, as
      // by a server at its connection limit.
      const held: Socket[] = [];
      let first = true;
      const proxy = createServer((s) => {
        s.on('error', () => {});
        if (!first) {
          held.push(s);
          return;
        }
        first = false;
        const up = netConnect(real.port, real.host);
        up.on('error', () => {});
        s.pipe(up).pipe(s);
        s.on('close', () => up.destroy());
        up.on('close', () => s.destroy());
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      cleanups.push(
        () =>
          new Promise<void>((r) => {
            for (const s of held) s.destroy();
            proxy.close(() => r());
          }),
      );
      const port = (proxy.address() as { port: number }).port;
      const connectExtra = (t: NbdTarget, o: HandshakeOptions) => NbdConnection.open(t, o);
      // A handshake limit far beyond the test's: only dropping the stuck handshakes lets it pass.
      const disk = await openDisk(`nbd://127.0.0.1:${port}/d`, {
        transports: [nbd({ connections: 3, connectExtra, handshakeTimeout: 600_000 })],
      });
      expect((await disk.read(0, 4096)).length).toBe(4096);
      await vi.waitFor(() => expect(held.length).toBe(2));
      await disk[how]();
      // The client gave up on them: their sockets close.
      await Promise.all(held.map((s) => (s.destroyed ? undefined : new Promise((r) => s.once('close', r)))));
      expect(disk.info().connections).toBe(1);
    }
  }, 30_000);

  it('maps server errors to coded errors that keep the errno', async () => {
    const { uri } = await serve(memoryDisk(MiB), {}, 'ro');
    const server2 = new NbdServer({ exports: [{ name: 'ro', disk: memoryDisk(MiB), readOnly: true }] });
    const { uri: roUri } = await server2.listen({ port: 0 });
    cleanups.push(() => server2.close());
    const src = await NbdClientSource.open(parseNbdUri(roUri));
    cleanups.push(() => src._close());
    const err = await src._write(0, new Uint8Array(512), {}).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_READ_ONLY')).toBe(true);
    expect(err.details).toMatchObject({ errno: 1, errnoName: 'EPERM' });
    const missing = await openDisk(uri.replace(/\/ro$/, '/nope'), { transports: [nbd()] }).catch((e) => e);
    expect(isVdError(missing, 'ERR_VD_NOT_FOUND')).toBe(true);
    expect(String(missing.message)).toMatch(/nope/);
  });

  it('sends CACHE hints the server accepts', async () => {
    const { uri } = await serve(memoryDisk(MiB));
    const src = await NbdClientSource.open(parseNbdUri(uri));
    cleanups.push(() => src._close());
    await expect(src.cache(0, 65536)).resolves.toBeUndefined();
    const err = await src.cache(MiB, 512).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_INVALID_ARGUMENT')).toBe(true);
    expect(err.details).toMatchObject({ errno: 22 });
  });

  it('lists exports', async () => {
    const server = new NbdServer({
      exports: [
        { name: 'a', disk: memoryDisk(MiB), description: 'first' },
        { name: 'b', disk: memoryDisk(MiB) },
      ],
    });
    const { uri } = await server.listen({ port: 0 });
    cleanups.push(() => server.close());
    expect(await listExports(parseNbdUri(uri))).toEqual([
      { name: 'a', description: 'first' },
      { name: 'b', description: '' },
    ]);
  });

  it('reconnects and retries reads after a dropped connection, with a bound', async () => {
    const { uri } = await serve(memoryDisk(4 * MiB, { data: pattern(4 * MiB, 7) }));
    const proxy = await cuttableProxy(uri);
    const { port } = proxy;
    const disk = await openDisk(`nbd://127.0.0.1:${port}/d`, { transports: [nbd({ retryDelay: 5, retries: 2 })] });
    cleanups.push(() => disk.destroy());
    expect((await disk.read(0, 4096))[1]).toBe(pattern(2, 7)[1]);
    proxy.cut();
    const again = await disk.read(MiB, 65536);
    expect(Buffer.compare(again, pattern(4 * MiB, 7).subarray(MiB, MiB + 65536))).toBe(0);
    // The retries are bounded: with the server unreachable the read fails.
    proxy.refuse = true;
    proxy.cut();
    const failed = await disk.read(0, 4096).catch((e) => e);
    expect(isVdError(failed, 'ERR_VD_IO')).toBe(true);
  });

  it('reconnects by position: the first connection in this thread, the others through connectExtra, whatever it returned', async () => {
    const { server, uri } = await serve(memoryDisk(4 * MiB, { data: pattern(4 * MiB, 5) }));
    const { port, cut } = await cuttableProxy(uri);
    // A connectExtra that falls back to a connection in this thread (no `worker` flag), as one
    // whose worker could not start might.
    const extra: NbdClientConnection[] = [];
    const connectExtra = async (target: NbdTarget, o: HandshakeOptions) => {
      const c = await NbdConnection.open(target, o);
      extra.push(c);
      return c;
    };
    const disk = await openDisk(`nbd://127.0.0.1:${port}/d`, { transports: [nbd({ connections: 2, connectExtra, retryDelay: 5 })] });
    cleanups.push(() => disk.destroy());
    await vi.waitFor(() => expect(disk.info().connections).toBe(2));
    expect(extra.length).toBe(1);
    cut();
    await vi.waitFor(() => expect(extra[0]!.closed).toBe(true));
    const again = await disk.read(MiB, 65536);
    expect(Buffer.compare(again, pattern(4 * MiB, 5).subarray(MiB, MiB + 65536))).toBe(0);
    // The second connection came back through connectExtra, the first did not.
    expect(extra.length).toBe(2);
    expect(extra[1]!.closed).toBe(false);
    expect(disk.info().connections).toBe(2);
    await vi.waitFor(() => expect(server.connections).toBe(2));
  });

  it('a reconnect that fails part-way keeps the connections it opened: the read goes on over them, none is left open after close', async () => {
    const { server, uri } = await serve(memoryDisk(4 * MiB, { data: pattern(4 * MiB, 7) }));
    const { port, cut } = await cuttableProxy(uri);
    // connectExtra works when the disk opens, then fails (a worker that can no longer start).
    let extraCalls = 0;
    const connectExtra = async (target: NbdTarget, o: HandshakeOptions) => {
      if (++extraCalls > 1) throw new Error('no worker this time');
      return NbdConnection.open(target, o);
    };
    const disk = await openDisk(`nbd://127.0.0.1:${port}/d`, { transports: [nbd({ connections: 2, connectExtra, retryDelay: 5 })] });
    let closed = false;
    cleanups.push(async () => {
      if (!closed) await disk.destroy();
    });
    await vi.waitFor(() => expect(disk.info().connections).toBe(2));
    cut();
    await vi.waitFor(() => expect(server.connections).toBe(0));
    // The first connection comes back in this thread; the second cannot: the read uses the first.
    const again = await disk.read(MiB, 65536);
    expect(Buffer.compare(again, pattern(4 * MiB, 7).subarray(MiB, MiB + 65536))).toBe(0);
    expect(extraCalls).toBeGreaterThan(1);
    await disk.close();
    closed = true;
    // Every connection a reconnect opened was the disk's to close.
    await vi.waitFor(() => expect(server.connections).toBe(0));
  });

  it("reconnects after the signal it was opened with has fired: that signal bounds the open, not the disk's life", async () => {
    const { uri } = await serve(memoryDisk(4 * MiB, { data: pattern(4 * MiB, 6) }));
    const { port, cut } = await cuttableProxy(uri);
    // As with AbortSignal.timeout(): a deadline for opening, which passes while the disk is in use.
    const opening = new AbortController();
    const disk = await openDisk(`nbd://127.0.0.1:${port}/d`, {
      transports: [nbd({ connections: 1, retryDelay: 5 })],
      signal: opening.signal,
    });
    cleanups.push(() => disk.destroy());
    opening.abort(new Error('open deadline passed'));
    cut();
    const again = await disk.read(MiB, 65536);
    expect(Buffer.compare(again, pattern(4 * MiB, 6).subarray(MiB, MiB + 65536))).toBe(0);
  });

  it('destroy ends a reconnect whose handshake the server never answers at once, not after handshakeTimeout', async () => {
    const { uri } = await serve(memoryDisk(MiB));
    const proxy = await cuttableProxy(uri);
    // Waiting for this handshake timeout would outlast the test's own. (close() is graceful: it
    // waits for the read, whose retry this handshake is.)
    const disk = await openDisk(`nbd://127.0.0.1:${proxy.port}/d`, {
      transports: [nbd({ connections: 1, retryDelay: 1, handshakeTimeout: 60_000 })],
    });
    proxy.silent = true;
    proxy.cut();
    const read = disk.read(0, 4096).catch((e) => e);
    // The reconnect has connected and waits for a greeting that never comes.
    await vi.waitFor(() => expect(proxy.accepted).toBe(2));
    await disk.destroy();
    expect(isVdError(await read)).toBe(true);
    expect(proxy.accepted).toBe(2);
  }, 10_000);

  it('times out a handshake the server never answers', async () => {
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as { port: number }).port;
    const err = await openDisk(`nbd://127.0.0.1:${port}/x`, { transports: [nbd({ handshakeTimeout: 200 })] }).catch((e) => e);
    silent.close();
    expect(isVdError(err, 'ERR_VD_TIMEOUT')).toBe(true);
  });
});

const servers: NbdServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
});

runConformance({
  name: 'nbd client ↔ NbdServer (memory disk)',
  factory: async ({ readOnly }) => {
    const server = new NbdServer({ exports: [{ name: 'c', disk: memoryDisk(4 * MiB) }] });
    servers.push(server);
    const { uri } = await server.listen({ port: 0 });
    return openDisk(uri, { transports: [nbd()], readOnly });
  },
});

// Small limits, so the split and alignment cases run: 512-byte minimum, 1 MiB maximum payload.
runConformance({
  name: 'nbd client ↔ NbdServer (512-byte blocks, 1 MiB maximum payload)',
  factory: async ({ readOnly }) => {
    const disk = memoryDisk(4 * MiB, {
      granularity: 4096,
      capabilities: { blockSize: { minimum: 512, preferred: 4096, maximum: 32 * MiB } },
    });
    const server = new NbdServer({ exports: [{ name: 'c', disk }], limits: { maxPayload: MiB } });
    servers.push(server);
    const { uri } = await server.listen({ port: 0 });
    return openDisk(uri, { transports: [nbd()], readOnly });
  },
});
