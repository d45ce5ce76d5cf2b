import { once } from 'node:events';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

// The addon is optional; when its build failed this suite says so instead of failing, unless
// peers are required (CI), where a missing addon is a failure.
const mod = (await import('@vd/sparse').catch((err: unknown) => err)) as typeof import('@vd/sparse') | Error;
const loaded = !(mod instanceof Error);
const required = process.env.VD_REQUIRE_PEERS === '1';

const dir = mkdtempSync(join(tmpdir(), 'vd-sparse-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!loaded && !required)('@vd/sparse', () => {
  const { seekData, seekHole, punchHole } = mod as typeof import('@vd/sparse');

  it('finds data and holes, and punches a hole that reads as zeroes', async () => {
    const path = join(dir, 'a.img');
    const fd = openSync(path, 'w+');
    try {
      writeSync(fd, new Uint8Array(4096).fill(1), 0, 4096, 1 << 20);
      writeSync(fd, new Uint8Array(1).fill(2), 0, 1, (4 << 20) - 1);
      expect(seekData(fd, 0)).toBe(1 << 20);
      expect(seekHole(fd, 1 << 20)).toBe((1 << 20) + 4096);
      expect(seekData(fd, (1 << 20) + 4096)).toBe((4 << 20) - 4096);
      expect(seekHole(fd, (4 << 20) - 4096)).toBe(4 << 20);
      expect(seekData(fd, 4 << 20)).toBe(-1);
      expect(seekHole(fd, 5 << 20)).toBe(-1);

      const before = fstatSync(fd).blocks;
      expect(await punchHole(fd, 1 << 20, 4096)).toBe(true);
      expect(before - fstatSync(fd).blocks).toBe(8);
      expect(fstatSync(fd).size).toBe(4 << 20);
      expect(seekData(fd, 0)).toBe((4 << 20) - 4096);
    } finally {
      closeSync(fd);
    }
  });

  it('checks its arguments and reports errno like node:fs', async () => {
    expect(() => seekData('3' as unknown as number, 0)).toThrow(TypeError);
    expect(() => seekHole(3, -1)).toThrow(TypeError);
    expect(() => seekHole(3, 2 ** 53)).toThrow(TypeError);
    expect(() => seekData(3, 1.5)).toThrow(TypeError);
    expect(() => punchHole(3, 0, Number.NaN)).toThrow(TypeError);
    expect(() => (seekData as unknown as (fd: number) => number)(3)).toThrow(TypeError);
    expect(() => punchHole(3, 2 ** 52, 2 ** 52)).toThrow(RangeError);

    // A descriptor that is not open.
    const fd = openSync(join(dir, 'b.img'), 'w+');
    closeSync(fd);
    let err: NodeJS.ErrnoException | undefined;
    try {
      seekData(fd, 0);
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err).toMatchObject({ code: 'EBADF', syscall: 'lseek(SEEK_DATA)' });
    await expect(punchHole(fd, 0, 4096)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
  });
});

/** A connected unix-socket pair: `server` is node's side whose descriptor the addon writes to. */
async function socketPair(name: string): Promise<{ server: Socket; client: Socket; listener: Server }> {
  const path = join(dir, `${name}.sock`);
  const listener = createServer();
  listener.listen(path);
  await once(listener, 'listening');
  const accepted = once(listener, 'connection');
  const client = connect(path);
  await once(client, 'connect');
  const [server] = (await accepted) as [Socket];
  return { server, client, listener };
}

function fdOf(s: Socket): number {
  return (s as unknown as { _handle: { fd: number } })._handle.fd;
}

/** Collects what the client receives until `n` bytes have arrived. */
function receive(client: Socket, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve, reject) => {
    client.on('error', reject);
    client.on('data', (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= n) resolve(Buffer.concat(chunks));
    });
  });
}

describe.skipIf(!loaded && !required)('@vd/sparse sendFile', () => {
  const { sendFile, sendFiles, setSendBuffer, dup, close } = mod as typeof import('@vd/sparse');
  const size = 3 << 20;
  const content = Buffer.alloc(size);
  for (let i = 0; i < size; i++) content[i] = (i * 13 + (i >> 10)) & 255;
  const filePath = join(dir, 'payload.bin');
  writeFileSync(filePath, content);

  /**
   * Runs `fn` with a connected unix socket pair and `sock`, a dup of the server end (the
   * descriptor the addon writes to); closes them all afterwards.
   */
  async function withSockets(name: string, fn: (s: { sock: number; server: Socket; client: Socket }) => Promise<void>): Promise<void> {
    const { server, client, listener } = await socketPair(name);
    const sock = dup(fdOf(server));
    try {
      await fn({ sock, server, client });
    } finally {
      close(sock);
      server.destroy();
      client.destroy();
      listener.close();
    }
  }

  it('sends the header, then exactly the file range, through a dup of the socket', () =>
    withSockets('a', async ({ sock, client, server }) => {
      const file = openSync(filePath, 'r');
      try {
        expect(sock).not.toBe(fdOf(server));
        const header = Buffer.from('HEADER-0123456789');
        const arriving = receive(client, header.length + (2 << 20) + 100 + 4096);
        await sendFile(sock, file, 12345, 2 << 20, { header });
        await sendFile(sock, file, 7, 100);
        // Past the end of the file: the missing bytes arrive as zeroes.
        await sendFile(sock, file, size - 1000, 4096, { header: null });
        const got = await arriving;
        expect(got.length).toBe(header.length + (2 << 20) + 100 + 4096);
        const h = header.length;
        const a = h + (2 << 20);
        const b = a + 100;
        const c = b + 1000;
        expect(got.subarray(0, h).equals(header)).toBe(true);
        expect(got.subarray(h, a).equals(content.subarray(12345, 12345 + (2 << 20)))).toBe(true);
        expect(got.subarray(a, b).equals(content.subarray(7, 107))).toBe(true);
        expect(got.subarray(b, c).equals(content.subarray(size - 1000))).toBe(true);
        expect(got.subarray(c).every((x) => x === 0)).toBe(true);
      } finally {
        closeSync(file);
      }
    }));

  it('sends a batch of pieces in order, each header before its range', () =>
    withSockets('batch', async ({ sock, client }) => {
      const file = openSync(filePath, 'r');
      try {
        // Replies as an NBD server batches them: headers of assorted sizes, a range split over two
        // pieces (the second without a header), a header alone, and a range past the end of the file.
        const pieces = [
          { header: Buffer.from('first'), fileFd: file, position: 0, length: 70_000 },
          { fileFd: file, position: 1 << 20, length: 300 },
          { header: Buffer.alloc(64, 7), fileFd: file, position: 5, length: 0 },
          { header: Buffer.from('x'), fileFd: file, position: size - 10, length: 30 },
          ...Array.from({ length: 40 }, (_, i) => ({ header: Buffer.from([i]), fileFd: file, position: i * 4099, length: 4099 })),
        ];
        const expected = Buffer.concat(
          pieces.flatMap((p) => {
            const body = Buffer.alloc(p.length);
            content.copy(body, 0, p.position, Math.min(size, p.position + p.length));
            return [p.header ?? Buffer.alloc(0), body];
          }),
        );
        const arriving = receive(client, expected.length);
        await sendFiles(sock, pieces);
        expect((await arriving).equals(expected)).toBe(true);
        expect(() => sendFiles(sock, [])).toThrow(RangeError);
        expect(() =>
          sendFiles(
            sock,
            Array.from({ length: 1025 }, () => ({ fileFd: file, position: 0, length: 1 })),
          ),
        ).toThrow(RangeError);
        expect(() => sendFiles(sock, [{ fileFd: file, position: -1, length: 1 }])).toThrow(TypeError);
        expect(() => sendFiles(sock, [{ fileFd: file, position: 0, length: 1, header: new Uint8Array(65) }])).toThrow(TypeError);
      } finally {
        closeSync(file);
      }
    }));

  it('sends a file sendfile refuses (EINVAL: a /proc file) through a buffer, whole, and says how much', () =>
    withSockets('fallback', async ({ sock, client }) => {
      const environ = openSync('/proc/self/environ', 'r');
      try {
        const want = readFileSync('/proc/self/environ');
        const header = Buffer.from('H');
        const arriving = receive(client, 2 * (header.length + want.length + 10));
        // Twice, the second range after a piece that went zero-copy; 10 bytes past the end come as zeroes.
        const copied = await sendFiles(sock, [
          { header, fileFd: environ, position: 0, length: want.length + 10 },
          { header, fileFd: environ, position: 0, length: want.length + 10 },
        ]);
        expect(copied).toBe(2 * want.length);
        const got = await arriving;
        const one = Buffer.concat([header, want, Buffer.alloc(10)]);
        expect(got.equals(Buffer.concat([one, one]))).toBe(true);
        // A regular file goes zero-copy: nothing copied, also behind a refused file in one batch.
        const regular = openSync(filePath, 'r');
        const ten = receive(client, 10);
        expect(await sendFile(sock, regular, 0, 10)).toBe(0);
        await ten;
        const mixed = receive(client, want.length + 4096 + 1 + want.length);
        expect(
          await sendFiles(sock, [
            { fileFd: environ, position: 0, length: want.length },
            { header, fileFd: regular, position: 4096, length: 4096 },
            { fileFd: environ, position: 0, length: want.length },
          ]),
        ).toBe(2 * want.length);
        expect((await mixed).equals(Buffer.concat([want, header, content.subarray(4096, 8192), want]))).toBe(true);
        closeSync(regular);
      } finally {
        closeSync(environ);
      }
    }));

  it('sizes a socket send buffer as the kernel grants it (doubled, capped at wmem_max)', () =>
    withSockets('sndbuf', async ({ sock }) => {
      const max = Number(readFileSync('/proc/sys/net/core/wmem_max', 'utf8'));
      expect(setSendBuffer(sock, 65536)).toBe(2 * Math.min(65536, max));
      expect(setSendBuffer(sock, 64 << 20)).toBe(2 * Math.min(64 << 20, max));
      const gone = openSync(filePath, 'r');
      expect(() => setSendBuffer(gone, 65536)).toThrow(expect.objectContaining({ code: 'ENOTSOCK', syscall: 'setsockopt' }));
      closeSync(gone);
      expect(() => setSendBuffer(sock, 2 ** 31)).toThrow(RangeError);
      expect(() => setSendBuffer(sock, -1)).toThrow(/^bytes must be a non-negative safe integer$/);
      expect(() => setSendBuffer(2 ** 31, 4096)).toThrow(RangeError);
    }));

  it('gives up on a peer that stops reading: ETIMEDOUT after the stall limit, ECANCELED on abort', () =>
    withSockets('b', async ({ sock, client }) => {
      client.pause();
      const big = join(dir, 'big.bin');
      const bfd = openSync(big, 'w+');
      writeSync(bfd, new Uint8Array(1), 0, 1, (64 << 20) - 1);
      try {
        // The socket's buffer took part of it before the stall: the error says how much.
        const stalled = (await sendFile(sock, bfd, 0, 64 << 20, { stallTimeout: 300 }).catch((e) => e)) as {
          code: string;
          bytesSent: number;
        };
        expect(stalled.code).toBe('ETIMEDOUT');
        expect(stalled.bytesSent).toBeGreaterThan(0);
        expect(stalled.bytesSent).toBeLessThan(64 << 20);
        const ac = new AbortController();
        const sending = sendFile(sock, bfd, 0, 64 << 20, { stallTimeout: 60_000, signal: ac.signal });
        setTimeout(() => ac.abort(), 200);
        await expect(sending).rejects.toMatchObject({ code: 'ECANCELED', syscall: 'sendfile' });
        // An already aborted signal never starts.
        await expect(sendFile(sock, bfd, 0, 1, { signal: ac.signal })).rejects.toMatchObject({
          code: 'ECANCELED',
          syscall: 'sendfile',
          bytesSent: 0,
          cause: ac.signal.reason,
        });
      } finally {
        closeSync(bfd);
      }
    }));

  it('reports a peer that left as EPIPE or ECONNRESET, without a signal killing the process', () =>
    withSockets('c', async ({ sock, client }) => {
      const file = openSync(filePath, 'r');
      try {
        client.destroy();
        await once(client, 'close');
        const err = await sendFile(sock, file, 0, size, { header: Buffer.from('x') }).catch((e: NodeJS.ErrnoException) => e);
        expect(['EPIPE', 'ECONNRESET']).toContain((err as NodeJS.ErrnoException).code);
      } finally {
        closeSync(file);
      }
    }));

  it('checks its arguments and reports bad descriptors as coded system errors', async () => {
    const file = openSync(filePath, 'r');
    const gone = openSync(join(dir, 'gone.bin'), 'w+');
    closeSync(gone);
    try {
      expect(() => sendFile(-1, file, 0, 1)).toThrow(TypeError);
      expect(() => sendFile(3, file, 0.5, 1)).toThrow(TypeError);
      expect(() => sendFile(3, file, 2 ** 52, 2 ** 52)).toThrow(RangeError);
      expect(() => sendFile(3, file, 0, 1, { header: new Uint8Array(65) })).toThrow(TypeError);
      expect(() => sendFile(3, file, 0, 1, { header: 'abc' as unknown as Uint8Array })).toThrow(TypeError);
      await expect(sendFile(gone, file, 0, 10)).rejects.toMatchObject({ code: 'EBADF', syscall: 'sendfile' });
      await expect(sendFile(gone, file, 0, 10, { header: new Uint8Array(4) })).rejects.toMatchObject({ code: 'EBADF', syscall: 'send' });
      // A regular file is no socket: the header cannot be sent to it.
      await expect(sendFile(file, file, 0, 10, { header: new Uint8Array(4) })).rejects.toMatchObject({ code: 'ENOTSOCK' });
      expect(() => dup(gone)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'dup' }));
      expect(() => close(gone)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'close' }));
    } finally {
      closeSync(file);
    }
  });
});
