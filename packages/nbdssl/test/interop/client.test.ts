import { randomBytes } from 'node:crypto';
import { mkdtemp, open as openFile, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ConformanceOptions, defineConformance } from '@vd/conformance';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { type Disk, isVdError, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPki, type Pki, writePki } from '../../src/pki.js';
import { formatThumbprint, thumbprintOf } from '../../src/thumbprint.js';
import { nbdssl } from '../../src/transport.js';
import { type Daemon, daemon } from '../peers.js';

/**
 * Our nbds:// client against GnuTLS servers: nbdkit --tls=require and qemu-nbd --tls-creds, with
 * certificates made by `createPki` (what `vd cert init` runs), the conformance suite over TLS, and
 * TLS-PSK against nbdkit --tls-psk.
 */

const MiB = 1 << 20;
const skipNbdkit = skipWithoutPeers('nbdkit');
const skipQemu = skipWithoutPeers('qemu-nbd');

let root: string;
let pki: Pki;
let counter = 0;
const daemons: Daemon[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vd-nbdssl-client-'));
  pki = await createPki(join(root, 'pki'));
});
afterAll(async () => {
  for (const d of daemons.splice(0)) await d.stop();
  await rm(root, { recursive: true, force: true });
});

async function rawFile(size: number, data?: Uint8Array): Promise<string> {
  const f = join(root, `f${counter++}.raw`);
  const fh = await openFile(f, 'w+');
  await fh.truncate(size);
  if (data) await fh.write(data, 0, data.length, 0);
  await fh.close();
  return f;
}

/** An nbdkit or qemu-nbd with TLS required, on a Unix socket; resolves to its nbds+unix:// URI. */
async function peer(kind: 'nbdkit' | 'qemu-nbd', file: string, extra: string[] = []): Promise<string> {
  const sock = join(root, `p${counter++}.sock`);
  const args =
    kind === 'nbdkit'
      ? [
          '-f',
          '--exit-with-parent',
          '--tls=require',
          `--tls-certificates=${pki.dir}`,
          '--tls-verify-peer',
          ...extra,
          '-U',
          sock,
          'file',
          file,
        ]
      : [
          '--object',
          `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir},verify-peer=on`,
          '--tls-creds',
          'tls0',
          ...extra,
          '-k',
          sock,
          '-f',
          'raw',
          file,
        ];
  daemons.push(await daemon(kind, args, sock));
  return `nbds+unix:///?socket=${encodeURIComponent(sock)}&tls-certificates=${encodeURIComponent(pki.dir)}`;
}

function conformance(options: ConformanceOptions): void {
  const suite = defineConformance(options);
  describe(`conformance: ${suite.name}`, () => {
    afterAll(() => suite.teardown());
    for (const c of suite.cases) it(`${c.id}: ${c.title}`, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }));
  });
}

if (!skipNbdkit) {
  conformance({
    name: 'nbdssl client ↔ nbdkit --tls=require --tls-verify-peer file',
    factory: async ({ readOnly }) => openDisk(await peer('nbdkit', await rawFile(4 * MiB)), { transports: [nbdssl()], readOnly }),
  });
}
if (!skipQemu) {
  conformance({
    name: 'nbdssl client ↔ qemu-nbd tls-creds-x509 verify-peer raw',
    factory: async ({ readOnly }) =>
      openDisk(await peer('qemu-nbd', await rawFile(4 * MiB), readOnly ? ['-r'] : []), { transports: [nbdssl()], readOnly }),
  });
}

describe.skipIf(skipWithoutPeers('nbdkit', 'qemu-nbd'))('nbdssl client against GnuTLS servers', () => {
  let data: Buffer;
  let src: string;
  beforeAll(async () => {
    data = randomBytes(8 * MiB);
    src = await rawFile(8 * MiB, data);
  });

  async function readAll(uri: string, opts: Parameters<typeof nbdssl>[0] = {}): Promise<Buffer> {
    const disk: Disk = await openDisk(uri, { transports: [nbdssl(opts)], readOnly: true });
    try {
      return Buffer.from(await disk.read(0, disk.size));
    } finally {
      await disk.close();
    }
  }

  it('reads nbdkit --tls=require byte for byte, presenting our client certificate', async () => {
    expect(Buffer.compare(await readAll(await peer('nbdkit', src)), data)).toBe(0);
  });

  it('reads qemu-nbd --tls-creds byte for byte', async () => {
    expect(Buffer.compare(await readAll(await peer('qemu-nbd', src, ['-r', '-t'])), data)).toBe(0);
  });

  it('pins nbdkit by thumbprint without trusting any CA', async () => {
    const uri = (await peer('nbdkit', src)).replace(/&tls-certificates=[^&]*/, '');
    const sha256 = formatThumbprint(thumbprintOf(pki.server!.cert));
    // The client certificate still comes from the options: nbdkit verifies its peer.
    const got = await readAll(`${uri}&tls-thumbprint=${sha256}`, {
      cert: pki.client!.cert,
      key: pki.client!.key,
    });
    expect(Buffer.compare(got, data)).toBe(0);
    const err = await openDisk(`${uri}&tls-thumbprint=sha256:${'AA:'.repeat(31)}AA`, {
      transports: [nbdssl({ cert: pki.client!.cert, key: pki.client!.key })],
    }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS')).toBe(true);
    expect(err.message).toContain(sha256);
  });

  it('speaks TLS-PSK with nbdkit --tls-psk', async () => {
    const keys = join(root, 'keys.psk');
    await writeFile(keys, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const sock = join(root, `psk${counter++}.sock`);
    daemons.push(await daemon('nbdkit', ['-f', '--exit-with-parent', '--tls=require', `--tls-psk=${keys}`, '-U', sock, 'file', src], sock));
    const uri = `nbds+unix:///?socket=${encodeURIComponent(sock)}&tls-psk-file=${encodeURIComponent(keys)}&tls-username=alice`;
    expect(Buffer.compare(await readAll(uri, {}), data)).toBe(0);
    const wrong = join(root, 'wrong.psk');
    await writeFile(wrong, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const err = await readAll(uri.replace(encodeURIComponent(keys), encodeURIComponent(wrong))).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
  });

  it('refuses nbdkit serving a certificate from a CA we do not trust', async () => {
    const other = await createPki(join(root, 'other'));
    const sock = join(root, `o${counter++}.sock`);
    daemons.push(
      await daemon(
        'nbdkit',
        ['-f', '--exit-with-parent', '--tls=require', `--tls-certificates=${other.dir}`, '-U', sock, 'file', src],
        sock,
      ),
    );
    const err = await readAll(`nbds+unix:///?socket=${encodeURIComponent(sock)}&tls-certificates=${encodeURIComponent(pki.dir)}`).catch(
      (e) => e,
    );
    expect(isVdError(err, 'ERR_VD_TLS')).toBe(true);
    expect(err.message).toMatch(/not signed by a trusted CA/);
  });

  it('nbdkit --tls-verify-peer refusing a client without a certificate is ERR_VD_TLS', async () => {
    const caOnly = join(root, 'ca-only');
    await writePki(caOnly, { caCert: pki.caCert! }, { overwrite: true });
    const uri = (await peer('nbdkit', src)).replace(encodeURIComponent(pki.dir), encodeURIComponent(caOnly));
    const err = await readAll(uri, { retries: 0 }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
    expect(err.message).toMatch(/client certificate/);
  });

  it('a file written through nbdkit over TLS reads back identically', async () => {
    const target = await rawFile(8 * MiB);
    const disk = await openDisk(await peer('nbdkit', target), { transports: [nbdssl()] });
    try {
      await disk.write(0, data);
      await disk.flush();
    } finally {
      await disk.close();
    }
    expect(Buffer.compare(await readFile(target), data)).toBe(0);
  });
});
