#!/usr/bin/env node
// `pnpm bench cbt`: what change tracking costs. Needs `pnpm build` (runs the built packages).
//  1. Write throughput through a tracked and an untracked raw file disk, same run, same (already
//     allocated) data file, a fresh sidecar for every tracked run so every block is marked for the
//     first time (the expensive case); rounds interleaved in rotating order, medians; prints MiB/s
//     and the ratio, for both durability modes: sequential 1 MiB writes with and without a final
//     flush, and random 4 KiB writes (each to a block not yet marked, mostly).
//  2. Changed-area queries on a 1 TiB disk at 64 KiB granularity with realistic changes, and the
//     worst case (small changes spread over every sidecar page); prints the time of a full paged
//     query and of reopening the sidecar.
//  3. Through the disk host over NBD: a tracked and an untracked export of one host (bench/_host.mjs).
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const coreDist = join(root, 'packages/core/dist/index.js');
const cbtDist = join(root, 'packages/cbt/dist/index.js');
if (!existsSync(coreDist) || !existsSync(cbtDist)) {
  console.error('bench cbt: build first (pnpm build, or pnpm --filter @vd/core --filter @vd/cbt build)');
  process.exit(2);
}
const { Disk, RawSource, defaultCapabilities } = await import(coreDist);
const { track, mark, queryChangedAreas } = await import(cbtDist);

const MiB = 1024 * 1024;
const TOTAL = Number(process.env.BENCH_CBT_MIB ?? 1024) * MiB;
const CHUNK = 1 * MiB;
const IN_FLIGHT = 16;
const ROUNDS = Number(process.env.BENCH_CBT_ROUNDS ?? 7);

/** A positional file store for RawSource (core's file transport may not be built). */
async function fileStore(path) {
  const fh = await open(path, 'r+');
  return {
    name: path,
    readOnly: false,
    size: async () => (await fh.stat()).size,
    read: async (p, into) => (await fh.read(into, 0, into.length, p)).bytesRead,
    write: async (p, d) => {
      await fh.write(d, 0, d.length, p);
    },
    truncate: (s) => fh.truncate(s),
    flush: () => fh.datasync(),
    close: () => fh.close(),
  };
}

const RANDOM_OPS = Number(process.env.BENCH_CBT_RANDOM_OPS ?? 40_000);
let randomOffsets;

async function writeRun(path, mode, flush, random = false) {
  // The host's way: the tracker wraps the format's block source, under one Disk.
  const source = new RawSource(await fileStore(path), TOTAL);
  const disk = mode === 'none' ? new Disk(source) : await track(source, { path: `${path}.cbt`, durability: mode });
  const data = randomBytes(random ? 4096 : CHUNK);
  let next = 0;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      if (random) {
        while (next < RANDOM_OPS) await disk.write(randomOffsets[next++], data);
        return;
      }
      while (next < TOTAL) {
        const at = next;
        next += CHUNK;
        await disk.write(at, data);
      }
    }),
  );
  if (flush) await disk.flush();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  await disk.close();
  await rm(`${path}.cbt`, { force: true });
  return { speed: (random ? RANDOM_OPS : TOTAL / MiB) / (ms / 1000), cpu: (cpu.user + cpu.system) / 1000 };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function throughput(dir) {
  console.log(
    `write throughput: ${TOTAL / MiB} MiB in ${CHUNK / MiB} MiB writes, ${IN_FLIGHT} in flight, 64 KiB granularity, median of ${ROUNDS}`,
  );
  const path = join(dir, 'data.img');
  const fh = await open(path, 'w');
  const fill = randomBytes(8 * MiB);
  for (let at = 0; at < TOTAL; at += fill.length) await fh.write(fill, 0, fill.length, at);
  await fh.datasync();
  await fh.close();
  randomOffsets = Array.from({ length: RANDOM_OPS }, () => randomInt(0, TOTAL / 4096) * 4096);
  const modes = ['none', 'fsync', 'boot'];
  for (const [flush, random] of [
    [false, false],
    [true, false],
    [false, true],
  ]) {
    // Each round runs the three back to back (rotating the order) and yields two ratios; the
    // machine's load drifts between rounds, much less within one.
    const speed = { none: [], fsync: [], boot: [] };
    const cpu = { none: [], fsync: [], boot: [] };
    const ratio = { fsync: [], boot: [] };
    for (let r = 0; r < ROUNDS; r++) {
      const round = {};
      for (let i = 0; i < modes.length; i++) {
        const mode = modes[(i + r) % modes.length];
        round[mode] = await writeRun(path, mode, flush, random);
        speed[mode].push(round[mode].speed);
        cpu[mode].push(round[mode].cpu);
      }
      ratio.fsync.push(round.fsync.speed / round.none.speed);
      ratio.boot.push(round.boot.speed / round.none.speed);
    }
    const label = random
      ? `${RANDOM_OPS} random 4 KiB writes`
      : flush
        ? 'sequential writes + final flush'
        : 'sequential writes (page cache)';
    const unit = random ? 'IOPS' : 'MiB/s';
    console.log(`  ${label}: untracked median ${median(speed.none).toFixed(0)} ${unit}, CPU ${median(cpu.none).toFixed(0)} ms`);
    for (const mode of ['boot', 'fsync']) {
      const q = median(ratio[mode]);
      console.log(
        `    tracked, durability ${mode}: median ${median(speed[mode]).toFixed(0)} ${unit}, CPU ${median(cpu[mode]).toFixed(0)} ms; ` +
          `median ratio tracked/untracked ${q.toFixed(3)} (overhead ${((1 - q) * 100).toFixed(1)}%)`,
      );
    }
  }
}

/** A disk that stores nothing: tracking does not look at data, and 1 TiB of it would not fit. */
class NullSource {
  constructor(size) {
    this.size = size;
    this.capabilities = { ...defaultCapabilities, zero: 'native', fua: 'native' };
  }
  async _read(_o, into) {
    into.fill(0);
  }
  async _write() {}
  async _zero() {}
  async _flush() {}
  async _close() {}
}

async function queries(dir) {
  const TiB = 1024 ** 4;
  const cases = [
    // ~1% of the disk changed in 16k extents of 64 KiB–1 MiB: a day of a busy VM.
    { name: 'realistic: 16 384 changed extents (64 KiB–1 MiB), ~8 GiB', count: 16_384, min: 64 * 1024, max: MiB },
    // Small changes everywhere: every sidecar page holds a change, the query reads every counter.
    { name: 'worst case: 262 144 scattered 4 KiB changes', count: 262_144, min: 4096, max: 4096 },
  ];
  for (const c of cases) {
    const path = join(dir, `q-${c.count}.cbt`);
    let disk = await track(new Disk(new NullSource(TiB)), { path, durability: 'boot' });
    const id = await mark(disk);
    const pending = [];
    for (let i = 0; i < c.count; i++) {
      const length = c.min === c.max ? c.min : randomInt(c.min, c.max);
      pending.push(disk.zero(randomInt(0, TiB - length), length));
      if (pending.length >= 256) await Promise.all(pending.splice(0));
    }
    await Promise.all(pending);
    await disk.close();
    let t0 = performance.now();
    disk = await track(new Disk(new NullSource(TiB)), { path, durability: 'boot' });
    const reopen = performance.now() - t0;
    t0 = performance.now();
    let at = 0;
    let areas = 0;
    let pages = 0;
    while (at < TiB) {
      const page = await queryChangedAreas(disk, id, { startOffset: at });
      areas += page.areas.length;
      pages++;
      at += page.length;
    }
    const ms = performance.now() - t0;
    console.log(
      `query 1 TiB, ${c.name}: ${areas} areas in ${pages} pages, ${ms.toFixed(0)} ms (reopen with sidecar load ${reopen.toFixed(0)} ms)`,
    );
    await disk.close();
    await rm(path, { force: true });
  }
}

console.log(
  `load average ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')} on ${cpus().length} CPUs (throughput on a busy machine is noisy; CPU time less so)`,
);
const dir = await mkdtemp(join(tmpdir(), 'vd-bench-cbt-'));
try {
  await throughput(dir);
  await queries(dir);
  await (await import('./_host.mjs')).hostBench();
} finally {
  await rm(dir, { recursive: true, force: true });
}
