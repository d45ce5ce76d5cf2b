import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket, connect as unixConnect } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConformance } from '@vd/conformance';
import { peerRequired, skipWithoutPeers } from '@vd/conformance/peers';
import { channels, type Disk, isVdError, openDisk } from '@vd/core';
import { parseNbdUri, setWorkerIdleTime, workerThreadStats } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createPki, type Pki } from '../../src/pki.js';
import { workerConnector, workersAvailable } from '../../src/tls-workers.js';
import { clientTlsFor, nbdssl, useWorkers } from '../../src/transport.js';
import { type Daemon, daemon } from '../peers.js';

/**
 * Connections in worker threads (multi-conn over TLS) against nbdkit --tls=require: data both
 * ways, every command, errors with their codes from inside a worker, a dropped connection
 * retried on a fresh worker, abort, and no thread left behind. The worker runs the built package
 * (a thread cannot load TypeScript): without `pnpm build` these are skipped, or fail in CI.
 */

const MiB = 1 << 20;
const noWorkers = !workersAvailable();
if (noWorkers && peerRequired()) throw new Error('the nbdssl connection worker is not built: run pnpm build first');
const skip = skipWithoutPeers('nbdkit') || noWorkers;

let root: string;
let pki: Pki;
let counter = 0;
const daemons: Daemon[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'vd-nbdssl-workers-'));
  pki = await createPki(join(root, 'pki'));
});
afterAll(async () => {
  for (const s of servers.splice(0)) s.close();
  for (const d of daemons.splice(0)) await d.stop();
  await rm(root, { recursive: true, force: true });
});

async function rawFile(data: Uint8Array): Promise<string> {
  const f = join(root, `f${counter++}.raw`);
  await writeFile(f, data);
  return f;
}

/** nbdkit --tls=require on a Unix socket (it advertises multi-conn); its socket path. */
async function nbdkit(file: string): Promise<string> {
  const sock = join(root, `p${counter++}.sock`);
  const args = ['-f', '--exit-with-parent', '--tls=require', `--tls-certificates=${pki.dir}`, '-U', sock, 'file', file];
  daemons.push(await daemon('nbdkit', args, sock));
  return sock;
}

/** Waits until `n` worker connections have joined the disk's first one. */
async function joined(disk: Disk, n: number): Promise<void> {
  await vi.waitFor(() => expect(disk.info().workerConnections).toBe(n), { timeout: 20_000, interval: 20 });
}

/** Runs `fn` with idle threads kept `ms`, then restores the default (10 s). */
async function keepingIdle(ms: number, fn: () => Promise<void>): Promise<void> {
  setWorkerIdleTime(ms);
  try {
    await fn();
  } finally {
    setWorkerIdleTime(10_000);
  }
}

const uriOf = (sock: string, extra = '') =>
  `nbds+unix:///?socket=${encodeURIComponent(sock)}&tls-certificates=${encodeURIComponent(pki.dir)}${extra}`;

if (!skip) {
  const suite = defineConformance({
    name: 'nbdssl client, worker connections ↔ nbdkit --tls=require file',
    factory: async ({ readOnly }) =>
      openDisk(uriOf(await nbdkit(await rawFile(new Uint8Array(4 * MiB)))), {
        transports: [nbdssl({ connections: 2, workers: true })],
        readOnly,
      }),
  });
  describe(`conformance: ${suite.name}`, () => {
    afterAll(() => suite.teardown());
    for (const c of suite.cases) it(`${c.id}: ${c.title}`, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }));
  });
}

describe.skipIf(skip)('nbdssl connections in worker threads', () => {
  let data: Buffer;
  let src: string;
  let sock: string;
  beforeAll(async () => {
    data = randomBytes(8 * MiB);
    src = await rawFile(data);
    sock = await nbdkit(src);
  });

  it('multi-conn: the first connection stays in this thread, the others run in workers, reads match', async () => {
    const disk = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 3, workers: true })], readOnly: true });
    try {
      // Reads may start at once, on the first connection; the workers join as they come up.
      await joined(disk, 2);
      expect(disk.info().connections).toBe(3);
      // Many requests at once, so every connection carries some.
      const parts = await Promise.all(Array.from({ length: 16 }, (_, i) => disk.read(i * (data.length / 16), data.length / 16)));
      expect(Buffer.compare(Buffer.concat(parts), data)).toBe(0);
    } finally {
      await disk.close();
    }
  });

  it('the default follows the core count; the URI wins over the option, the option over the environment', () => {
    const url = new URL(uriOf(sock));
    const env = process.env.VD_NBDSSL_WORKERS;
    try {
      delete process.env.VD_NBDSSL_WORKERS;
      expect(useWorkers(url, {})).toBe(availableParallelism() > 1);
      process.env.VD_NBDSSL_WORKERS = '1';
      expect(useWorkers(url, {})).toBe(true);
      expect(useWorkers(url, { workers: false })).toBe(false);
      expect(useWorkers(new URL(`${url.href}&workers=false`), { workers: true })).toBe(false);
      process.env.VD_NBDSSL_WORKERS = '0';
      expect(useWorkers(url, {})).toBe(false);
      expect(useWorkers(new URL(`${url.href}&workers=1`), {})).toBe(true);
      expect(() => useWorkers(new URL(`${url.href}&workers=maybe`), {})).toThrow(/workers=maybe/);
    } finally {
      if (env === undefined) delete process.env.VD_NBDSSL_WORKERS;
      else process.env.VD_NBDSSL_WORKERS = env;
    }
  });

  it('workers: false, workers=false in the URI and VD_NBDSSL_WORKERS=0 keep every connection in this thread', async () => {
    const counts: unknown[] = [];
    for (const [uri, opts] of [
      [uriOf(sock), { workers: false }],
      [uriOf(sock, '&workers=false'), { workers: true }],
    ] as const) {
      const disk = await openDisk(uri, { transports: [nbdssl({ connections: 2, ...opts })], readOnly: true });
      counts.push(disk.info().workerConnections);
      expect(Buffer.compare(Buffer.from(await disk.read(0, MiB)), data.subarray(0, MiB))).toBe(0);
      await disk.close();
    }
    const before = process.env.VD_NBDSSL_WORKERS;
    process.env.VD_NBDSSL_WORKERS = '0';
    try {
      const disk = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2 })], readOnly: true });
      counts.push(disk.info().workerConnections);
      await disk.close();
    } finally {
      if (before === undefined) delete process.env.VD_NBDSSL_WORKERS;
      else process.env.VD_NBDSSL_WORKERS = before;
    }
    expect(counts).toEqual([0, 0, 0]);
  });

  it('writes, flush, zero, trim and block status go through worker connections', async () => {
    const file = await rawFile(new Uint8Array(4 * MiB));
    const disk = await openDisk(uriOf(await nbdkit(file)), { transports: [nbdssl({ connections: 3, workers: true })] });
    const pattern = randomBytes(MiB);
    try {
      await joined(disk, 2);
      // In flight together, so the least busy connection is a worker for most of them; a Buffer
      // from the shared pool (a view into a larger ArrayBuffer) must be sent as its own bytes.
      const small = Buffer.from('worker bytes');
      await Promise.all([disk.write(0, pattern), disk.write(MiB, pattern), disk.write(2 * MiB, pattern), disk.write(3 * MiB, small)]);
      expect(small.toString()).toBe('worker bytes');
      await disk.flush();
      await Promise.all([disk.zero(MiB, 4096), disk.zero(2 * MiB, 4096), disk.zero(2 * MiB + 8192, 4096)]);
      await Promise.all([disk.trim(3 * MiB + MiB / 2, 4096), disk.trim(3 * MiB + MiB / 2 + 8192, 4096)]);
      await Promise.all(Array.from({ length: 4 }, () => disk.flush()));
      let mapped = 0;
      for await (const e of disk.extents()) mapped += e.length;
      expect(mapped).toBe(4 * MiB);
    } finally {
      await disk.close();
    }
    const back = await readFile(file);
    expect(Buffer.compare(back.subarray(0, 4096), pattern.subarray(0, 4096))).toBe(0);
    expect(back.subarray(MiB, MiB + 4096).every((b) => b === 0)).toBe(true);
    expect(Buffer.compare(back.subarray(MiB + 4096, 2 * MiB), pattern.subarray(4096))).toBe(0);
    expect(back.subarray(2 * MiB + 8192, 2 * MiB + 12288).every((b) => b === 0)).toBe(true);
    expect(back.subarray(3 * MiB, 3 * MiB + 12).toString()).toBe('worker bytes');
  });

  it('a TLS refusal inside a worker keeps its code, reason and both thumbprints', async () => {
    const target = parseNbdUri(uriOf(sock));
    const wrong = `sha256:${'AB:'.repeat(31)}AB`;
    const err = await workerConnector({ thumbprint: wrong })(target, {}).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
    expect(err.details.reason).toBe('thumbprint-mismatch');
    expect(err.message).toContain(wrong);
    expect(err.message).toMatch(/sha256:[0-9A-F]{2}(:[0-9A-F]{2}){31}/);
  });

  it('an onPeer that throws refuses a worker connection, as it refuses one in this thread, without crashing the process', async () => {
    const url = new URL(uriOf(sock));
    const { signal: _signal, ...tls } = await clientTlsFor(url, {});
    const refuse = () => {
      throw new Error('not this server');
    };
    const got = await workerConnector(tls, refuse)(parseNbdUri(url), {}).catch((e: unknown) => e);
    if (!(got instanceof Error)) (got as { destroy(): void }).destroy();
    expect(got).toBeInstanceOf(Error);
    expect((got as Error).message).toBe('not this server');
    await expect(openDisk(url.href, { transports: [nbdssl({ workers: false, onPeer: refuse })] })).rejects.toThrow('not this server');
  });

  it('a worker connection aborted during a handshake that never ends rejects ERR_VD_ABORTED', async () => {
    const mute = join(root, `mute${counter++}.sock`);
    const held: Socket[] = [];
    const server = createServer((s) => held.push(s)).listen(mute);
    servers.push(server);
    const ac = new AbortController();
    const pending = workerConnector({})(parseNbdUri(`nbds+unix:///?socket=${mute}`), { signal: ac.signal }).catch((e) => e);
    setTimeout(() => ac.abort(), 200);
    const err = await pending;
    expect(isVdError(err, 'ERR_VD_ABORTED'), String(err)).toBe(true);
    for (const s of held) s.destroy();
  });

  it('reads survive dropped worker connections: retried on fresh workers', async () => {
    // A relay in front of nbdkit, so the test can cut every connection under reads in flight.
    const relay = join(root, `relay${counter++}.sock`);
    const live: Socket[] = [];
    // Armed once the disk is open: cuts every connection after 2 MiB of replies, mid-read.
    let budget = Number.POSITIVE_INFINITY;
    const server = createServer((client) => {
      const upstream = unixConnect(sock);
      live.push(client, upstream);
      upstream.on('data', (d: Buffer) => {
        budget -= d.length;
        if (budget > 0) return;
        budget = Number.POSITIVE_INFINITY;
        for (const s of live.splice(0)) s.destroy();
      });
      client.pipe(upstream).pipe(client);
      const end = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    }).listen(relay);
    servers.push(server);
    const disk: Disk = await openDisk(uriOf(relay), {
      transports: [nbdssl({ connections: 3, workers: true, retryDelay: 10 })],
      readOnly: true,
    });
    const retries: unknown[] = [];
    const onRetry = (m: unknown) => retries.push(m);
    channels.retry.subscribe(onRetry);
    try {
      await joined(disk, 2);
      budget = 2 * MiB;
      const parts = await Promise.all(Array.from({ length: 32 }, (_, i) => disk.read((i % 8) * MiB, MiB)));
      for (const [i, p] of parts.entries())
        expect(Buffer.compare(Buffer.from(p), data.subarray((i % 8) * MiB, ((i % 8) + 1) * MiB))).toBe(0);
      expect(retries.length).toBeGreaterThan(0);
      expect(disk.info().workerConnections).toBe(2);
    } finally {
      channels.retry.unsubscribe(onRetry);
      await disk.close();
    }
  });

  it('a process that closes its disks exits on its own, also when closed before the workers joined', async () => {
    // The built packages, as an application runs them; the child's own exit is the assertion.
    const dist = (p: string) => fileURLToPath(new URL(`../../../${p}/dist/index.js`, import.meta.url));
    const script = `
      const { openDisk } = await import(${JSON.stringify(dist('core'))});
      const { nbdssl } = await import(${JSON.stringify(dist('nbdssl'))});
      const { setWorkerIdleTime } = await import(${JSON.stringify(dist('nbdssl'))});
      // Idle threads are kept for the next disk: they must not hold the process either, however
      // long they are kept.
      setWorkerIdleTime(3_600_000);
      const open = () => openDisk(${JSON.stringify(uriOf(sock))}, { transports: [nbdssl({ connections: 3, workers: true })], readOnly: true });
      // Closed while its workers are still starting: close waits for them and ends them.
      await (await open()).close();
      const disk = await open();
      for (let i = 0; disk.info().workerConnections !== 2; i++) {
        if (i > 300) throw new Error('expected 2 worker connections');
        await new Promise((r) => setTimeout(r, 50));
      }
      await disk.read(0, 4 * ${MiB});
      await disk.close();
      console.log('closed');`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
      ),
    );
    expect(out.trim()).toBe('closed');
  });

  it('a closed disk leaves its worker threads idle for the next disk, which starts none', () =>
    keepingIdle(60_000, async () => {
      const open = () => openDisk(uriOf(sock), { transports: [nbdssl({ connections: 3, workers: true })], readOnly: true });
      const first = await open();
      await joined(first, 2);
      await first.close();
      const before = workerThreadStats();
      expect(before.idle).toBeGreaterThanOrEqual(2);
      const second = await open();
      await joined(second, 2);
      const after = workerThreadStats();
      expect(after.started).toBe(before.started);
      expect(after.reused - before.reused).toBe(2);
      expect(after.idle).toBe(before.idle - 2);
      // The reused threads carry the new disk's requests.
      const parts = await Promise.all(Array.from({ length: 8 }, (_, i) => second.read(i * MiB, MiB)));
      expect(Buffer.compare(Buffer.concat(parts), data)).toBe(0);
      await second.close();
      expect(workerThreadStats().idle).toBe(before.idle);
    }));

  it("idle threads end after the idle time, or at once with 0; a destroyed connection's thread is not kept", () =>
    keepingIdle(60_000, async () => {
      const disk = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      await joined(disk, 1);
      const idle = workerThreadStats().idle;
      await disk.destroy();
      expect(workerThreadStats().idle).toBe(idle);
      const kept = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      await joined(kept, 1);
      await kept.close();
      expect(workerThreadStats().idle).toBeGreaterThan(0);
      setWorkerIdleTime(0);
      expect(workerThreadStats().idle).toBe(0);
      setWorkerIdleTime(50);
      const brief = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      await joined(brief, 1);
      await brief.close();
      expect(workerThreadStats().idle).toBe(1);
      await vi.waitFor(() => expect(workerThreadStats().idle).toBe(0), { timeout: 5000, interval: 20 });
      const refused = (ms: number): unknown => {
        try {
          setWorkerIdleTime(ms);
        } catch (err) {
          return err;
        }
      };
      expect(isVdError(refused(-1), 'ERR_VD_INVALID_ARGUMENT')).toBe(true);
      expect(isVdError(refused(1.5), 'ERR_VD_INVALID_ARGUMENT')).toBe(true);
    }));

  it('a reused thread refused by the next server (wrong thumbprint) ends; the pool goes on', () =>
    keepingIdle(60_000, async () => {
      const disk = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      await joined(disk, 1);
      await disk.close();
      const before = workerThreadStats();
      expect(before.idle).toBeGreaterThan(0);
      const wrong = `sha256:${'AB:'.repeat(31)}AB`;
      const err = await workerConnector({ thumbprint: wrong })(parseNbdUri(uriOf(sock)), {}).catch((e) => e);
      expect(isVdError(err, 'ERR_VD_TLS'), String(err)).toBe(true);
      const after = workerThreadStats();
      expect(after.reused).toBe(before.reused + 1);
      expect(after.idle).toBe(before.idle - 1);
      const again = await openDisk(uriOf(sock), { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      await joined(again, 1);
      expect(Buffer.compare(Buffer.from(await again.read(0, MiB)), data.subarray(0, MiB))).toBe(0);
      await again.close();
    }));

  it('a process started with V8 or process-wide flags (--max-old-space-size, --expose-gc) still runs worker connections', async () => {
    // A worker refuses those flags in its execArgv (they apply to the whole process already).
    const dist = (p: string) => fileURLToPath(new URL(`../../../${p}/dist/index.js`, import.meta.url));
    const script = `
      const { openDisk } = await import(${JSON.stringify(dist('core'))});
      const { nbdssl } = await import(${JSON.stringify(dist('nbdssl'))});
      const disk = await openDisk(${JSON.stringify(uriOf(sock))}, { transports: [nbdssl({ connections: 2, workers: true })], readOnly: true });
      for (let i = 0; disk.info().workerConnections !== 1; i++) {
        if (i > 300) throw new Error('expected 1 worker connection');
        await new Promise((r) => setTimeout(r, 50));
      }
      const parts = await Promise.all([0, 1, 2, 3].map((i) => disk.read(i * ${2 * MiB}, ${2 * MiB})));
      await disk.close();
      console.log(JSON.stringify({ workers: 1, bytes: parts.reduce((n, p) => n + p.length, 0) }));`;
    const flags = ['--max-old-space-size=512', '--expose-gc', '--stack-trace-limit=20'];
    const out = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, [...flags, '--input-type=module', '-e', script], { timeout: 30_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
      ),
    );
    expect(JSON.parse(out.trim())).toEqual({ workers: 1, bytes: 8 * MiB });
  });
});
