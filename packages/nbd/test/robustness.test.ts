/**
 * Malicious and broken peers on either side: each gets a clear error and a closed connection,
 * other clients carry on, and nothing is allocated from an unchecked length.
 */
import { once } from 'node:events';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { Disk, isVdError, MemorySource, memoryDisk, openDisk, type VdError } from '@vd/core';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdServer, type NbdServerOptions, nbd } from '../src/index.js';
import {
  Chunk,
  ClientStreamDecoder,
  Cmd,
  DEFAULT_CLIENT_IN_FLIGHT,
  decodeInfoRequest,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeGreeting,
  encodeInfoExport,
  encodeInfoRequest,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOption,
  encodeOptionReply,
  HandshakeFlag,
  Info,
  type NbdRequest,
  Opt,
  Rep,
  ReplyFlag,
  requestHeaderSize,
  ServerStreamDecoder,
  TxFlag,
  writeChunkHeader,
  writeDataChunkHeader,
  writeRequestHeader,
} from '../src/protocol.js';

const MiB = 1 << 20;
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// ---------------------------------------------------------------------------------------------
// A raw client speaking bytes to our server

class RawClient {
  readonly socket: Socket;
  readonly decoder = new ServerStreamDecoder();
  readonly closed: Promise<void>;
  #buf: unknown[] = [];
  #wake: (() => void) | undefined;
  reads = new Map<number, Uint8Array>();

  constructor(port: number) {
    this.socket = netConnect({ port, host: '127.0.0.1' });
    this.socket.on('error', () => {});
    this.closed = new Promise((r) => this.socket.once('close', () => r()));
    this.socket.on('data', (c: Uint8Array) => {
      this.decoder.push(c);
      for (let m = this.decoder.next(); m; m = this.decoder.next()) this.#buf.push(m);
      this.#wake?.();
    });
    this.socket.on('close', () => this.#wake?.());
  }

  async next(): Promise<unknown> {
    for (;;) {
      if (this.#buf.length > 0) return this.#buf.shift();
      if (this.socket.destroyed || this.socket.readableEnded) return undefined;
      await new Promise<void>((r) => (this.#wake = r));
    }
  }

  send(...parts: Uint8Array[]): void {
    for (const p of parts) this.socket.write(p);
  }

  /** Greeting, flags, STRUCTURED_REPLY, SET_META_CONTEXT base:allocation, GO. */
  async handshake(name = 'd'): Promise<void> {
    await this.next();
    this.send(encodeClientFlags(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES), encodeOption(Opt.STRUCTURED_REPLY));
    expect(await this.next()).toMatchObject({ reply: Rep.ACK });
    this.send(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest(name, ['base:allocation'])));
    await this.next();
    await this.next();
    this.send(encodeOption(Opt.GO, encodeInfoRequest(name, [])));
    for (let m = (await this.next()) as { reply: number }; m.reply !== Rep.ACK; m = (await this.next()) as { reply: number }) {
      if (m.reply & 0x80000000) throw new Error(`GO refused ${m.reply}`);
    }
    this.decoder.enterTransmission(false, {
      simpleTarget: () => undefined,
      dataTarget: (cookie, _o, n) => {
        const b = new Uint8Array(n);
        this.reads.set(cookie, b);
        return b;
      },
    });
  }

  request(command: number, cookie: number, offset: number, length: number, flags = 0, payload?: Uint8Array): void {
    const h = new Uint8Array(28);
    writeRequestHeader(h, 0, false, flags, command, cookie, offset, length);
    this.send(h, ...(payload ? [payload] : []));
  }
}

async function serve(disk: Disk, opts: Partial<NbdServerOptions> = {}): Promise<{ server: NbdServer; port: number }> {
  const server = new NbdServer({ exports: [{ name: 'd', disk }], ...opts });
  const addr = await server.listen({ port: 0 });
  cleanups.push(() => server.close());
  return { server, port: addr.port! };
}

async function until(f: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(f()).toBe(true);
}

/** A 1 MiB source filled with `fill` whose reads wait for `release()`; `reading` settles when one has begun. */
function gatedSource(fill: number) {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const reading = new Promise<void>((r) => (entered = r));
  const src = new MemorySource(MiB, { data: new Uint8Array(MiB).fill(fill) });
  const slow = Object.assign(Object.create(src), {
    _read: async (o: number, into: Uint8Array, opts: object) => {
      entered();
      await gate;
      return src._read(o, into, opts);
    },
  });
  return { slow, reading, release };
}

describe('NbdServer against broken and malicious clients', () => {
  it('closes on wrong magic, unknown flags, oversized options, oversized writes; a healthy client carries on', async () => {
    const { server, port } = await serve(memoryDisk(MiB));
    const good = new RawClient(port);
    cleanups.push(() => good.socket.destroy());
    await good.handshake();

    const attacks: ((c: RawClient) => void)[] = [
      (c) => c.send(encodeClientFlags(0x80)),
      (c) => c.send(encodeClientFlags(1), new Uint8Array(16).fill(0x41)),
      // An option header claiming 4 GiB: closed on the header, nothing is buffered for it.
      (c) => {
        const o = encodeOption(Opt.GO);
        new DataView(o.buffer).setUint32(12, 0xffffffff);
        c.send(encodeClientFlags(1), o);
      },
      (c) => c.send(encodeClientFlags(1), encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode('nope'))),
    ];
    for (const attack of attacks) {
      const bad = new RawClient(port);
      await bad.next();
      attack(bad);
      await bad.closed;
    }
    // A client in transmission sending a 4 GiB WRITE header.
    const w = new RawClient(port);
    await w.handshake();
    w.request(Cmd.WRITE, 1, 0, 0xfffffff0);
    await w.closed;
    // Bad request magic.
    const m = new RawClient(port);
    await m.handshake();
    m.send(new Uint8Array(28).fill(7));
    await m.closed;

    good.request(Cmd.READ, 5, 0, 4096);
    expect(await good.next()).toMatchObject({ kind: 'data', cookie: 5, done: true, length: 4096 });
    await until(() => server.connections === 1);
  });

  it('answers options out of order with errors and keeps the connection', async () => {
    const { port } = await serve(memoryDisk(MiB));
    const c = new RawClient(port);
    cleanups.push(() => c.socket.destroy());
    await c.next();
    c.send(encodeClientFlags(1));
    c.send(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest('d', ['base:allocation'])));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    c.send(encodeOption(Opt.LIST, new Uint8Array(3)));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    const go = encodeInfoRequest('d', [Info.NAME]);
    c.send(encodeOption(Opt.GO, go.subarray(0, go.length - 1)));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    c.send(encodeOption(Opt.GO, encodeInfoRequest('missing', [])));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_UNKNOWN });
    c.send(encodeOption(Opt.STARTTLS));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_POLICY });
    c.send(encodeOption(99));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_UNSUP });
    c.send(encodeOption(Opt.STRUCTURED_REPLY));
    expect(await c.next()).toMatchObject({ reply: Rep.ACK });
    c.send(encodeOption(Opt.STRUCTURED_REPLY));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    c.send(encodeOption(Opt.EXTENDED_HEADERS, new Uint8Array(1)));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    c.send(encodeOption(Opt.EXTENDED_HEADERS));
    expect(await c.next()).toMatchObject({ reply: Rep.ACK });
    c.send(encodeOption(Opt.EXTENDED_HEADERS));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_INVALID });
    // Structured replies once extended headers are on: the server says the latter supersede them.
    c.send(encodeOption(Opt.STRUCTURED_REPLY));
    expect(await c.next()).toMatchObject({ reply: Rep.ERR_EXT_HEADER_REQD });
    c.send(encodeOption(Opt.ABORT));
    expect(await c.next()).toMatchObject({ reply: Rep.ACK });
    await c.closed;
  });

  it('answers bad requests with errors: unknown command, bad flags, out of range, block status without contexts', async () => {
    const { port } = await serve(memoryDisk(MiB));
    const c = new RawClient(port);
    cleanups.push(() => c.socket.destroy());
    await c.handshake();
    c.request(42, 1, 0, 512);
    c.request(Cmd.READ, 2, 0, 512, 0x40);
    c.request(Cmd.READ, 3, MiB - 512, 1024);
    c.request(Cmd.WRITE, 4, MiB, 512, 0, new Uint8Array(512));
    c.request(Cmd.FLUSH, 5, 1, 0);
    const got = new Map<number, unknown>();
    for (let i = 0; i < 5; i++) {
      const m = (await c.next()) as { cookie: number };
      got.set(m.cookie, m);
    }
    expect(got.get(1)).toMatchObject({ kind: 'error', error: 22 });
    expect(got.get(2)).toMatchObject({ kind: 'error', error: 22 });
    expect(got.get(3)).toMatchObject({ kind: 'error', error: 22 });
    expect(got.get(4)).toMatchObject({ kind: 'error', error: 28 });
    expect(got.get(5)).toMatchObject({ kind: 'error', error: 22 });
    // The connection is still good.
    c.request(Cmd.BLOCK_STATUS, 6, 0, MiB);
    expect(await c.next()).toMatchObject({ kind: 'blockStatus', cookie: 6, done: true, contextId: 1 });
  });

  it('drops a client that never finishes the handshake (slowloris)', async () => {
    const { server, port } = await serve(memoryDisk(MiB), { limits: { handshakeTimeout: 200 } });
    const c = new RawClient(port);
    await c.next();
    c.send(encodeClientFlags(1), encodeOption(Opt.GO).subarray(0, 10));
    await c.closed;
    await until(() => server.connections === 0);
  });

  it('drops a client that leaves a request half-sent (slowloris in transmission)', async () => {
    const { server, port } = await serve(memoryDisk(MiB), { limits: { frameTimeout: 200 } });
    const c = new RawClient(port);
    await c.handshake();
    c.request(Cmd.READ, 1, 0, 512);
    expect(await c.next()).toMatchObject({ kind: 'data', cookie: 1 });
    const h = new Uint8Array(28);
    writeRequestHeader(h, 0, false, 0, Cmd.READ, 2, 0, 512);
    c.send(h.subarray(0, 10));
    await c.closed;
    await until(() => server.connections === 0);
  });

  it('drops a client that stops half-way through a WRITE payload (read straight into its buffer)', async () => {
    const { server, port } = await serve(memoryDisk(MiB), { limits: { frameTimeout: 200 } });
    const c = new RawClient(port);
    await c.handshake();
    const h = new Uint8Array(28);
    writeRequestHeader(h, 0, false, 0, Cmd.WRITE, 1, 0, 256 * 1024);
    c.send(h, new Uint8Array(1000).fill(7));
    await c.closed;
    await until(() => server.connections === 0);
  });

  it('limits connections; a truncated frame followed by a close frees the slot', async () => {
    const { server, port } = await serve(memoryDisk(MiB), { limits: { maxConnections: 2 } });
    const a = new RawClient(port);
    const b = new RawClient(port);
    cleanups.push(
      () => a.socket.destroy(),
      () => b.socket.destroy(),
    );
    await a.handshake();
    await b.next();
    const c = new RawClient(port);
    await c.closed;
    expect(await c.next()).toBeUndefined();
    b.send(encodeClientFlags(1), encodeOption(Opt.GO, encodeInfoRequest('d', [])).subarray(0, 20));
    b.socket.end();
    await b.closed;
    await until(() => server.connections === 1);
    const d = new RawClient(port);
    cleanups.push(() => d.socket.destroy());
    await d.handshake();
  });

  it('keeps at most maxInFlight requests of one client at the disk', async () => {
    let active = 0;
    let peak = 0;
    const src = new MemorySource(MiB);
    const slow = Object.assign(Object.create(src), {
      _read: async (o: number, into: Uint8Array, opts: object) => {
        active++;
        peak = Math.max(peak, active);
        await new Promise((r) => setTimeout(r, 5));
        active--;
        return src._read(o, into, opts);
      },
    });
    const { port } = await serve(new Disk(slow), { limits: { maxInFlight: 3 } });
    const c = new RawClient(port);
    cleanups.push(() => c.socket.destroy());
    await c.handshake();
    for (let i = 0; i < 20; i++) c.request(Cmd.READ, i + 1, i * 4096, 4096);
    const seen = new Set<number>();
    for (let i = 0; i < 20; i++) seen.add(((await c.next()) as { cookie: number }).cookie);
    expect(seen.size).toBe(20);
    expect(peak).toBe(3);
  });

  it('shuts down gracefully: requests in flight finish, new options are refused', async () => {
    const { slow, reading, release } = gatedSource(9);
    const { server, port } = await serve(new Disk(slow));
    const c = new RawClient(port);
    await c.handshake();
    const waiting = new RawClient(port);
    await waiting.next();
    waiting.send(encodeClientFlags(1));
    c.request(Cmd.READ, 7, 0, 4096);
    await reading;
    expect(server.connections).toBe(2);
    const closing = server.close();
    waiting.send(encodeOption(Opt.LIST));
    // The handshaking client is dropped; the reader gets its data, then the close.
    setTimeout(release, 50);
    expect(await c.next()).toMatchObject({ kind: 'data', cookie: 7, done: true });
    expect(c.reads.get(7)?.every((b) => b === 9)).toBe(true);
    await closing;
    await c.closed;
    await waiting.closed;
  });

  it('a graceful close while a client disconnects (DISC sent, requests in flight) still answers them', async () => {
    const { slow, reading, release } = gatedSource(5);
    const { server, port } = await serve(new Disk(slow));
    const c = new RawClient(port);
    await c.handshake();
    // As libnbd's nbd_shutdown does with commands pending: READ, then DISC, in one packet (so the
    // server has taken both by the time the read reaches the disk).
    const both = new Uint8Array(56);
    writeRequestHeader(both, 0, false, 0, Cmd.READ, 8, 0, 4096);
    writeRequestHeader(both, 28, false, 0, Cmd.DISC, 9, 0, 0);
    c.send(both);
    await reading;
    const closing = server.close();
    setTimeout(release, 50);
    expect(await c.next()).toMatchObject({ kind: 'data', cookie: 8, done: true });
    expect(c.reads.get(8)?.every((b) => b === 5)).toBe(true);
    await closing;
    await c.closed;
  });
});

// ---------------------------------------------------------------------------------------------
// A fake server misbehaving towards our client

type Misbehave = (req: NbdRequest, sock: Socket) => void;

async function fakeServer(onRequest: Misbehave, greeting?: Uint8Array, dribble = false): Promise<string> {
  const server: Server = createServer((real) => {
    real.on('error', () => {});
    // With `dribble`, handshake bytes go out a few at a time, so the client sees many small reads.
    let chain = Promise.resolve();
    const sock = dribble
      ? (Object.assign(Object.create(real), {
          write(b: Uint8Array) {
            for (let at = 0; at < b.length; at += 5) {
              const part = b.slice(at, at + 5);
              chain = chain.then(() => new Promise<void>((r) => setTimeout(() => real.write(part, () => r()), 1)));
            }
            return true;
          },
        }) as Socket)
      : real;
    sock.write(greeting ?? encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
    const d = new ClientStreamDecoder();
    real.on('data', (chunk: Uint8Array) => {
      try {
        d.push(chunk);
        for (let m = d.next(); m; m = d.next()) {
          if (m.kind === 'option') {
            if (m.option === Opt.STRUCTURED_REPLY) sock.write(encodeOptionReply(m.option, Rep.ACK));
            else if (m.option === Opt.SET_META_CONTEXT) {
              sock.write(encodeOptionReply(m.option, Rep.META_CONTEXT, encodeMetaContextReply(1, 'base:allocation')));
              sock.write(encodeOptionReply(m.option, Rep.ACK));
            } else if (m.option === Opt.GO) {
              decodeInfoRequest(m.data);
              sock.write(encodeOptionReply(m.option, Rep.INFO, encodeInfoExport(MiB, TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH)));
              sock.write(encodeOptionReply(m.option, Rep.ACK));
              d.enterTransmission(false);
            } else sock.write(encodeOptionReply(m.option, Rep.ERR_UNSUP));
          } else if (m.kind === 'request') onRequest(m, sock);
        }
      } catch {
        real.destroy();
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => server.close());
  return `nbd://127.0.0.1:${(server.address() as { port: number }).port}/x`;
}

function chunkHeader(flags: number, type: number, cookie: bigint, length: number): Uint8Array {
  const h = new Uint8Array(20);
  writeChunkHeader(h, 0, false, flags, type, cookie, 0, length);
  return h;
}

async function failsWith(
  uri: string,
  code: VdError['code'],
  re: RegExp,
  op: (d: Disk) => Promise<unknown> = (d) => d.read(0, 4096),
): Promise<void> {
  const disk = await openDisk(uri, { transports: [nbd({ retries: 0 })] });
  cleanups.push(() => disk.destroy());
  const err = (await op(disk).catch((e: unknown) => e)) as VdError;
  expect(isVdError(err, code), String(err)).toBe(true);
  expect(String(err.message)).toMatch(re);
}

describe('our client against broken and malicious servers', () => {
  it('refuses a peer that is not an NBD server', async () => {
    const uri = await fakeServer(() => {}, new TextEncoder().encode('SSH-2.0-OpenSSH_9.2\r\n'));
    const err = await openDisk(uri, { transports: [nbd()] }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_PROTOCOL')).toBe(true);
    expect(err.message).toMatch(/NBDMAGIC/);
  });

  it('survives a handshake that arrives a few bytes at a time (reads into one reused buffer)', async () => {
    const uri = await fakeServer(
      (req, sock) => {
        const h = new Uint8Array(16);
        new DataView(h.buffer).setUint32(0, 0x67446698);
        new DataView(h.buffer).setBigUint64(8, req.cookie);
        sock.write(h);
        if (req.command === Cmd.READ) sock.write(new Uint8Array(req.length).fill(3));
      },
      undefined,
      true,
    );
    const disk = await openDisk(uri, { transports: [nbd()] });
    cleanups.push(() => disk.destroy());
    expect((await disk.read(0, 4096)).every((b) => b === 3)).toBe(true);
  });

  it('fails on a reply for a request never sent', async () => {
    const uri = await fakeServer((req, sock) => sock.write(chunkHeader(ReplyFlag.DONE, Chunk.NONE, req.cookie + 1000n, 0)));
    await failsWith(uri, 'ERR_VD_PROTOCOL', /no request in flight/);
  });

  it('fails on a duplicate reply for a cookie already answered', async () => {
    const uri = await fakeServer((req, sock) => {
      sock.write(chunkHeader(ReplyFlag.DONE, Chunk.NONE, req.cookie, 0));
      sock.write(chunkHeader(ReplyFlag.DONE, Chunk.NONE, req.cookie, 0));
    });
    const disk = await openDisk(uri, { transports: [nbd({ retries: 0 })] });
    cleanups.push(() => disk.destroy());
    await disk.flush();
    const err = await disk.flush().catch((e) => e);
    expect(isVdError(err)).toBe(true);
  });

  it('fails on read data outside the request and on a read left incomplete', async () => {
    const outside = await fakeServer((req, sock) => {
      const h = new Uint8Array(28);
      writeDataChunkHeader(h, 0, false, ReplyFlag.DONE, req.cookie, req.offset, req.offset + 4096, 512);
      sock.write(h);
      sock.write(new Uint8Array(512));
    });
    await failsWith(outside, 'ERR_VD_PROTOCOL', /outside its request/);
    const partial = await fakeServer((req, sock) => {
      const h = new Uint8Array(28);
      writeDataChunkHeader(h, 0, false, ReplyFlag.DONE, req.cookie, req.offset, req.offset, 512);
      sock.write(h);
      sock.write(new Uint8Array(512));
    });
    await failsWith(partial, 'ERR_VD_PROTOCOL', /completed with 512 bytes/);
  });

  it('fails on oversized chunk lengths and extent counts without allocating for them', async () => {
    const huge = await fakeServer((req, sock) => sock.write(chunkHeader(ReplyFlag.DONE, Chunk.BLOCK_STATUS, req.cookie, 0xfffffff0)));
    await failsWith(huge, 'ERR_VD_PROTOCOL', /limit/, async (d) => {
      for await (const _ of d.extents()) {
        // drain
      }
    });
    const badCount = await fakeServer((req, sock) => {
      const c = encodeBlockStatusChunk(false, ReplyFlag.DONE, req.cookie, 0, 1, [{ length: 512, flags: 0 }]);
      new DataView(c.buffer).setUint16(6, Chunk.BLOCK_STATUS_EXT);
      sock.write(c);
    });
    await failsWith(badCount, 'ERR_VD_PROTOCOL', /extended/, async (d) => {
      for await (const _ of d.extents()) {
        // drain
      }
    });
  });

  it('fails requests in flight with a coded error when the server drops mid-reply (truncated frame)', async () => {
    const uri = await fakeServer((req, sock) => {
      const h = new Uint8Array(28);
      writeDataChunkHeader(h, 0, false, ReplyFlag.DONE, req.cookie, req.offset, req.offset, req.length);
      sock.write(h);
      sock.end(new Uint8Array(100));
    });
    await failsWith(uri, 'ERR_VD_IO', /lost/);
  });

  it.each([
    ['set', { maxInFlight: 3 }, 3],
    ['default', {}, DEFAULT_CLIENT_IN_FLIGHT],
  ])('never sends more requests than its window (%s), and fills it', async (_, options, window) => {
    let inFlight = 0;
    let peak = 0;
    const uri = await fakeServer((req, sock) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      setTimeout(() => {
        inFlight--;
        const h = new Uint8Array(16);
        new DataView(h.buffer).setUint32(0, 0x67446698);
        new DataView(h.buffer).setBigUint64(8, req.cookie);
        sock.write(h);
        if (req.command === Cmd.READ) sock.write(new Uint8Array(req.length));
      }, 2);
    });
    const disk = await openDisk(uri, { transports: [nbd(options)] });
    cleanups.push(() => disk.destroy());
    expect(disk.info().connections).toBe(1);
    await Promise.all(Array.from({ length: 3 * window }, (_, i) => disk.read(i * 4096, 4096)));
    expect(peak).toBe(window);
    expect(requestHeaderSize(false)).toBe(28);
  });
});
