#!/usr/bin/env node
// `pnpm bench nbdssl`: NBD over TLS throughput, ours against the peers on the same input in one
// run. Needs `pnpm build` (runs the built packages) and nbdkit, nbdcopy on PATH.
//  1. Client cost of TLS: vd's client reading the whole export from `nbdkit file` in the clear and
//     from `nbdkit --tls=require` (target: TLS >= 0.8x plaintext).
//  2. Client against the peer: the same TLS read vs `nbdcopy nbds+unix://... null:` (target >= 1.0x).
//  3. Server: `nbdcopy nbds+unix://... null:` reading vd's NbdServer --tls=require vs nbdkit --tls=require.
// Size: BENCH_NBDSSL_MIB (default 1024). Rounds: BENCH_NBDSSL_ROUNDS (default 3, median reported).
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { access, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

// The server reads files on libuv's pool; `vd serve` widens it the same way before any I/O.
if (!process.env.UV_THREADPOOL_SIZE) {
  const r = spawnSync(process.execPath, process.argv.slice(1), { stdio: 'inherit', env: { ...process.env, UV_THREADPOOL_SIZE: '16' } });
  process.exit(r.status ?? 1);
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => join(root, 'packages', p, 'dist/index.js');
if (!['core', 'nbd', 'nbdssl'].every((p) => existsSync(dist(p)))) {
  console.error('bench nbdssl: build first (pnpm build, or pnpm --filter @vd/core --filter @vd/nbd --filter @vd/nbdssl build)');
  process.exit(2);
}
const core = await import(dist('core'));
const { NbdServer, nbd } = await import(dist('nbd'));
const { createPki, nbdServerTls, nbdssl } = await import(dist('nbdssl'));

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_NBDSSL_MIB ?? 1024) * MiB;
const ROUNDS = Number(process.env.BENCH_NBDSSL_ROUNDS ?? 3);
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };

function exec(cmd, args) {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d) => {
      err += d;
    });
    c.on('error', reject);
    c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

async function peer(cmd, args, sock, pid) {
  const c = spawn(cmd, args, { env, stdio: 'ignore' });
  for (let i = 0; i < 400; i++) {
    try {
      await access(pid);
      await access(sock);
      return { stop: () => c.kill('SIGTERM') };
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  c.kill('SIGKILL');
  throw new Error(`${cmd} did not start`);
}

async function time(f) {
  const t = [];
  for (let i = 0; i < ROUNDS; i++) {
    const s = performance.now();
    await f();
    t.push((performance.now() - s) / 1000);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)];
}

const rate = (bytes, s) => `${(bytes / MiB / s).toFixed(0)} MiB/s`;
function report(what, oursName, ours, peerName, theirs, target) {
  console.log(`${what}`);
  console.log(`  ${oursName.padEnd(40)} ${ours.toFixed(2)} s  ${rate(SIZE, ours)}`);
  console.log(`  ${peerName.padEnd(40)} ${theirs.toFixed(2)} s  ${rate(SIZE, theirs)}`);
  console.log(`  ratio (first/second throughput)          ${(theirs / ours).toFixed(2)}x${target ? ` (target >= ${target}x)` : ''}`);
}

/** Reads the whole disk through our client, `inFlight` requests of `chunk` bytes into reused buffers. */
async function readAll(disk, chunk = 2 * MiB, inFlight = 16) {
  let next = 0;
  const worker = async () => {
    const buf = new Uint8Array(chunk);
    while (next < disk.size) {
      const at = next;
      next += chunk;
      const n = Math.min(chunk, disk.size - at);
      await disk.readInto(at, n === chunk ? buf : buf.subarray(0, n));
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

const dir = await mkdtemp(join(tmpdir(), 'vd-bench-nbdssl-'));
const stops = [];
try {
  console.log(`bench nbdssl: ${SIZE / MiB} MiB, median of ${ROUNDS} rounds`);
  const pki = await createPki(join(dir, 'pki'));
  const raw = join(dir, 'full.raw');
  {
    const fh = await open(raw, 'w');
    const buf = new Uint8Array(8 * MiB);
    for (let at = 0; at < SIZE; at += buf.length) {
      randomFillSync(buf);
      await fh.write(buf, 0, Math.min(buf.length, SIZE - at), at);
    }
    await fh.close();
  }
  const sock = (n) => join(dir, `${n}.sock`);
  const pid = (n) => join(dir, `${n}.pid`);
  const plainUri = `nbd+unix:///?socket=${sock('plain')}`;
  const tlsUri = `nbds+unix:///?socket=${sock('tls')}&tls-certificates=${pki.dir}`;
  stops.push((await peer('nbdkit', ['-f', '-U', sock('plain'), '-P', pid('plain'), 'file', raw], sock('plain'), pid('plain'))).stop);
  stops.push(
    (
      await peer(
        'nbdkit',
        ['-f', '--tls=require', `--tls-certificates=${pki.dir}`, '-U', sock('tls'), '-P', pid('tls'), 'file', raw],
        sock('tls'),
        pid('tls'),
      )
    ).stop,
  );

  const ourRead = (uri, transports) => async () => {
    const disk = await core.openDisk(uri, { transports, readOnly: true });
    await readAll(disk);
    await disk.close();
  };
  const plain = await time(ourRead(plainUri, [nbd()]));
  const tls = await time(ourRead(tlsUri, [nbdssl()]));
  report(
    'client: full read from nbdkit file, TLS vs clear',
    'vd nbdssl() from nbdkit --tls=require',
    tls,
    'vd nbd() from nbdkit (clear)',
    plain,
    0.8,
  );

  const nbdcopyTls = await time(() => exec('nbdcopy', [tlsUri, 'null:']));
  report(
    'client: full read over TLS, ours vs nbdcopy',
    'vd nbdssl() from nbdkit --tls=require',
    tls,
    'nbdcopy nbds+unix:// null:',
    nbdcopyTls,
    1.0,
  );

  const fileT = core.file({ formats: [core.rawFormat] });
  const disk = await core.openDisk(raw, { transports: [fileT], readOnly: true });
  const server = new NbdServer({ exports: [{ name: '', disk }], tls: await nbdServerTls({ mode: 'require', certificates: pki.dir }) });
  await server.listen({ path: sock('vd') });
  const vdUri = `nbds+unix:///?socket=${sock('vd')}&tls-certificates=${pki.dir}`;
  const ours = await time(() => exec('nbdcopy', [vdUri, 'null:']));
  report('server: nbdcopy reading over TLS', 'vd NbdServer --tls=require', ours, 'nbdkit --tls=require', nbdcopyTls);
  await server.close();
  await disk.close();
} finally {
  for (const s of stops) s();
  await rm(dir, { recursive: true, force: true });
}
