import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runConformance } from '@vd/conformance/vitest';
import { type Disk, isVdError, memoryDisk, openDisk, type VdError } from '@vd/core';
import { NbdServer, protocol } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateCa, generateServerCertificate } from './certs.js';
import { createPki, type Pki } from './pki.js';
import { nbdServerTls, tlsUri } from './server.js';
import { formatThumbprint, thumbprintOf } from './thumbprint.js';
import { nbdssl } from './transport.js';

const MiB = 1 << 20;
let dir: string;
let pki: Pki;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-transport-'));
  pki = await createPki(join(dir, 'pki'), { server: { hosts: ['localhost', '127.0.0.1'] } });
});
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** Our NbdServer exporting `disk` with TLS; resolves to its nbds:// URIs (TCP and Unix). */
async function serve(disk: Disk, tls: Parameters<typeof nbdServerTls>[0] = { mode: 'require', certificates: pki.dir }) {
  const server = new NbdServer({ exports: [{ name: 'disk', disk }], tls: await nbdServerTls(tls) });
  cleanups.push(() => server.close());
  const tcp = await server.listen({ host: '127.0.0.1', port: 0 });
  const unix = await server.listen({ path: join(dir, `s${n++}.sock`) });
  return { server, tcp: tlsUri(tcp), unix: tlsUri(unix), plainUnix: unix.uri };
}

/**
 * Opens `uri` through openDisk and through the transport itself: both must fail with ERR_VD_TLS
 * and the reason (openDisk keeps a lone failure's details).
 */
async function refused(uri: string, opts: Parameters<typeof nbdssl>[0] = {}, reason?: string): Promise<VdError> {
  const viaDisk = await openDisk(uri, { transports: [nbdssl(opts)] }).then(
    async (d) => {
      await d.close();
      return undefined;
    },
    (e) => e,
  );
  expect(isVdError(viaDisk, 'ERR_VD_TLS'), String(viaDisk)).toBe(true);
  if (reason) expect((viaDisk as VdError).details.reason).toBe(reason);
  const err = await nbdssl(opts)
    .open(new URL(uri), {})
    .then(
      async (s) => {
        await s._close();
        return undefined;
      },
      (e) => e,
    );
  expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
  if (reason) expect((err as VdError).details.reason, (err as Error).message).toBe(reason);
  return err as VdError;
}

describe('nbdssl transport against our server', () => {
  it('reads and writes over nbds+unix:// and nbds:// with a CA from tls-certificates', async () => {
    const data = randomBytes(2 * MiB);
    const { tcp, unix } = await serve(memoryDisk(4 * MiB, { data }));
    const a = await openDisk(`${unix}&tls-certificates=${pki.dir}`, { transports: [nbdssl()] });
    try {
      expect(a.transport).toBe('nbdssl');
      expect(Buffer.compare(await a.read(0, data.length), data)).toBe(0);
      await a.write(3 * MiB, data.subarray(0, MiB));
      await a.flush();
    } finally {
      await a.close();
    }
    const peers: string[] = [];
    const b = await openDisk(`${tcp.replace('127.0.0.1', 'localhost')}?tls-certificates=${pki.dir}`, {
      transports: [nbdssl({ onPeer: (p) => peers.push(p.trustedBy) })],
    });
    try {
      expect(Buffer.compare(await b.read(3 * MiB, MiB), data.subarray(0, MiB))).toBe(0);
      expect(peers.length).toBeGreaterThan(0);
      expect(peers.every((p) => p === 'ca')).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('trusts a pinned thumbprint alone, from the URI or the options', async () => {
    const { tcp } = await serve(memoryDisk(MiB));
    const sha256 = formatThumbprint(thumbprintOf(pki.server!.cert));
    const d = await openDisk(`${tcp}?tls-thumbprint=${sha256}`, { transports: [nbdssl()] });
    await d.close();
    const vddk = formatThumbprint(thumbprintOf(pki.server!.cert, 'sha1'), 'vddk');
    const e = await openDisk(tcp, { transports: [nbdssl({ thumbprint: vddk })] });
    await e.close();
  });

  it('names expected and actual thumbprints on a mismatch', async () => {
    const { tcp } = await serve(memoryDisk(MiB));
    const wrong = `sha256:${'00:'.repeat(31)}00`;
    const err = await refused(`${tcp}?tls-thumbprint=${wrong}`, {}, 'thumbprint-mismatch');
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(formatThumbprint(thumbprintOf(pki.server!.cert)));
  });

  it('refuses an unknown CA, a wrong host and an expired certificate, saying which', async () => {
    const { tcp } = await serve(memoryDisk(MiB));
    const other = await createPki(join(dir, 'other'), { server: false, client: false });
    await refused(`${tcp}?tls-certificates=${other.dir}`, {}, 'untrusted');
    await refused(`${tcp}?tls-certificates=${pki.dir}&tls-hostname=elsewhere.example`, {}, 'wrong-host');
    const ca = { cert: pki.caCert!, key: pki.caKey! };
    const old = await generateServerCertificate(ca, {
      hosts: ['127.0.0.1'],
      notBefore: new Date('2019-01-01'),
      notAfter: new Date('2020-01-01'),
    });
    const { tcp: expired } = await serve(memoryDisk(MiB), { mode: 'require', ...old });
    await refused(`${expired}?tls-certificates=${pki.dir}`, {}, 'expired');
    const selfSigned = await generateCa({ commonName: 'self' });
    const { tcp: self } = await serve(memoryDisk(MiB), { mode: 'require', ...selfSigned });
    const err = await refused(`${self}?tls-certificates=${pki.dir}`, {}, 'untrusted');
    expect(err.message).toMatch(/self-signed/);
  });

  it('refuses when the server does not offer TLS, and sends nothing after', async () => {
    const { tcp } = await serve(memoryDisk(MiB), { mode: 'off' });
    await refused(`${tcp}?tls-certificates=${pki.dir}`, {}, 'starttls-refused');
  });

  it('encrypts without verifying when tls-verify-peer=false', async () => {
    const { tcp } = await serve(memoryDisk(MiB));
    const d = await openDisk(`${tcp}?tls-verify-peer=false&tls-hostname=whatever`, {
      transports: [nbdssl()],
    });
    await d.close();
  });

  it('leaves nbd:// to the plain transport and says so', async () => {
    const t = nbdssl();
    expect(await t.probe(new URL('nbd://localhost/x'), {})).toMatchObject({ ok: false });
    expect(await t.probe(new URL('nbds://localhost/x?tls-thumbprint=nonsense'), {})).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/thumbprint/),
    });
    expect(await t.probe(new URL('nbds://localhost/x?tls-verify-peer=maybe'), {})).toMatchObject({ ok: false });
    expect(await t.probe(new URL(`nbds://localhost/x?tls-certificates=${join(dir, 'nowhere')}`), {})).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/does not exist/),
    });
  });
});

/**
 * Hostile or broken servers, scripted byte by byte: the client must refuse each with ERR_VD_TLS
 * and never send an option in the clear after asking for STARTTLS.
 */
describe('nbdssl transport against misbehaving servers', () => {
  const { Opt, Rep, encodeGreeting, encodeOptionReply } = protocol;
  const FIXED_NEWSTYLE = 1;
  const NO_ZEROES = 2;

  /**
   * Greets, reads the client flags and the STARTTLS option, then runs `after`. `afterStartTls()`
   * lists, per connection, what the client sent after its STARTTLS request; `closed(n)` waits
   * until n connections have ended.
   */
  async function scripted(after: (s: Socket) => void) {
    const sent: Buffer[] = [];
    let closedCount = 0;
    const waiters: (() => void)[] = [];
    const srv: Server = createServer((s) => {
      s.on('error', () => {});
      s.write(encodeGreeting(FIXED_NEWSTYLE | NO_ZEROES));
      const index = sent.push(Buffer.alloc(0)) - 1;
      let buf = Buffer.alloc(0);
      let answered = false;
      s.on('data', (d) => {
        if (answered) {
          sent[index] = Buffer.concat([sent[index]!, d]);
          return;
        }
        buf = Buffer.concat([buf, d]);
        // 4 bytes of client flags, then a 16-byte option header.
        if (buf.length >= 20) {
          expect(buf.readUInt32BE(12)).toBe(Opt.STARTTLS);
          answered = true;
          sent[index] = buf.subarray(20);
          after(s);
        }
      });
      s.on('close', () => {
        closedCount++;
        for (const w of waiters.splice(0)) w();
      });
    });
    cleanups.push(() => new Promise((r) => srv.close(r)));
    srv.listen(0, '127.0.0.1');
    await new Promise((r) => srv.once('listening', r));
    const closed = async (count: number) => {
      while (closedCount < count) await new Promise<void>((r) => waiters.push(r));
    };
    return {
      uri: `nbds://127.0.0.1:${(srv.address() as { port: number }).port}/disk?tls-certificates=${pki.dir}`,
      afterStartTls: () => sent,
      closed,
    };
  }

  it('STARTTLS refused: ERR_VD_TLS, and not one more byte in the clear', async () => {
    for (const reply of [Rep.ERR_POLICY, Rep.ERR_UNSUP, Rep.ERR_PLATFORM]) {
      const s = await scripted((sock) => sock.write(encodeOptionReply(Opt.STARTTLS, reply)));
      await refused(s.uri, { retries: 0 }, 'starttls-refused');
      await s.closed(2);
      expect(s.afterStartTls().map((b) => b.length)).toEqual([0, 0]);
    }
  });

  it('STARTTLS acknowledged, then plaintext in the same packet', async () => {
    const s = await scripted((sock) =>
      sock.write(Buffer.concat([encodeOptionReply(Opt.STARTTLS, Rep.ACK), encodeOptionReply(Opt.GO, Rep.ACK)])),
    );
    await refused(s.uri, { retries: 0 }, 'plaintext-after-starttls');
  });

  it('STARTTLS acknowledged, then plaintext NBD instead of a TLS record', async () => {
    const s = await scripted((sock) => {
      sock.write(encodeOptionReply(Opt.STARTTLS, Rep.ACK));
      setTimeout(() => sock.write(encodeOptionReply(Opt.GO, Rep.ACK)), 50);
    });
    await refused(s.uri, { retries: 0 }, 'not-tls');
    await s.closed(2);
    // Only a ClientHello (a TLS handshake record, type 22) went out after the request.
    expect(s.afterStartTls().map((b) => b[0])).toEqual([22, 22]);
  });

  it('STARTTLS acknowledged, then garbage', async () => {
    const s = await scripted((sock) => {
      sock.write(encodeOptionReply(Opt.STARTTLS, Rep.ACK));
      setTimeout(() => sock.write(randomBytes(4096)), 50);
    });
    await refused(s.uri, { retries: 0 });
  });
});

describe('require mode keeps everything behind STARTTLS', () => {
  it('a plain client gets ERR_VD_TLS from our server and the disk is never read', async () => {
    let reads = 0;
    const disk = memoryDisk(MiB);
    const read = disk.read.bind(disk);
    disk.read = ((...args: Parameters<Disk['read']>) => {
      reads++;
      return read(...args);
    }) as Disk['read'];
    const { plainUnix } = await serve(disk);
    const { nbd } = await import('@vd/nbd');
    const err = await openDisk(plainUnix, { transports: [nbd({ retries: 0 })] }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
    expect(reads).toBe(0);
  });
});

describe('require mode, byte by byte', () => {
  it('answers every option but STARTTLS and ABORT with ERR_TLS_REQD, and closes on EXPORT_NAME', async () => {
    const { Opt, Rep, encodeClientFlags, encodeOption, encodeInfoRequest, ServerStreamDecoder } = protocol;
    const disk = memoryDisk(MiB);
    const { server } = await serve(disk);
    const sockPath = server.addresses.find((a) => a.kind === 'unix')!.path!;
    const sock = connect(sockPath);
    sock.on('error', () => {});
    const decoder = new ServerStreamDecoder();
    const messages: protocol.ServerMessage[] = [];
    let closed = false;
    sock.on('data', (d) => {
      decoder.push(d);
      for (let m = decoder.next(); m; m = decoder.next()) messages.push(m);
    });
    sock.on('close', () => {
      closed = true;
    });
    const next = async () => {
      for (let i = 0; i < 400 && messages.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      return messages.shift();
    };
    expect((await next())?.kind).toBe('greeting');
    sock.write(encodeClientFlags(1 | 2));
    for (const [option, data] of [
      [Opt.LIST, new Uint8Array(0)],
      [Opt.INFO, encodeInfoRequest('disk', [])],
      [Opt.GO, encodeInfoRequest('disk', [])],
      [Opt.STRUCTURED_REPLY, new Uint8Array(0)],
      [Opt.SET_META_CONTEXT, new Uint8Array(0)],
      [77, new Uint8Array(0)],
    ] as const) {
      sock.write(encodeOption(option, data));
      expect(await next(), `option ${option}`).toMatchObject({ kind: 'optionReply', option, reply: Rep.ERR_TLS_REQD });
    }
    sock.write(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode('disk')));
    for (let i = 0; i < 400 && !closed; i++) await new Promise((r) => setTimeout(r, 5));
    expect(closed).toBe(true);
    expect(messages.filter((m) => m.kind !== 'optionReply')).toEqual([]);
  });
});

describe('conformance over TLS', () => {
  runConformance({
    name: 'nbdssl client ↔ NbdServer --tls=require',
    factory: async ({ readOnly }) => {
      const { unix } = await serve(memoryDisk(4 * MiB));
      return openDisk(`${unix}&tls-certificates=${pki.dir}`, { transports: [nbdssl()], readOnly });
    },
  });
});
