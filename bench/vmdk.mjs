#!/usr/bin/env node
// `pnpm bench vmdk`: VMDK conversion speed against qemu-img on the same input, same run. Needs
// `pnpm --filter @vd/core build`. Input: BENCH_VMDK_MIB (default 1024) MiB of mixed content —
// a third text-like (compressible), a third random, a third zeroes — as a raw file.
//  1. raw → streamOptimized (our stream writer, parallel deflate) vs `qemu-img convert -O vmdk -o subformat=streamOptimized`
//  2. streamOptimized → raw and 3. monolithicSparse → raw: `copyDisk` onto a new raw file (what
//     `vd convert` runs) vs `qemu-img convert -O raw`, twice: unsynced (`copyDisk` with `flush:
//     false`, `vd convert --no-sync`) against qemu-img's default, which never syncs the target
//     (cache mode `unsafe`), and synced (our default) against `qemu-img convert -t writeback`,
//     which ends with one fdatasync. Comparing across durabilities measures the disk, not the code.
// Prints seconds (median of BENCH_VMDK_ROUNDS, default 5: with 3, a run on the shared development
// machine gave 0.93 for monolithicSparse → raw, where 7 rounds gave 0.42 within the hour), the
// median of per-round time ratios ours/qemu (the runs compared rotate within each round), output
// sizes, peak RSS.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
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
const { Disk, RawSource, FileStore, copyDisk, createDisk, file, openDisk, rawFormat, vmdkFormat, writeStreamOptimized } = await import(
  coreDist
);
const { rounds } = await import('./_nbd-peers.mjs');

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_VMDK_MIB ?? 1024) * MiB;
const ROUNDS = Number(process.env.BENCH_VMDK_ROUNDS ?? 5);
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

/** Runs qemu-img; wall and CPU seconds (CPU: all threads, so parallel work shows as CPU > wall). */
function qemu(...args) {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %U %S', 'qemu-img', ...args], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
  const [wall, user, sys] = r.stderr.trim().split('\n').pop().split(' ').map(Number);
  return { wall, cpu: user + sys };
}

async function oursToStream(src, dst) {
  const store = await FileStore.open(src, { readOnly: true });
  const disk = new Disk(new RawSource(store, await store.size()));
  const out = await FileStore.open(dst, { create: true, overwrite: true });
  await writeStreamOptimized(disk, out);
  await out.close();
  await disk.close();
}

const files = file({ formats: [vmdkFormat, rawFormat] });
/** What `vd convert src dst` does: a new sparse raw file, then copyDisk (holes skipped). */
async function oursToRaw(src, dst, sync) {
  await rm(dst, { force: true });
  const source = await openDisk(src, { transports: [files], readOnly: true });
  await createDisk(dst, { size: source.size, format: 'raw' });
  const target = await openDisk(dst, { transports: [files], format: 'raw' });
  await copyDisk(source, target, { flush: sync });
  await target.close();
  await source.close();
}

const dir = await mkdtemp(join(tmpdir(), 'vd-bench-vmdk-'));
try {
  const raw = join(dir, 'in.raw');
  await makeInput(raw);
  // The inputs were just written: put them on disk now, so the kernel's writeback of a gigabyte of
  // dirty pages does not land in the first timed runs (it costs CPU and favours whichever side
  // runs on more threads).
  spawnSync('sync');
  console.log(`input: ${SIZE / MiB} MiB raw (⅓ text, ⅓ random, ⅓ zero), median of ${ROUNDS}`);
  /** `ours`: rounds() timings; `theirs`: qemu-img's own timings, one per round in the same order. */
  const report = (label, ours, theirs, extra = '') => {
    const w = median(ours.wall);
    const qw = median(theirs.map((x) => x.wall));
    const c = median(ours.cpu);
    const qc = median(theirs.map((x) => x.cpu));
    const ratio = median(ours.wall.map((t, i) => t / theirs[i].wall));
    console.log(
      `${label.padEnd(34)} wall vd ${w.toFixed(2)} s, qemu-img ${qw.toFixed(2)} s, ratio ${ratio.toFixed(2)}   cpu vd ${c.toFixed(2)} s, qemu-img ${qc.toFixed(2)} s${extra}`,
    );
  };

  let q1 = [];
  const [o1] = await rounds(
    [
      () => oursToStream(raw, join(dir, 'ours.vmdk')),
      async () => q1.push(qemu('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, join(dir, 'qemu.vmdk'))),
    ],
    ROUNDS,
  );
  q1 = q1.slice(1); // the warm-up
  const so = (await stat(join(dir, 'ours.vmdk'))).size;
  const sq = (await stat(join(dir, 'qemu.vmdk'))).size;
  report(
    'raw → streamOptimized',
    o1,
    q1,
    `   size vd ${(so / MiB).toFixed(1)} MiB, qemu ${(sq / MiB).toFixed(1)} MiB (${((so / sq - 1) * 100).toFixed(1)}%)`,
  );

  qemu('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, join(dir, 'sparse.vmdk'));
  spawnSync('sync');
  for (const [label, src] of [
    ['streamOptimized → raw', join(dir, 'ours.vmdk')],
    ['monolithicSparse → raw', join(dir, 'sparse.vmdk')],
  ]) {
    for (const sync of [false, true]) {
      let q = [];
      const qemuOut = join(dir, 'out-qemu.raw');
      const qemuArgs = ['convert', ...(sync ? ['-t', 'writeback'] : []), '-f', 'vmdk', '-O', 'raw', src, qemuOut];
      const [o] = await rounds(
        [
          () => oursToRaw(src, join(dir, 'out-ours.raw'), sync),
          async () => {
            await rm(qemuOut, { force: true }); // as oursToRaw does: both start without a target file
            q.push(qemu(...qemuArgs));
          },
        ],
        ROUNDS,
      );
      q = q.slice(1);
      const same = spawnSync('cmp', ['-s', join(dir, 'out-ours.raw'), raw]).status === 0;
      const name = `${label}, ${sync ? 'synced' : 'unsynced'}`;
      report(name, o, q, `${same ? '   output identical to input' : '   OUTPUT DIFFERS'}${sync ? '  (vs qemu-img -t writeback)' : ''}`);
    }
  }
  console.log(`peak RSS of the vd process: ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
