#!/usr/bin/env node
// `pnpm bench nbdssl`: NBD over TLS throughput, ours against the peers on the same input in one
// run. Needs `pnpm build` (runs the built packages) and nbdkit, nbdcopy on PATH.
//  1. Client cost of TLS: vd's client reading the whole export from `nbdkit file` in the clear and
//     from `nbdkit --tls=require` (target: TLS >= 0.8x plaintext).
//  2. Client against the peer: the same TLS read vs `nbdcopy nbds+unix://... null:` (target >= 1.0x),
//     over a unix socket and over TCP loopback; and in 64 KiB requests (vs `nbdcopy
//     --request-size=65536`), about the size of the changed areas an incremental backup reads.
//  3. The same TLS read with the connections after the first decrypting in worker threads (the
//     default with more than one core) vs all in this thread.
//  4. Server: `nbdcopy nbds+unix://... null:` reading vd's NbdServer --tls=require vs nbdkit --tls=require.
// Size: BENCH_NBDSSL_MIB (default 1024). Rounds: BENCH_NBDSSL_ROUNDS (default 7). The runs compared
// rotate within each round, so a load spike hits both sides; the ratio reported is the median
// of the per-round ratios. Our client's CPU time per GiB is printed too: under load the wall-clock
// figures swing, the CPU cost of each path does not (and V8's --cpu-prof books native TLS
// decryption as "(idle)", so a profile alone makes the TLS client look latency-bound). So is the
// CPU per GiB of the nbdkit read from: what each client costs the server on a machine they share.
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec, freePort, peer, readAll, reporter, rounds } from './_nbd-peers.mjs';

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
const ROUNDS = Number(process.env.BENCH_NBDSSL_ROUNDS ?? 7);

const report = reporter({ size: SIZE, width: 40, ratio: 'first/second', cpu: 'client CPU' });

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
  // The inputs were just written: put them on disk now, so the kernel's writeback of gigabytes of
  // dirty pages does not land in the first timed runs (it costs CPU and favours whichever side
  // runs on more threads).
  spawnSync('sync');
  const sock = (n) => join(dir, `${n}.sock`);
  const pid = (n) => join(dir, `${n}.pid`);
  const plainUri = `nbd+unix:///?socket=${sock('plain')}`;
  const tlsUri = `nbds+unix:///?socket=${sock('tls')}&tls-certificates=${pki.dir}`;
  const plainKit = await peer('nbdkit', ['-f', '-U', sock('plain'), '-P', pid('plain'), 'file', raw], sock('plain'), pid('plain'));
  stops.push(plainKit.stop);
  const tlsKit = await peer(
    'nbdkit',
    ['-f', '--tls=require', `--tls-certificates=${pki.dir}`, '-U', sock('tls'), '-P', pid('tls'), 'file', raw],
    sock('tls'),
    pid('tls'),
  );
  stops.push(tlsKit.stop);
  // The same TLS export over TCP loopback, the path a backup takes from a host.
  const port = await freePort();
  const tlsKitTcp = await peer(
    'nbdkit',
    ['-f', '--tls=require', `--tls-certificates=${pki.dir}`, '-i', '127.0.0.1', '-p', String(port), '-P', pid('tls-tcp'), 'file', raw],
    { port },
    pid('tls-tcp'),
  );
  stops.push(tlsKitTcp.stop);
  const tlsTcpUri = `nbds://127.0.0.1:${port}/?tls-certificates=${pki.dir}`;

  const ourRead = (uri, transports, server, read = readAll) => ({
    server,
    run: async () => {
      const disk = await core.openDisk(uri, { transports, readOnly: true });
      await read(disk);
      await disk.close();
    },
  });
  // The default (worker threads with more than one core) against the other choice.
  const workersByDefault = availableParallelism() > 1;
  const [tls, plain, nbdcopyTls, otherMode, tlsTcp, nbdcopyTlsTcp] = await rounds(
    [
      ourRead(tlsUri, [nbdssl()], tlsKit),
      ourRead(plainUri, [nbd()], plainKit),
      { server: tlsKit, run: () => exec('nbdcopy', [tlsUri, 'null:']) },
      ourRead(tlsUri, [nbdssl({ workers: !workersByDefault })], tlsKit),
      ourRead(tlsTcpUri, [nbdssl()], tlsKitTcp),
      { server: tlsKitTcp, run: () => exec('nbdcopy', [tlsTcpUri, 'null:']) },
    ],
    ROUNDS,
  );
  report(
    'client: full read from nbdkit file, TLS vs clear',
    'vd nbdssl() from nbdkit --tls=require',
    tls,
    'vd nbd() from nbdkit (clear)',
    plain,
    0.8,
    true,
  );
  report(
    'client: full read over TLS, ours vs nbdcopy',
    'vd nbdssl() from nbdkit --tls=require',
    tls,
    'nbdcopy nbds+unix:// null:',
    nbdcopyTls,
    1.0,
  );
  report(
    'client: full read over TLS on TCP loopback, ours vs nbdcopy',
    'vd nbdssl() from nbdkit --tls=require',
    tlsTcp,
    'nbdcopy nbds:// null:',
    nbdcopyTlsTcp,
    1.0,
  );

  // Requests of 64 KiB, about the size of the changed areas an incremental backup reads: the cost
  // per request, over TLS.
  const small = 64 * 1024;
  const [tlsSmall, nbdcopySmall] = await rounds(
    [
      ourRead(tlsUri, [nbdssl()], tlsKit, (disk) => readAll(disk, small, 64)),
      { server: tlsKit, run: () => exec('nbdcopy', [`--request-size=${small}`, tlsUri, 'null:']) },
    ],
    ROUNDS,
  );
  report(
    'client: 64 KiB requests over TLS, ours vs nbdcopy',
    'vd nbdssl(), 64 in flight',
    tlsSmall,
    'nbdcopy --request-size=65536',
    nbdcopySmall,
  );

  const [withWorkers, inThread] = workersByDefault ? [tls, otherMode] : [otherMode, tls];
  report(
    'client: TLS connections after the first in worker threads vs all in-thread',
    `vd nbdssl({ workers: true })${workersByDefault ? ' (default)' : ''}`,
    withWorkers,
    `vd nbdssl({ workers: false })${workersByDefault ? '' : ' (default)'}`,
    inThread,
    undefined,
    true,
  );

  const fileT = core.file({ formats: [core.rawFormat] });
  const disk = await core.openDisk(raw, { transports: [fileT], readOnly: true });
  const server = new NbdServer({ exports: [{ name: '', disk }], tls: await nbdServerTls({ mode: 'require', certificates: pki.dir }) });
  await server.listen({ path: sock('vd') });
  const vdUri = `nbds+unix:///?socket=${sock('vd')}&tls-certificates=${pki.dir}`;
  const [ours, theirs] = await rounds(
    [() => exec('nbdcopy', [vdUri, 'null:']), { server: tlsKit, run: () => exec('nbdcopy', [tlsUri, 'null:']) }],
    ROUNDS,
  );
  ours.serverCpu = ours.cpu; // this process is the server there
  report('server: nbdcopy reading over TLS', 'vd NbdServer --tls=require', ours, 'nbdkit --tls=require', theirs);
  await server.close();
  await disk.close();
} finally {
  for (const s of stops) s();
  await rm(dir, { recursive: true, force: true });
}
