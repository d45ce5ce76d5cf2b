import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateClientCertificate } from '../../src/certs.js';
import { caPair, createPki, type Pki, writePki } from '../../src/pki.js';
import { daemon, run, runFailing } from '../peers.js';

/**
 * Certificates made by `createPki` (what `vd cert init` runs) must satisfy GnuTLS on both ends:
 * nbdkit and qemu-nbd as servers verifying our client certificate, libnbd's nbdinfo as the client
 * verifying our server certificate.
 */
describe.skipIf(skipWithoutPeers('nbdkit', 'nbdinfo', 'qemu-nbd'))('vd-made certificates with GnuTLS peers', () => {
  let dir: string;
  let pki: Pki;
  let strangerDir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-interop-'));
    pki = await createPki(join(dir, 'pki'));
    // Same CA, but a client certificate from a CA the servers do not know.
    const other = await createPki(join(dir, 'other'), { server: false });
    strangerDir = join(dir, 'stranger');
    await writePki(strangerDir, { caCert: pki.caCert!, client: await generateClientCertificate(caPair(other)) });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('nbdkit --tls=require --tls-verify-peer accepts them and nbdinfo verifies the server', async () => {
    const sock = join(dir, 'nbdkit.sock');
    const d = await daemon(
      'nbdkit',
      ['-f', '--tls=require', `--tls-certificates=${pki.dir}`, '--tls-verify-peer', '-U', sock, 'memory', '1M'],
      sock,
    );
    try {
      const { stdout } = await run('nbdinfo', [`nbds+unix:///?socket=${sock}&tls-certificates=${pki.dir}`]);
      expect(stdout).toMatch(/with TLS/);
      expect(stdout).toMatch(/export-size: 1048576/);
      // A client certificate from another CA is refused by nbdkit.
      const err = await runFailing('nbdinfo', [`nbds+unix:///?socket=${sock}&tls-certificates=${strangerDir}`]);
      expect(err).toMatch(/nbdinfo/);
    } finally {
      await d.stop();
    }
  });

  it('qemu-nbd loads them (its x509 sanity checks) and verifies our client certificate', async () => {
    const sock = join(dir, 'qemu.sock');
    const img = join(dir, 'disk.raw');
    await writeFile(img, '');
    await truncate(img, 1 << 20);
    const d = await daemon(
      'qemu-nbd',
      [
        '--object',
        `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir},verify-peer=on`,
        '--tls-creds',
        'tls0',
        '-k',
        sock,
        '-f',
        'raw',
        '-t',
        img,
      ],
      sock,
    );
    try {
      const { stdout } = await run('nbdinfo', [`nbds+unix:///?socket=${sock}&tls-certificates=${pki.dir}`]);
      expect(stdout).toMatch(/with TLS/);
      const err = await runFailing('nbdinfo', [`nbds+unix:///?socket=${sock}&tls-certificates=${strangerDir}`]);
      expect(err).toMatch(/nbdinfo/);
    } finally {
      await d.stop();
    }
  });
});
