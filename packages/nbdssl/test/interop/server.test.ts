import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { Disk, MemorySource } from '@vd/core';
import { NbdServer } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateClientCertificate } from '../../src/certs.js';
import { caPair, createPki, type Pki, writePki } from '../../src/pki.js';
import { nbdServerTls, tlsUri } from '../../src/server.js';
import type { ClientIdentity } from '../../src/server-tls.js';
import { run, runFailing } from '../peers.js';

const SIZE = 4 << 20;

/** A memory disk that counts reads, to prove a refused client never reached it. */
class CountingSource extends MemorySource {
  reads = 0;
  override async _read(offset: number, into: Uint8Array, opts: { signal?: AbortSignal }): Promise<void> {
    this.reads++;
    return super._read(offset, into, opts);
  }
}

describe.skipIf(skipWithoutPeers('nbdinfo', 'nbdcopy'))('our NbdServer over TLS, driven by libnbd', () => {
  let dir: string;
  let pki: Pki;
  let stranger: string;
  let data: Uint8Array;
  let source: CountingSource;
  let disk: Disk;
  const servers: NbdServer[] = [];
  const clients: ClientIdentity[] = [];

  async function serve(opts: Parameters<typeof nbdServerTls>[0], name: string) {
    const server = new NbdServer({ exports: [{ name: 'disk', disk }], tls: await nbdServerTls(opts) });
    servers.push(server);
    const sock = join(dir, `${name}.sock`);
    const unix = await server.listen({ path: sock });
    const tcp = await server.listen({ host: '127.0.0.1', port: 0 });
    return { unix, tcp, sock };
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-server-'));
    pki = await createPki(join(dir, 'pki'), { client: { commonName: 'backup-1' } });
    const other = await createPki(join(dir, 'other'), { server: false, client: false });
    stranger = join(dir, 'stranger');
    await writePki(stranger, { caCert: pki.caCert!, client: await generateClientCertificate(caPair(other)) });
    data = randomBytes(SIZE);
    source = new CountingSource(SIZE, { data });
    disk = new Disk(source, { transport: 'memory' });
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    await disk?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('require: nbdinfo and nbdcopy over nbds:// and nbds+unix:// get the data', async () => {
    const { unix, tcp } = await serve({ mode: 'require', certificates: pki.dir, onClient: (c) => clients.push(c) }, 'require');
    const q = `tls-certificates=${pki.dir}`;
    const u = `${tlsUri(unix)}&${q}`;
    expect(u).toMatch(/^nbds\+unix:\/\/\/disk\?socket=/);
    const { stdout } = await run('nbdinfo', [u]);
    expect(stdout).toMatch(/newstyle-fixed with TLS/);
    expect(stdout).toMatch(/export-size: 4194304/);
    // Over TCP, GnuTLS checks the certificate against the host name in the URI.
    const t = `${tlsUri(tcp).replace('127.0.0.1', 'localhost')}?${q}`;
    const out = join(dir, 'copy.raw');
    await run('nbdcopy', [t, out]);
    expect(Buffer.compare(await readFile(out), Buffer.from(data))).toBe(0);
    // libnbd presented client-cert.pem from the directory.
    expect(clients.some((c) => c.commonName === 'backup-1' && c.authenticated)).toBe(true);
  });

  it('require: a client that skips STARTTLS gets nothing, and the disk is never read', async () => {
    const { unix } = await serve({ mode: 'require', certificates: pki.dir }, 'require-plain');
    const before = source.reads;
    // libnbd reports NBD_REP_ERR_TLS_REQD as "Operation not supported", as it does for nbdkit.
    const err = await runFailing('nbdinfo', [unix.uri]);
    expect(err).toMatch(/opt_go/);
    const list = await runFailing('nbdinfo', ['--list', unix.uri]);
    expect(list).not.toMatch(/export="disk"/);
    await runFailing('nbdcopy', [unix.uri, join(dir, 'never.raw')]);
    expect(source.reads).toBe(before);
  });

  it('on: clients may use TLS or not', async () => {
    const { unix } = await serve({ mode: 'on', certificates: pki.dir }, 'on');
    expect((await run('nbdinfo', [unix.uri])).stdout).toMatch(/without TLS/);
    expect((await run('nbdinfo', [`${tlsUri(unix)}&tls-certificates=${pki.dir}`])).stdout).toMatch(/with TLS/);
  });

  it('off: an nbds:// client refuses to go on in the clear', async () => {
    const server = new NbdServer({ exports: [{ name: 'disk', disk }], tls: await nbdServerTls({ mode: 'off' }) });
    servers.push(server);
    const unix = await server.listen({ path: join(dir, 'off.sock') });
    const err = await runFailing('nbdinfo', [`${tlsUri(unix)}&tls-certificates=${pki.dir}`]);
    expect(err).toMatch(/nbd_connect_uri/);
    expect(err).not.toMatch(/export-size/);
  });

  it('verifyPeer: refuses a client certificate from an unknown CA, accepts ours', async () => {
    const { unix } = await serve({ mode: 'require', certificates: pki.dir, verifyPeer: true }, 'verify');
    const before = source.reads;
    await runFailing('nbdcopy', [`${tlsUri(unix)}&tls-certificates=${stranger}`, join(dir, 'stranger.raw')]);
    expect(source.reads).toBe(before);
    expect((await run('nbdinfo', [`${tlsUri(unix)}&tls-certificates=${pki.dir}`])).stdout).toMatch(/with TLS/);
  });

  it('per-export authorization: only listed client certificates see and open an export', async () => {
    const laptop = join(dir, 'laptop');
    await writePki(laptop, { caCert: pki.caCert!, client: await generateClientCertificate(caPair(pki), { commonName: 'laptop' }) });
    const secretSource = new CountingSource(SIZE, { data });
    const secret = new Disk(secretSource, { transport: 'memory' });
    const server = new NbdServer({
      exports: [
        { name: 'public', disk },
        { name: 'secret', disk: secret },
      ],
      tls: await nbdServerTls({ mode: 'require', certificates: pki.dir, verifyPeer: true, authorize: { secret: ['backup-1'] } }),
    });
    servers.push(server);
    try {
      const unix = await server.listen({ path: join(dir, 'authz.sock') });
      const uri = (name: string, certs: string) => `${tlsUri(unix).replace('/public?', `/${name}?`)}&tls-certificates=${certs}`;
      const listed = (await run('nbdinfo', ['--list', '--json', uri('', pki.dir)])).stdout;
      expect(
        JSON.parse(listed)
          .exports.map((e: { 'export-name': string }) => e['export-name'])
          .sort(),
      ).toEqual(['public', 'secret']);
      const theirs = (await run('nbdinfo', ['--list', '--json', uri('', laptop)])).stdout;
      expect(JSON.parse(theirs).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['public']);
      await runFailing('nbdcopy', [uri('secret', laptop), join(dir, 'secret.raw')]);
      expect(secretSource.reads).toBe(0);
      await run('nbdcopy', [uri('secret', pki.dir), join(dir, 'secret.raw')]);
      expect(Buffer.compare(await readFile(join(dir, 'secret.raw')), Buffer.from(data))).toBe(0);
    } finally {
      await server.close();
      await secret.close();
    }
  });

  it('TLS-PSK with a keys file, as nbdkit --tls-psk', async () => {
    const keys = join(dir, 'keys.psk');
    await writeFile(keys, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const seen: ClientIdentity[] = [];
    const { unix } = await serve({ mode: 'require', psk: keys, onClient: (c) => seen.push(c) }, 'psk');
    // libnbd takes the PSK identity from the URI's userinfo.
    const withUser = (u: string) => u.replace('nbds+unix://', 'nbds+unix://alice@');
    const { stdout } = await run('nbdinfo', [`${withUser(tlsUri(unix))}&tls-psk-file=${keys}`]);
    expect(stdout).toMatch(/with TLS/);
    expect(seen[0]).toMatchObject({ pskIdentity: 'alice', authenticated: true });
    const wrong = join(dir, 'wrong.psk');
    await writeFile(wrong, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await runFailing('nbdinfo', [`${withUser(tlsUri(unix))}&tls-psk-file=${wrong}`]);
  });
});
