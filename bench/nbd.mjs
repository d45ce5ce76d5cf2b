#!/usr/bin/env node
// `pnpm bench nbd`: NBD throughput, ours against the peers on the same input in one run. Needs
// `pnpm build` (runs the built packages) and nbdkit, nbdcopy, qemu-nbd, qemu-img on PATH.
//  1. Client: vd's nbd() client reading the whole export from `nbdkit file` vs `nbdcopy uri null:`,
//     over a unix socket and over TCP loopback; and in 64 KiB requests over the unix socket (vs
//     `nbdcopy --request-size=65536`), where the cost per request shows: an incremental backup
//     reads changed areas about that small.
//  2. Server: `nbdcopy uri null:` reading from vd's NbdServer vs from `nbdkit file` (same raw; the
//     zero-copy server and one copying every READ through a buffer, in the same rounds),
//     and vd's NbdServer vs qemu-nbd serving the same monolithicSparse VMDK.
//  3. Sparse: a 10%-allocated raw read (allocated data only) from vd's server, as a share of the
//     fully allocated one, by nbdcopy and by vd's client.
//  4. Restore (no target): vd's copy engine writing the raw to `nbdkit null` vs nbdcopy doing so,
//     and nbdcopy writing it into vd's NbdServer vs into `nbdkit file`.
//  5. Peak RSS of this process (which runs our client and servers): through the read sections
//     (the target), and with the restore runs on top.
//  6. The opt-in worker connection (`nbd({ workers: true })`) for the unix-socket read of 1., vs
//     the default and nbdcopy; last, so its thread's memory stays out of the figures of 5.
// Size: BENCH_NBD_MIB (default 2048). Rounds: BENCH_NBD_ROUNDS (default 9: on a shared 2-core
// machine one round's ratio swings by a fifth either way, and a median of 5 by a tenth; the runs
// compared rotate within each round after a warm-up of each; the ratio is the median of the
// per-round ratios, and our CPU per GiB is printed since, on a shared machine, it swings far less
// than wall time; so is the peer server's, which shows what each client costs the server it
// shares the machine with).
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec, freePort, median, peer, readAll, readAllocated, reporter, rounds } from './_nbd-peers.mjs';

// The server reads files on libuv's pool; `vd serve` widens it the same way before any I/O.
if (!process.env.UV_THREADPOOL_SIZE) {
  const r = spawnSync(process.execPath, process.argv.slice(1), { stdio: 'inherit', env: { ...process.env, UV_THREADPOOL_SIZE: '16' } });
  process.exit(r.status ?? 1);
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const coreDist = join(root, 'packages/core/dist/index.js');
const nbdDist = join(root, 'packages/nbd/dist/index.js');
if (!existsSync(coreDist) || !existsSync(nbdDist)) {
  console.error('bench nbd: build first (pnpm build, or pnpm --filter @vd/core --filter @vd/nbd build)');
  process.exit(2);
}
const core = await import(coreDist);
const { NbdServer, nbd } = await import(nbdDist);

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_NBD_MIB ?? 2048) * MiB;
const ROUNDS = Number(process.env.BENCH_NBD_ROUNDS ?? 9);

let peakRss = 0;
const rssTimer = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
}, 50);

const report = reporter({ size: SIZE, width: 34, ratio: 'ours/peer', cpu: 'vd CPU' });

const dir = await mkdtemp(join(tmpdir(), 'vd-bench-nbd-'));
const stops = [];
try {
  console.log(`bench nbd: ${SIZE / MiB} MiB, median of ${ROUNDS} rounds`);
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
  const vmdk = join(dir, 'full.vmdk');
  await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, vmdk]);
  const sparse = join(dir, 'sparse.raw');
  {
    // 10% allocated: 1 MiB of data in every 10 MiB.
    const fh = await open(sparse, 'w');
    await fh.truncate(SIZE);
    const buf = new Uint8Array(MiB);
    for (let at = 0; at < SIZE; at += 10 * MiB) {
      randomFillSync(buf);
      await fh.write(buf, 0, buf.length, at);
    }
    await fh.close();
  }
  // The inputs were just written: put them on disk now, so the kernel's writeback of gigabytes of
  // dirty pages does not land in the first timed runs (it costs CPU and favours whichever side
  // runs on more threads).
  spawnSync('sync');
  const sock = (n) => join(dir, `${n}.sock`);
  const pid = (n) => join(dir, `${n}.pid`);

  // 1. Client, over a unix socket and over TCP loopback (the path a backup takes from a host).
  const kit = await peer('nbdkit', ['-f', '-U', sock('kit'), '-P', pid('kit'), 'file', raw], sock('kit'), pid('kit'));
  stops.push(kit.stop);
  const port = await freePort();
  const kitTcp = await peer(
    'nbdkit',
    ['-f', '-i', '127.0.0.1', '-p', String(port), '-P', pid('kit-tcp'), 'file', raw],
    { port },
    pid('kit-tcp'),
  );
  stops.push(kitTcp.stop);
  const ourRead = (server, options = {}, read = readAll) => ({
    server,
    run: async () => {
      const disk = await core.openDisk(server.uri, { transports: [nbd(options)], readOnly: true });
      await read(disk);
      await disk.close();
    },
  });
  const nbdcopy = (server) => ({ server, run: () => exec('nbdcopy', [server.uri, 'null:']) });
  const [ours1, theirs1, ours1Tcp, theirs1Tcp] = await rounds([ourRead(kit), nbdcopy(kit), ourRead(kitTcp), nbdcopy(kitTcp)], ROUNDS);
  report('client: full read from nbdkit file, unix socket', 'vd nbd() client', ours1, 'nbdcopy ... null:', theirs1, 1);
  report('client: full read from nbdkit file, TCP loopback', 'vd nbd() client', ours1Tcp, 'nbdcopy ... null:', theirs1Tcp, 1);
  const small = 64 * 1024;
  const [oursSmall, theirsSmall] = await rounds(
    [
      ourRead(kit, {}, (disk) => readAll(disk, small, 64)),
      { server: kit, run: () => exec('nbdcopy', [`--request-size=${small}`, kit.uri, 'null:']) },
    ],
    ROUNDS,
  );
  report(
    'client: 64 KiB requests from nbdkit file, unix socket',
    'vd nbd() client, 64 in flight',
    oursSmall,
    'nbdcopy --request-size=65536',
    theirsSmall,
  );

  // 2. Server, raw and VMDK.
  const fileT = core.file({ formats: [core.vmdkFormat, core.rawFormat] });
  const rawDisk = await core.openDisk(raw, { transports: [fileT], readOnly: true });
  const vmdkDisk = await core.openDisk(vmdk, { transports: [fileT], readOnly: true });
  const sparseDisk = await core.openDisk(sparse, { transports: [fileT], readOnly: true });
  const server = new NbdServer({
    exports: [
      { name: 'raw', disk: rawDisk },
      { name: 'vmdk', disk: vmdkDisk },
      { name: 'sparse', disk: sparseDisk },
    ],
  });
  await server.listen({ path: sock('vd') });
  // The same raw file served with every READ copied through a buffer (no sendfile): the A/B of
  // the zero-copy path, in the same rounds.
  const copied = new NbdServer({ exports: [{ name: 'raw', disk: rawDisk }], limits: { zeroCopySends: 0 } });
  await copied.listen({ path: sock('vd-copied') });
  const vdUri = (name) => `nbd+unix:///${name}?socket=${sock('vd')}`;
  const ourClient = (name, read) => async () => {
    const disk = await core.openDisk(vdUri(name), { transports: [nbd()], readOnly: true });
    await read(disk);
    await disk.close();
  };
  const [ours2, theirs2, sparse2, copied2, vdFull, vdSparse] = await rounds(
    [
      () => exec('nbdcopy', [vdUri('raw'), 'null:']),
      { server: kit, run: () => exec('nbdcopy', [kit.uri, 'null:']) },
      () => exec('nbdcopy', [vdUri('sparse'), 'null:']),
      () => exec('nbdcopy', [`nbd+unix:///raw?socket=${sock('vd-copied')}`, 'null:']),
      ourClient('raw', readAllocated),
      ourClient('sparse', readAllocated),
    ],
    ROUNDS,
  );
  report('server: nbdcopy reading the raw', 'vd NbdServer', ours2, 'nbdkit file', theirs2, 1);
  const { zeroCopyReads, copiedReads } = server.stats;
  console.log(`  vd NbdServer READs: ${zeroCopyReads} sent with sendfile, ${copiedReads} copied`);
  report('server: the raw, READs copied (zeroCopySends: 0)', 'vd NbdServer, copied', copied2, 'nbdkit file', theirs2, 1);
  await copied.close();

  const before = { ...server.stats };
  const q = await peer('qemu-nbd', ['-k', sock('q'), `--pid-file=${pid('q')}`, '-r', '-t', '-f', 'vmdk', vmdk], sock('q'), pid('q'));
  stops.push(q.stop);
  const [ours3, theirs3] = await rounds(
    [() => exec('nbdcopy', [vdUri('vmdk'), 'null:']), { server: q, run: () => exec('nbdcopy', [q.uri, 'null:']) }],
    ROUNDS,
  );
  report('server: nbdcopy reading the monolithicSparse VMDK', 'vd NbdServer', ours3, 'qemu-nbd', theirs3, 1);
  console.log(
    `  vd NbdServer READs: ${server.stats.zeroCopyReads - before.zeroCopyReads} sent with sendfile, ${server.stats.copiedReads - before.copiedReads} copied`,
  );

  // 3. Sparse: timed in the same rounds as the full raw read above.
  console.log('sparse: a 10%-allocated raw vs the fully allocated one, from vd NbdServer (target <= 15% of the time)');
  for (const [who, sparse, full] of [
    ['nbdcopy', sparse2, ours2],
    ['vd nbd() client', vdSparse, vdFull],
  ]) {
    const shares = sparse.wall.map((t, i) => (100 * t) / full.wall[i]);
    console.log(
      `  ${who.padEnd(16)} 10% allocated ${median(sparse.wall).toFixed(3)} s vs full ${median(full.wall).toFixed(3)} s = ${median(shares).toFixed(1)}%  rounds: ${shares.map((x) => x.toFixed(1)).join(' ')}`,
    );
  }

  // The RSS target is about reading, as it was set before the restore runs were added; those put a
  // writable server and a copy's buffers on top, and malloc keeps some freed 2 MiB buffers.
  const readPeakRss = peakRss;

  // 4. Restore: the raw copied onto an export, by vd's copy engine and nbdcopy into the same
  // `nbdkit null` (the client's side alone), and by nbdcopy into vd's NbdServer and `nbdkit file`
  // (each writing a file of its own).
  const sink = await peer('nbdkit', ['-f', '-U', sock('null'), '-P', pid('null'), 'null', `size=${SIZE}`], sock('null'), pid('null'));
  stops.push(sink.stop);
  const [vdTarget, kitTarget] = [join(dir, 'restore-vd.raw'), join(dir, 'restore-kit.raw')];
  await core.createDisk(vdTarget, { size: SIZE });
  await core.createDisk(kitTarget, { size: SIZE });
  const kitW = await peer('nbdkit', ['-f', '-U', sock('kit-w'), '-P', pid('kit-w'), 'file', kitTarget], sock('kit-w'), pid('kit-w'));
  stops.push(kitW.stop);
  const targetDisk = await core.openDisk(vdTarget, { transports: [fileT] });
  const writable = new NbdServer({ exports: [{ name: '', disk: targetDisk }] });
  await writable.listen({ path: sock('vd-w') });
  // WRITEs whose payload copyDisk sent from the raw with sendfile, and the bytes it wrote in all.
  const restoreWrites = { zeroCopy: 0, bytes: 0 };
  const [ours4, theirs4, ours5, theirs5] = await rounds(
    [
      {
        server: sink,
        run: async () => {
          const target = await core.openDisk(sink.uri, { transports: [nbd()] });
          const { bytesWritten } = await core.copyDisk(rawDisk, target, { targetIsZero: false });
          restoreWrites.zeroCopy += target.info().zeroCopyWrites;
          restoreWrites.bytes += bytesWritten;
          await target.close();
        },
      },
      { server: sink, run: () => exec('nbdcopy', [raw, sink.uri]) },
      () => exec('nbdcopy', [raw, `nbd+unix:///?socket=${sock('vd-w')}`]),
      { server: kitW, run: () => exec('nbdcopy', [raw, kitW.uri]) },
    ],
    ROUNDS,
  );
  report('restore: the raw copied onto nbdkit null', 'vd copyDisk() + nbd() client', ours4, 'nbdcopy raw nbd+unix://...', theirs4);
  console.log(
    `  vd copyDisk(): ${restoreWrites.zeroCopy} WRITEs sent from the file with sendfile, ${(restoreWrites.bytes / MiB).toFixed(0)} MiB written in all`,
  );
  report('restore: nbdcopy writing the raw (page cache, no flush)', 'vd NbdServer', ours5, 'nbdkit file', theirs5);
  await writable.close();
  await targetDisk.close();

  await server.close();
  await Promise.all([rawDisk.close(), vmdkDisk.close(), sparseDisk.close()]);
  const restorePeakRss = peakRss;

  // 6. The unix-socket read of 1. with the connection after the first in a worker thread.
  const [ours6, default6, theirs6] = await rounds([ourRead(kit, { workers: true }), ourRead(kit), nbdcopy(kit)], ROUNDS);
  report(
    'client, unix socket: nbd({ workers: true }) (opt-in) vs nbdcopy',
    'vd nbd({ workers: true })',
    ours6,
    'nbdcopy ... null:',
    theirs6,
    1,
  );
  report('client, unix socket: nbd({ workers: true }) vs the default', 'vd nbd({ workers: true })', ours6, 'vd nbd()', default6);

  clearInterval(rssTimer);
  console.log(`peak RSS of the vd process (client and servers), reading: ${(readPeakRss / MiB).toFixed(0)} MiB (target < 200 MiB)`);
  console.log(`peak RSS of the vd process, the restore runs included: ${(restorePeakRss / MiB).toFixed(0)} MiB`);
  console.log(`peak RSS of the vd process, with the worker-connection runs of 6.: ${(peakRss / MiB).toFixed(0)} MiB`);
} finally {
  clearInterval(rssTimer);
  for (const s of stops) s();
  await rm(dir, { recursive: true, force: true });
}
