#!/usr/bin/env node
// Part of `pnpm bench cbt` (bench/cbt.mjs calls `hostBench()`; `node bench/_host.mjs` runs it alone):
// what change tracking costs on writes through the disk host, end to end over
// NBD. One host serving two preallocated raw disks: one tracked, one with tracking off; the same client (our nbd() transport, 1 MiB writes, 16 in
// flight) writes the whole disk to each, rounds interleaved, medians. Between tracked rounds a
// snapshot is taken and deleted, so every block is marked for the first time in every round (the
// expensive case). BENCH_HOST_AA=1 tracks neither: the ratio then shows the noise floor.
// Needs `pnpm build`.
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dists = ['core', 'cbt', 'nbd', 'nbdssl', 'host'].map((p) => join(root, `packages/${p}/dist/index.js`));

const MiB = 1024 * 1024;
const TOTAL = Number(process.env.BENCH_HOST_MIB ?? 256) * MiB;
const CHUNK = MiB;
const IN_FLIGHT = 16;
const ROUNDS = Number(process.env.BENCH_HOST_ROUNDS ?? 11);

async function preallocate(path) {
  const fh = await open(path, 'w');
  const zero = Buffer.alloc(16 * MiB);
  for (let at = 0; at < TOTAL; at += zero.length) await fh.write(zero, 0, zero.length, at);
  await fh.close();
}

/** MiB/s (wall) and CPU milliseconds of this process (client and host) per GiB written. */
async function writeAll(disk, data) {
  let next = 0;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < TOTAL) {
        const at = next;
        next += CHUNK;
        await disk.write(at, data);
      }
    }),
  );
  await disk.flush();
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  return { speed: TOTAL / MiB / wall, cpuPerGiB: (cpu.user + cpu.system) / 1000 / (TOTAL / (1024 * MiB)) };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function hostBench() {
  if (!dists.every(existsSync)) throw new Error('bench host: build first (pnpm build)');
  const { openDisk } = await import(dists[0]);
  const { nbd } = await import(dists[2]);
  const { DiskHost } = await import(dists[4]);
  // Default: tmpfs when there is one, so the figure is the tracker's CPU cost and not the noise of a
  // shared disk's writeback; BENCH_HOST_DIR=/path measures on a real file system.
  const base = process.env.BENCH_HOST_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
  const dir = await mkdtemp(join(base, 'vd-bench-host-'));
  try {
    // One host, two disks: the only difference between them is the tracker.
    await preallocate(join(dir, 'tracked.img'));
    await preallocate(join(dir, 'untracked.img'));
    const aa = process.env.BENCH_HOST_AA === '1';
    const host = await DiskHost.open({ datastore: dir, track: (name) => name === 'tracked.img' && !aa });
    await host.listen();
    const hosts = {};
    for (const mode of ['tracked', 'untracked']) {
      const disk = await openDisk(host.uriOf(`${mode}.img`), { transports: [nbd()] });
      hosts[mode] = { disk, speeds: [], cpu: [] };
    }
    console.log(
      `write through the host over NBD: ${TOTAL / MiB} MiB in ${CHUNK / MiB} MiB writes, ${IN_FLIGHT} in flight, flush at the end, median of ${ROUNDS}`,
    );
    const data = new Uint8Array(CHUNK).map((_, i) => (i * 31) & 0xff);
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? ['tracked', 'untracked'] : ['untracked', 'tracked'];
      for (const mode of order) {
        const h = hosts[mode];
        // Start from clean page caches on both, untimed.
        await Promise.all(Object.values(hosts).map((x) => x.disk.flush()));
        if (mode === 'tracked' && !aa) {
          // A new change point: every block of this round is a first change again.
          const s = await host.createSnapshot('tracked.img');
          await host.deleteSnapshot('tracked.img', s.id);
        }
        const r = await writeAll(h.disk, data);
        h.speeds.push(r.speed);
        h.cpu.push(r.cpuPerGiB);
      }
    }
    const t = median(hosts.tracked.speeds);
    const u = median(hosts.untracked.speeds);
    // Each round measures both back to back, so its ratio cancels the load drift of a shared machine.
    const ratios = hosts.tracked.speeds.map((x, i) => x / hosts.untracked.speeds[i]);
    const r = median(ratios);
    const cu = median(hosts.untracked.cpu);
    const ct = median(hosts.tracked.cpu);
    console.log(`  untracked export: ${u.toFixed(0)} MiB/s, ${cu.toFixed(0)} ms CPU per GiB`);
    console.log(`  tracked export:   ${t.toFixed(0)} MiB/s, ${ct.toFixed(0)} ms CPU per GiB (CPU ratio ${(ct / cu).toFixed(3)})`);
    console.log(
      `  tracked / untracked, median of per-round ratios: ${r.toFixed(3)} (overhead ${((1 - r) * 100).toFixed(1)}%; rounds ${Math.min(...ratios).toFixed(2)}…${Math.max(...ratios).toFixed(2)})`,
    );
    for (const h of Object.values(hosts)) await h.disk.close();
    await host.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await hostBench();
