import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { isVdError, type VdError } from '@vd/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CertificatePair, generateCa, generateClientCertificate, generateServerCertificate } from './certs.js';
import { type ClientTlsOptions, startTlsClient } from './client-tls.js';
import { parsePskFile, pickPsk } from './psk.js';
import { type ClientIdentity, ServerTls, type ServerTlsOptions } from './server-tls.js';
import { formatThumbprint, thumbprintOf } from './thumbprint.js';

/**
 * A real node:tls client and server over loopback TCP, upgraded the way STARTTLS does: a plain
 * socket first, then TLS on top of it.
 */

let dir: string;
let ca: CertificatePair;
let otherCa: CertificatePair;
let server: CertificatePair;
let client: CertificatePair;
let expired: CertificatePair;
let future: CertificatePair;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-tls-'));
  [ca, otherCa] = await Promise.all([generateCa(), generateCa({ commonName: 'someone else' })]);
  [server, client, expired, future] = await Promise.all([
    generateServerCertificate(ca, { hosts: ['localhost', '127.0.0.1'] }),
    generateClientCertificate(ca, { commonName: 'backup-1' }),
    generateServerCertificate(ca, {
      hosts: ['localhost', '127.0.0.1'],
      notBefore: new Date('2020-01-01'),
      notAfter: new Date('2021-01-01'),
    }),
    generateServerCertificate(ca, {
      hosts: ['localhost', '127.0.0.1'],
      notBefore: new Date(Date.now() + 86400_000 * 30),
      validityDays: 30,
    }),
  ]);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

interface Outcome {
  client?: ClientIdentity;
  error?: VdError;
}

/**
 * Starts a server that upgrades every connection (or, with `raw`, runs `raw` on the plain socket
 * instead) and echoes one message back over TLS.
 */
async function listen(
  opts: Partial<ServerTlsOptions> | { raw: (s: Socket) => void },
): Promise<{ port: number; outcome: Promise<Outcome> }> {
  let report: (o: Outcome) => void = () => {};
  const outcome = new Promise<Outcome>((r) => {
    report = r;
  });
  const srv = createServer((sock) => {
    if ('raw' in opts) {
      opts.raw(sock);
      return;
    }
    const tls = new ServerTls({ mode: 'require', cert: server.cert, key: server.key, ...opts });
    tls.upgrade(sock).then(
      ({ socket, client }) => {
        socket.on('error', () => {});
        socket.once('data', (d) => socket.end(d));
        report({ client });
      },
      (error) => report({ error }),
    );
  });
  servers.push(srv);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return { port: (srv.address() as { port: number }).port, outcome };
}

async function dial(port: number, host: string, opts: ClientTlsOptions) {
  const sock = connect(port, '127.0.0.1');
  await once(sock, 'connect');
  const r = await startTlsClient(sock, host, opts);
  return r;
}

async function echo(tls: TLSSocket, text: string): Promise<string> {
  tls.write(text);
  const chunks: Buffer[] = [];
  for await (const c of tls) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

async function refused(p: Promise<unknown>): Promise<VdError> {
  const err = await p.then(
    () => undefined,
    (e) => e,
  );
  expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
  return err as VdError;
}

describe('decrypting into given buffers', () => {
  it('hands every byte to onread, in order, through buffers smaller than a TLS record, and emits no data', async () => {
    // 200 KiB of patterned bytes, written in 64 KiB pieces: records of 16 KiB split across 5000-byte buffers.
    const payload = Buffer.alloc(200 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 10)) & 0xff;
    const srv = createServer((sock) => {
      new ServerTls({ mode: 'require', cert: server.cert, key: server.key }).upgrade(sock).then(
        ({ socket }) => {
          socket.on('error', () => {});
          for (let at = 0; at < payload.length; at += 65536) socket.write(payload.subarray(at, at + 65536));
          socket.end();
        },
        () => sock.destroy(),
      );
    });
    servers.push(srv);
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const received = Buffer.alloc(payload.length + 1);
    let got = 0;
    let reads = 0;
    let data = 0;
    const buffers = [new Uint8Array(5000), new Uint8Array(5000)];
    const onread = {
      // Alternate buffers, as the NBD client does between a scratch buffer and a caller's.
      buffer: () => buffers[reads % 2]!,
      callback: (n: number, buf: Uint8Array) => {
        expect(buf).toBe(buffers[reads % 2]);
        expect(n).toBeLessThanOrEqual(buf.length);
        received.set(buf.subarray(0, n), got);
        got += n;
        reads++;
        return true;
      },
    };
    const { socket } = await dial((srv.address() as { port: number }).port, 'localhost', { ca: ca.cert, onread });
    socket.on('data', () => data++);
    await once(socket, 'end');
    expect(data).toBe(0);
    expect(got).toBe(payload.length);
    expect(reads).toBeGreaterThanOrEqual(Math.ceil(payload.length / 5000));
    expect(received.subarray(0, got).equals(payload)).toBe(true);
    socket.destroy();
  });
});

describe('client verification', () => {
  it('trusts a server whose certificate chains to the given CA and names the host', async () => {
    const { port } = await listen({});
    const { socket, peer } = await dial(port, 'localhost', { ca: ca.cert });
    expect(peer.trustedBy).toBe('ca');
    expect(peer.sha256).toBe(formatThumbprint(thumbprintOf(server.cert)));
    expect(peer.protocol).toMatch(/^TLSv1\.[23]$/);
    expect(await echo(socket, 'hello')).toBe('hello');
  });

  it('checks addresses as well as names', async () => {
    const { port } = await listen({});
    const { peer, socket } = await dial(port, '127.0.0.1', { ca: ca.cert });
    expect(peer.trustedBy).toBe('ca');
    socket.destroy();
  });

  it('accepts a pinned certificate without any CA (SHA-256 and VDDK SHA-1)', async () => {
    const { port } = await listen({});
    const sha256 = formatThumbprint(thumbprintOf(server.cert, 'sha256'));
    const r1 = await dial(port, 'some-name-not-in-the-cert', { thumbprint: sha256 });
    expect(r1.peer.trustedBy).toBe('thumbprint');
    r1.socket.destroy();
    const vddk = formatThumbprint(thumbprintOf(server.cert, 'sha1'), 'vddk');
    const r2 = await dial(port, 'localhost', { thumbprint: vddk.toLowerCase() });
    expect(r2.peer.trustedBy).toBe('thumbprint');
    expect(await echo(r2.socket, 'pinned')).toBe('pinned');
  });

  it('names the expected and the actual thumbprint on a mismatch', async () => {
    const { port } = await listen({});
    const wrong = `sha256:${'AB:'.repeat(31)}AB`;
    const err = await refused(dial(port, 'localhost', { ca: ca.cert, thumbprint: wrong }));
    const actual = formatThumbprint(thumbprintOf(server.cert));
    expect(err.details.reason).toBe('thumbprint-mismatch');
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(actual);
    expect(err.details.expected).toBe(wrong);
  });

  it('reports a mismatched VDDK SHA-1 thumbprint in SHA-1', async () => {
    const { port } = await listen({});
    const err = await refused(dial(port, 'localhost', { thumbprint: `${'00:'.repeat(19)}00` }));
    expect(err.message).toContain(formatThumbprint(thumbprintOf(server.cert, 'sha1')));
  });

  it('refuses a certificate from an unknown CA and says how to trust it', async () => {
    const { port } = await listen({});
    const err = await refused(dial(port, 'localhost', { ca: otherCa.cert }));
    expect(err.details.reason).toBe('untrusted');
    expect(err.message).toContain(formatThumbprint(thumbprintOf(server.cert)));
  });

  it('refuses a self-signed CA certificate served directly when it is not trusted', async () => {
    const { port } = await listen({ cert: otherCa.cert, key: otherCa.key });
    const err = await refused(dial(port, 'localhost', { ca: ca.cert }));
    expect(err.details.reason).toBe('untrusted');
    expect(err.message).toMatch(/self-signed/);
  });

  it('says the certificate expired, even when it is pinned', async () => {
    const { port } = await listen({ cert: expired.cert, key: expired.key });
    const err = await refused(dial(port, 'localhost', { ca: ca.cert }));
    expect(err.details.reason).toBe('expired');
    expect(err.message).toMatch(/expired on 2021-01-01/);
    const { port: port2 } = await listen({ cert: expired.cert, key: expired.key });
    const pinned = await refused(dial(port2, 'localhost', { thumbprint: formatThumbprint(thumbprintOf(expired.cert)) }));
    expect(pinned.details.reason).toBe('expired');
  });

  it('says a certificate is not valid yet', async () => {
    const { port } = await listen({ cert: future.cert, key: future.key });
    const err = await refused(dial(port, 'localhost', { ca: ca.cert }));
    expect(err.details.reason).toBe('not-yet-valid');
  });

  it('says which names a certificate carries when the host is not among them', async () => {
    const { port } = await listen({});
    const err = await refused(dial(port, 'disk.example', { ca: ca.cert }));
    expect(err.details.reason).toBe('wrong-host');
    expect(err.message).toContain('disk.example');
    expect(err.message).toContain('DNS:localhost');
    // tls-hostname= overrides the name checked.
    const ok = await dial(port, 'disk.example', { ca: ca.cert, hostname: 'localhost' });
    expect(ok.peer.trustedBy).toBe('ca');
    ok.socket.destroy();
  });

  it('encrypts without checking when verifyPeer is false', async () => {
    const { port } = await listen({ cert: otherCa.cert, key: otherCa.key });
    const { peer, socket } = await dial(port, 'wherever', { verifyPeer: false });
    expect(peer.trustedBy).toBe('unverified');
    expect(await echo(socket, 'x')).toBe('x');
  });

  it('refuses unusable client settings with a coded error, not a throw', async () => {
    const { port } = await listen({});
    const err = await refused(dial(port, 'localhost', { ca: ca.cert, cert: 'not a certificate', key: 'not a key' }));
    expect(err.details.reason).toBe('configuration');
  });

  it('refuses plaintext where a TLS record was due', async () => {
    const { port } = await listen({ raw: (s) => s.end('\0\0\0\0\0\0\0\x03 plain NBD option reply, not TLS') });
    const err = await refused(dial(port, 'localhost', { ca: ca.cert }));
    expect(['not-tls', 'handshake']).toContain(err.details.reason);
    const { port: p2 } = await listen({ raw: (s) => s.write(Buffer.from('HTTP/1.1 200 OK\r\n\r\n'.repeat(4))) });
    const err2 = await refused(dial(p2, 'localhost', { ca: ca.cert, handshakeTimeout: 5000 }));
    expect(err2.details.reason).toBe('not-tls');
  });
});

describe('server side', () => {
  it('refuses garbage instead of a ClientHello', async () => {
    const { port, outcome } = await listen({});
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    sock.on('error', () => {});
    sock.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    const { error } = await outcome;
    expect(isVdError(error, 'ERR_VD_TLS')).toBe(true);
    expect(error!.details.reason).toBe('not-tls');
    sock.destroy();
  });

  it('with verifyPeer, refuses a client without a certificate', async () => {
    const { port, outcome } = await listen({ ca: ca.cert, verifyPeer: true });
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    // TLS 1.3 lets the client finish before the server has judged its (missing) certificate.
    const r = await startTlsClient(sock, 'localhost', { ca: ca.cert }).catch((e) => e);
    if (!isVdError(r)) {
      r.socket.on('error', () => {});
      r.socket.write('x');
    }
    const { error } = await outcome;
    expect(isVdError(error, 'ERR_VD_TLS')).toBe(true);
  });

  it('with verifyPeer, refuses a client certificate from another CA', async () => {
    const stranger = await generateClientCertificate(otherCa, { commonName: 'stranger' });
    const { port, outcome } = await listen({ ca: ca.cert, verifyPeer: true });
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    const r = await startTlsClient(sock, 'localhost', { ca: ca.cert, ...stranger }).catch((e) => e);
    if (!isVdError(r)) {
      r.socket.on('error', () => {});
      r.socket.write('x');
    }
    const { error } = await outcome;
    expect(isVdError(error, 'ERR_VD_TLS')).toBe(true);
  });

  it('with verifyPeer, names an authenticated client by its certificate', async () => {
    const { port, outcome } = await listen({ ca: ca.cert, verifyPeer: true });
    const { socket } = await dial(port, 'localhost', { ca: ca.cert, ...client });
    expect(await echo(socket, 'me')).toBe('me');
    const { client: who } = await outcome;
    expect(who).toMatchObject({ authenticated: true, commonName: 'backup-1', sha256: formatThumbprint(thumbprintOf(client.cert)) });
  });

  it('speaks TLS-PSK with the identity from the keys file', async () => {
    const table = parsePskFile('alice:0123456789abcdef0123456789abcdef\nbob:fedcba9876543210fedcba9876543210\n');
    const { port, outcome } = await listen({ cert: undefined, key: undefined, psk: table });
    const { socket, peer } = await dial(port, 'localhost', { psk: pickPsk(table, 'bob') });
    expect(peer.trustedBy).toBe('psk');
    expect(await echo(socket, 'psk')).toBe('psk');
    expect((await outcome).client).toMatchObject({ authenticated: true, pskIdentity: 'bob' });
  });

  it('refuses a PSK client with the wrong key', async () => {
    const table = parsePskFile('alice:0123456789abcdef0123456789abcdef');
    const { port, outcome } = await listen({ cert: undefined, key: undefined, psk: table });
    const wrong = { identity: 'alice', key: new Uint8Array(16) };
    await refused(dial(port, 'localhost', { psk: wrong }));
    expect(isVdError((await outcome).error, 'ERR_VD_TLS')).toBe(true);
  });

  it('refuses configurations that cannot work', () => {
    expect(() => new ServerTls({ mode: 'require' })).toThrow(expect.objectContaining({ code: 'ERR_VD_TLS' }));
    expect(() => new ServerTls({ mode: 'on', cert: server.cert })).toThrow(expect.objectContaining({ code: 'ERR_VD_TLS' }));
    expect(() => new ServerTls({ mode: 'on', ...server, verifyPeer: true })).toThrow(/CA/);
    expect(() => new ServerTls({ mode: 'on', cert: server.cert, key: client.key })).toThrow(
      expect.objectContaining({ code: 'ERR_VD_TLS' }),
    );
    expect(() => new ServerTls({ mode: 'sometimes' as 'on' })).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
    expect(new ServerTls({ mode: 'off' }).mode).toBe('off');
  });
});

describe('PSK files', () => {
  it('reads identity:hexkey lines and rejects malformed ones', () => {
    const t = parsePskFile('# comment\nalice:00ff\n\n');
    expect([...t.get('alice')!]).toEqual([0, 255]);
    for (const bad of ['', 'alice', 'alice:0', 'alice:zz', ':00', 'a:00\na:01']) {
      expect(() => parsePskFile(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_VD_TLS' }));
    }
    expect(pickPsk(t, undefined).identity).toBe('alice');
    expect(() => pickPsk(t, 'bob')).toThrow(/alice|bob/);
  });
});

describe('PSK file parser', () => {
  it('answers any text with a table or ERR_VD_TLS, never anything else', async () => {
    const fc = (await import('fast-check')).default;
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (text) => {
        try {
          const t = parsePskFile(text);
          expect(t.size).toBeGreaterThan(0);
          for (const [id, key] of t) {
            expect(id.length).toBeGreaterThan(0);
            expect(key.length).toBeGreaterThan(0);
          }
        } catch (err) {
          expect(isVdError(err, 'ERR_VD_TLS')).toBe(true);
        }
      }),
    );
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.stringMatching(/^[a-z][a-z0-9._-]{0,15}$/), { minLength: 1, maxLength: 5 }),
        fc.uint8Array({ minLength: 1, maxLength: 64 }),
        (ids, key) => {
          const text = ids.map((id) => `${id}:${Buffer.from(key).toString('hex')}`).join('\n');
          const t = parsePskFile(text);
          expect([...t.keys()]).toEqual(ids);
          for (const id of ids) expect(Buffer.from(t.get(id)!).equals(Buffer.from(key))).toBe(true);
        },
      ),
    );
  });
});

describe('garbage instead of a TLS record', () => {
  it('the server side refuses any bytes that are not a ClientHello with ERR_VD_TLS, in bounded time', async () => {
    const fc = (await import('fast-check')).default;
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 2048 }), async (junk) => {
        const { port, outcome } = await listen({ handshakeTimeout: 1000 });
        const sock = connect(port, '127.0.0.1');
        sock.on('error', () => {});
        await once(sock, 'connect');
        sock.write(junk);
        const { error } = await outcome;
        sock.destroy();
        expect(isVdError(error, 'ERR_VD_TLS'), String(error)).toBe(true);
      }),
      { numRuns: 8 },
    );
  });
});
