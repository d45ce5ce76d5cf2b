#!/usr/bin/env node
// `pnpm bench vmdk`: VMDK conversion speed against qemu-img on the same input, same run. Needs
// `pnpm --filter @vd/core build`. Input: BENCH_VMDK_MIB (default 1024) MiB of mixed content —
// a third text-like (compressible), a third random, a third zeroes — as a raw file.
//  1. raw → streamOptimized (our stream writer, parallel deflate) vs `qemu-img convert -O vmdk -o subformat=streamOptimized`
//  2. streamOptimized → raw and 3. monolithicSparse → raw (our reader, 8 × 4 MiB reads in flight) vs `qemu-img convert -O raw`
// Prints seconds (median of BENCH_VMDK_ROUNDS, default 3), ratio ours/qemu, output sizes, peak RSS.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const coreDist = join(root, 'packages/core/dist/index.js');
if (!existsSync(coreDist)) {
  console.error('bench vmdk: build first (pnpm --filter @vd/core build)');
  process.exit(2);
}
if (spawnSync('sh', ['-c', 'command -v qemu-img']).status !== 0) {
  console.error('bench vmdk: qemu-img is not installed');
  process.exit(2);
}
const { Disk, RawSource, FileStore, fileResolver, openVmdk, writeStreamOptimized } = await import(coreDist);

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_VMDK_MIB ?? 1024) * MiB;
const ROUNDS = Number(process.env.BENCH_VMDK_ROUNDS ?? 3);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function makeInput(path) {
  const fh = await open(path, 'w');
  const words = 'the quick brown fox jumps over a lazy dog while backups stream grains of disk data '.split(' ');
  let x = 12345;
  const rnd = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const chunk = Buffer.alloc(MiB);
  for (let at = 0; at < SIZE; at += MiB) {
    const kind = (at / MiB) % 3;
    if (kind === 2) continue; // zeroes: left as a hole
    if (kind === 0) {
      let o = 0;
      while (o < MiB) o += chunk.write(`${words[rnd() % words.length]}${rnd() % 7 === 0 ? `${rnd() % 1000}\n` : ' '}`, o);
    } else for (let i = 0; i < MiB; i += 4) chunk.writeUInt32LE(rnd(), i);
    await fh.write(chunk, 0, MiB, at);
  }
  await fh.truncate(SIZE);
  await fh.close();
}

/** Wall and CPU seconds (CPU: all threads, so parallel work shows as CPU > wall). */
function qemu(...args) {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %U %S', 'qemu-img', ...args], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
  const [wall, user, sys] = r.stderr.trim().split('\n').pop().split(' ').map(Number);
  return { wall, cpu: user + sys };
}

async function timed(fn) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  await fn();
  const c = process.cpuUsage(c0);
  return { wall: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6 };
}

async function oursToStream(src, dst) {
  return timed(async () => {
    const store = await FileStore.open(src, { readOnly: true });
    const disk = new Disk(new RawSource(store, await store.size()));
    const out = await FileStore.open(dst, { create: true, overwrite: true });
    await writeStreamOptimized(disk, out);
    await out.flush();
    await out.close();
    await disk.close();
  });
}

async function oursToRaw(src, dst) {
  return timed(async () => {
    const disk = new Disk(await openVmdk(fileResolver(dirname(src)), basename(src), { readOnly: true }));
    const out = await open(dst, 'w');
    await out.truncate(disk.size);
    const step = 4 * MiB;
    const ranges = [];
    for await (const e of disk.extents()) {
      if (e.type !== 'data') continue;
      for (let at = e.offset; at < e.offset + e.length; at += step) ranges.push([at, Math.min(step, e.offset + e.length - at)]);
    }
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        const buf = new Uint8Array(step);
        while (next < ranges.length) {
          const [at, n] = ranges[next++];
          const view = buf.subarray(0, n);
          await disk.readInto(at, view);
          await out.write(view, 0, n, at);
        }
      }),
    );
    await out.close();
    await disk.close();
  });
}

const dir = await mkdtemp(join(tmpdir(), 'vd-bench-vmdk-'));
try {
  const raw = join(dir, 'in.raw');
  await makeInput(raw);
  console.log(`input: ${SIZE / MiB} MiB raw (⅓ text, ⅓ random, ⅓ zero), median of ${ROUNDS}`);
  const report = (label, ours, theirs, extra = '') => {
    const w = median(ours.map((x) => x.wall));
    const qw = median(theirs.map((x) => x.wall));
    const c = median(ours.map((x) => x.cpu));
    const qc = median(theirs.map((x) => x.cpu));
    console.log(
      `${label.padEnd(24)} wall vd ${w.toFixed(2)} s, qemu-img ${qw.toFixed(2)} s, ratio ${(w / qw).toFixed(2)}   cpu vd ${c.toFixed(2)} s, qemu-img ${qc.toFixed(2)} s${extra}`,
    );
  };

  const o1 = [];
  const q1 = [];
  for (let i = 0; i < ROUNDS; i++) {
    o1.push(await oursToStream(raw, join(dir, 'ours.vmdk')));
    q1.push(qemu('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, join(dir, 'qemu.vmdk')));
  }
  const so = (await stat(join(dir, 'ours.vmdk'))).size;
  const sq = (await stat(join(dir, 'qemu.vmdk'))).size;
  report(
    'raw → streamOptimized',
    o1,
    q1,
    `   size vd ${(so / MiB).toFixed(1)} MiB, qemu ${(sq / MiB).toFixed(1)} MiB (${((so / sq - 1) * 100).toFixed(1)}%)`,
  );

  qemu('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, join(dir, 'sparse.vmdk'));
  for (const [label, src] of [
    ['streamOptimized → raw', join(dir, 'ours.vmdk')],
    ['monolithicSparse → raw', join(dir, 'sparse.vmdk')],
  ]) {
    const o = [];
    const q = [];
    for (let i = 0; i < ROUNDS; i++) {
      o.push(await oursToRaw(src, join(dir, 'out-ours.raw')));
      q.push(qemu('convert', '-f', 'vmdk', '-O', 'raw', src, join(dir, 'out-qemu.raw')));
    }
    const same = spawnSync('cmp', ['-s', join(dir, 'out-ours.raw'), raw]).status === 0;
    report(label, o, q, same ? '   output identical to input' : '   OUTPUT DIFFERS');
  }
  console.log(`peak RSS of the vd process: ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
