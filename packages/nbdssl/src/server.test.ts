import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateClientCertificate } from './certs.js';
import { startTlsClient } from './client-tls.js';
import { caPair, createPki, type Pki } from './pki.js';
import { isAuthorized, nbdServerTls, tlsUri } from './server.js';
import type { ClientIdentity } from './server-tls.js';

let dir: string;
let pki: Pki;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-server-'));
  pki = await createPki(join(dir, 'pki'), { client: { commonName: 'backup-1' } });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const who = (c: Partial<ClientIdentity>): ClientIdentity => ({ authenticated: true, protocol: 'TLSv1.3', ...c });

describe('per-export authorization', () => {
  it('a table names who may use an export; unnamed exports stay open', () => {
    const rule = { secret: ['backup-1', 'sha256:AA:BB', 'psk-user'] };
    expect(isAuthorized(rule, 'public', undefined)).toBe(true);
    expect(isAuthorized(rule, 'secret', undefined)).toBe(false);
    expect(isAuthorized(rule, 'secret', who({ commonName: 'backup-1' }))).toBe(true);
    expect(isAuthorized(rule, 'secret', who({ commonName: 'backup-1', authenticated: false }))).toBe(false);
    expect(isAuthorized(rule, 'secret', who({ commonName: 'intruder', sha256: 'sha256:AA:BB' }))).toBe(true);
    expect(isAuthorized(rule, 'secret', who({ pskIdentity: 'psk-user' }))).toBe(true);
    expect(isAuthorized(rule, 'secret', who({ commonName: 'intruder' }))).toBe(false);
    // Inherited names are not exports.
    expect(isAuthorized(rule, 'constructor', undefined)).toBe(true);
    expect(isAuthorized((name, c) => name === 'x' && c?.commonName === 'y', 'x', who({ commonName: 'y' }))).toBe(true);
    expect(isAuthorized(undefined, 'anything', undefined)).toBe(true);
  });

  it('the hook remembers who is on each upgraded socket', async () => {
    const hook = (await nbdServerTls({ mode: 'require', certificates: pki.dir, verifyPeer: true, authorize: { secret: ['backup-1'] } }))!;
    expect(hook.required).toBe(true);
    let serverSide: Duplex | undefined;
    let plain: Socket | undefined;
    const srv = createServer((s) => {
      plain = s;
      hook.upgrade(s).then((secure) => {
        serverSide = secure;
        secure.on('error', () => {});
        secure.once('data', (d) => secure.end(d));
      });
    });
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    try {
      const sock = connect((srv.address() as { port: number }).port, '127.0.0.1');
      await once(sock, 'connect');
      const { socket } = await startTlsClient(sock, 'localhost', { ca: pki.caCert, ...pki.client! });
      socket.write('x');
      await once(socket, 'data');
      expect(hook.clientOf(serverSide!)).toMatchObject({ commonName: 'backup-1', authenticated: true });
      expect(hook.authorize('secret', serverSide!)).toBe(true);
      expect(hook.authorize('secret', plain!)).toBe(false);
      expect(hook.authorize('public', plain!)).toBe(true);
      socket.destroy();
      // Another client certificate from the same CA is authenticated but not on the list.
      const other = await generateClientCertificate(caPair(pki), { commonName: 'laptop' });
      const sock2 = connect((srv.address() as { port: number }).port, '127.0.0.1');
      await once(sock2, 'connect');
      const r2 = await startTlsClient(sock2, 'localhost', { ca: pki.caCert, ...other });
      r2.socket.write('y');
      await once(r2.socket, 'data');
      expect(hook.clientOf(serverSide!)?.commonName).toBe('laptop');
      expect(hook.authorize('secret', serverSide!)).toBe(false);
      r2.socket.destroy();
    } finally {
      srv.close();
    }
  });

  it('tlsUri turns nbd URIs into nbds ones', () => {
    expect(tlsUri('nbd://127.0.0.1:1234/disk')).toBe('nbds://127.0.0.1:1234/disk');
    expect(tlsUri('nbd+unix:///disk?socket=%2Ftmp%2Fs')).toBe('nbds+unix:///disk?socket=%2Ftmp%2Fs');
  });
});
