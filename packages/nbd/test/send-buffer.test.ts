import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { peerRequired } from '@vd/conformance/peers';
import { memoryDisk, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, nbd } from '../src/index.js';
import { checkSendBuffer, loadSetSendBuffer, sizeSendBuffer } from '../src/send-buffer.js';
import { tempDir } from './helpers.js';

// Socket send buffers are sized through @vd/sparse. Without the addon these tests skip, unless
// peers are required (CI), where the addon must have built.
const addon = await import('@vd/sparse').catch(() => undefined);
const skip = !addon && !peerRequired();

const MiB = 1 << 20;
const wmemMax = Number(readFileSync('/proc/sys/net/core/wmem_max', 'utf8'));
/** What the kernel grants for a request of `bytes`: doubled, capped at twice net.core.wmem_max. */
const granted = (bytes: number) => 2 * Math.min(bytes, wmemMax);

describe('checkSendBuffer', () => {
  it('takes 0 (the kernel default) to 1 GiB and refuses the rest with a coded error naming the option', () => {
    for (const ok of [0, 1, 2 * MiB, 0x3fffffff]) expect(() => checkSendBuffer(ok, 'sendBuffer')).not.toThrow();
    for (const bad of [-1, 1.5, 2 ** 30, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => checkSendBuffer(bad, 'sendBuffer'), String(bad)).toThrow(
        expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT', message: expect.stringContaining('sendBuffer') }),
      );
    }
  });
});

describe.skipIf(skip)('unix socket send buffers', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  const closers: (() => unknown)[] = [];

  beforeAll(async () => {
    tmp = await tempDir();
  });
  afterAll(async () => {
    for (const c of closers.reverse()) await c();
    await tmp.cleanup();
  });

  /** A unix server whose connections never read; a client connected to it. */
  async function stalledPair(name: string): Promise<Socket> {
    const path = join(tmp.dir, name);
    const peers: Socket[] = [];
    const server: Server = createServer((s) => {
      s.pause();
      peers.push(s);
    });
    server.listen(path);
    await once(server, 'listening');
    const client = connect(path);
    await once(client, 'connect');
    closers.push(() => {
      client.destroy();
      for (const p of peers) p.destroy();
      return new Promise((r) => server.close(r));
    });
    return client;
  }

  /** Bytes the kernel took from 8 MiB written in 64 KiB pieces while the peer reads nothing. */
  async function taken(client: Socket): Promise<number> {
    const piece = Buffer.alloc(64 << 10, 1);
    const total = 8 * MiB;
    for (let at = 0; at < total; at += piece.length) client.write(piece);
    await new Promise((r) => setTimeout(r, 100));
    return total - client.writableLength;
  }

  it('lets the kernel queue what was asked for, where the default stops at about 208 KiB', async () => {
    const set = await loadSetSendBuffer();
    expect(set).toBeTypeOf('function');
    const plain = await stalledPair('plain.sock');
    const sized = await stalledPair('sized.sock');
    expect(sizeSendBuffer(sized, 2 * MiB, set)).toBe(granted(2 * MiB));
    const [little, more] = [await taken(plain), await taken(sized)];
    expect(little).toBeGreaterThan(0);
    expect(little).toBeLessThan(512 << 10);
    // Where net.core.wmem_max lets it, the larger buffer holds several times the default's data.
    if (wmemMax >= MiB) expect(more).toBeGreaterThan(4 * little);
    else expect(more).toBeLessThanOrEqual(2 * little);
  });

  it('leaves TCP sockets, a size of 0, and a missing call alone', async () => {
    const set = await loadSetSendBuffer();
    const server = createServer((s) => s.destroy());
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const tcp = connect((server.address() as { port: number }).port, '127.0.0.1');
    await once(tcp, 'connect');
    closers.push(() => {
      tcp.destroy();
      return new Promise((r) => server.close(r));
    });
    expect(sizeSendBuffer(tcp, 2 * MiB, set)).toBeUndefined();
    const unix = await stalledPair('zero.sock');
    expect(sizeSendBuffer(unix, 0, set)).toBeUndefined();
    expect(sizeSendBuffer(unix, 2 * MiB, undefined)).toBeUndefined();
  });

  it('the server enlarges each unix socket, whether its READs go zero-copy or are copied, not over TCP or when told 0', async () => {
    const accepted = async (limits: { zeroCopySends?: number; sendBuffer?: number }, where: 'unix' | 'tcp') => {
      const server = new NbdServer({ exports: [{ name: 'd', disk: memoryDisk(MiB) }], limits });
      const n = closers.length;
      const { uri } =
        where === 'unix'
          ? await server.listen({ path: join(tmp.dir, `srv${n}.sock`) })
          : await server.listen({ host: '127.0.0.1', port: 0 });
      closers.push(() => server.close());
      const disk = await openDisk(uri, { transports: [nbd({ sendBuffer: 0, connections: 1 })] });
      await disk.close();
      return server.stats.enlargedSendBuffers;
    };
    expect(await accepted({}, 'unix')).toBe(1);
    expect(await accepted({ zeroCopySends: 0 }, 'unix')).toBe(1);
    expect(await accepted({ sendBuffer: 0 }, 'unix')).toBe(0);
    expect(await accepted({}, 'tcp')).toBe(0);
  });

  it('the client enlarges its unix socket by default, not over TCP or when told 0, and refuses a bad size', async () => {
    const server = new NbdServer({ exports: [{ name: 'd', disk: memoryDisk(MiB) }] });
    const { uri: unixUri } = await server.listen({ path: join(tmp.dir, 'nbd.sock') });
    const tcpServer = new NbdServer({ exports: [{ name: 'd', disk: memoryDisk(MiB) }] });
    const { uri: tcpUri } = await tcpServer.listen({ host: '127.0.0.1', port: 0 });
    closers.push(
      () => server.close(),
      () => tcpServer.close(),
    );
    const sendBuffer = async (uri: string, opts: Parameters<typeof nbd>[0] = {}) => {
      const disk = await openDisk(uri, { transports: [nbd(opts)] });
      try {
        return disk.info().sendBuffer;
      } finally {
        await disk.close();
      }
    };
    expect(await sendBuffer(unixUri)).toBe(granted(2 * MiB));
    expect(await sendBuffer(unixUri, { sendBuffer: 512 << 10 })).toBe(granted(512 << 10));
    expect(await sendBuffer(unixUri, { sendBuffer: 0 })).toBeUndefined();
    expect(await sendBuffer(tcpUri)).toBeUndefined();
    await expect(sendBuffer(unixUri, { sendBuffer: -1 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
  });
});
