// Shared by bench/nbd.mjs and bench/nbdssl.mjs: starting peers and reading a whole disk the same way
// on both sides of a comparison. (The `_` keeps `pnpm bench` from running it as a benchmark.)
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { createServer } from 'node:net';
import { performance } from 'node:perf_hooks';

const MiB = 1024 * 1024;

/** The median of `xs`. */
export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Runs each of `runs` once per round (after one untimed warm-up of each, for the page cache),
 * rotating which goes first so a load spike or a warm cache favours none; per run the wall times
 * and this process's CPU times (s). Compare per-round ratios: the load on a shared machine drifts
 * between rounds, much less within one. A run may be `{ run, server }`, `server` being a peer from
 * `peer()`: its CPU time during the run is kept too (`serverCpu`), since what a client costs the
 * server it reads from is part of its speed on a machine they share.
 */
export async function rounds(runs, n) {
  const fns = runs.map((r) => (typeof r === 'function' ? r : r.run));
  for (const f of fns) await f();
  const out = runs.map(() => ({ wall: [], cpu: [], serverCpu: [] }));
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < runs.length; k++) {
      const j = (i + k) % runs.length;
      const server = runs[j].server;
      const s0 = server?.cpu();
      const c = process.cpuUsage();
      const s = performance.now();
      await fns[j]();
      out[j].wall.push((performance.now() - s) / 1000);
      const d = process.cpuUsage(c);
      out[j].cpu.push((d.user + d.system) / 1e6);
      if (server) out[j].serverCpu.push(server.cpu() - s0);
    }
  }
  return out;
}

/** Throughput ratio of `a` over `b` per round (b's time over a's); the median and every round. */
export function ratios(a, b) {
  const r = a.wall.map((t, i) => b.wall[i] / t);
  return { median: median(r), rounds: r };
}

/**
 * A `report(what, oursName, ours, peerName, theirs, target?, cpuOfBoth?)` printing one comparison
 * of `size` bytes read or written: each side's median wall time and throughput, the CPU per GiB
 * of our side (labelled `cpu`; of both sides too when `cpuOfBoth`), the peer server's CPU per GiB
 * when the runs name one, and the median of the per-round throughput ratios with every round's.
 */
export function reporter({ size, width, ratio, cpu }) {
  const perGiB = (cpus) => `${((median(cpus) * 1024 * MiB) / size).toFixed(2)} s/GiB`;
  const line = (name, x, withCpu) =>
    `  ${name.padEnd(width)} ${median(x.wall).toFixed(2)} s  ${(size / MiB / median(x.wall)).toFixed(0)} MiB/s` +
    (withCpu ? `  ${cpu} ${perGiB(x.cpu)}` : '') +
    (x.serverCpu.length ? `  server CPU ${perGiB(x.serverCpu)}` : '');
  return (what, oursName, ours, peerName, theirs, target, cpuOfBoth = false) => {
    const r = ratios(ours, theirs);
    console.log(what);
    console.log(line(oursName, ours, true));
    console.log(line(peerName, theirs, cpuOfBoth));
    console.log(
      `  ${`ratio (${ratio} throughput)`.padEnd(width)} ${r.median.toFixed(2)}x${target ? ` (target >= ${target}x)` : ''}  rounds: ${r.rounds.map((x) => x.toFixed(2)).join(' ')}`,
    );
  };
}

/** Peers' environment: /usr/bin first, so libnbd tools find Debian's python and libraries. */
export const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };

/** Runs a command to completion; rejects with its stderr when it fails. */
export function exec(cmd, args) {
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

/** Clock ticks per second of /proc/PID/stat's CPU times. */
const ticks = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;

/** CPU seconds (user + system, all threads) process `pid` has used so far. */
function processCpu(pid) {
  // Fields after the command name, which is in parentheses and may hold spaces: utime is the 12th.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / ticks;
}

/**
 * Starts an NBD server listening on `where`: a unix socket path, or `{ port }` on 127.0.0.1 (TCP
 * loopback); ready once it wrote `pid` (it listens by then). `cpu()` is the server's CPU time so
 * far, in seconds.
 */
export async function peer(cmd, args, where, pid) {
  const c = spawn(cmd, args, { env, stdio: 'ignore' });
  const uri = typeof where === 'string' ? `nbd+unix:///?socket=${where}` : `nbd://127.0.0.1:${where.port}/`;
  for (let i = 0; i < 400; i++) {
    try {
      await access(pid);
      if (typeof where === 'string') await access(where);
      return { uri, stop: () => c.kill('SIGTERM'), cpu: () => processCpu(c.pid) };
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  c.kill('SIGKILL');
  throw new Error(`${cmd} did not start`);
}

/** A TCP port on 127.0.0.1 free a moment ago, for a peer to listen on. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * The `n` read buffers of `chunk` bytes, the same ones for every run: fresh ones per run would
 * leave tens of MiB to the garbage collector each time, which the RSS figure would count.
 */
const bufferSets = new Map();
function buffers(chunk, n) {
  const key = `${chunk}x${n}`;
  if (!bufferSets.has(key))
    bufferSets.set(
      key,
      Array.from({ length: n }, () => new Uint8Array(chunk)),
    );
  return bufferSets.get(key);
}

/** `[offset, length]` pieces of at most `chunk` bytes covering `length` bytes from `offset`. */
function pieces(offset, length, chunk, out = []) {
  for (let at = offset; at < offset + length; at += chunk) out.push([at, Math.min(chunk, offset + length - at)]);
  return out;
}

/** Reads `ranges` through our client, `inFlight` at a time, into reused buffers of `chunk` bytes. */
async function readRanges(disk, ranges, chunk, inFlight) {
  let next = 0;
  const worker = async (buf) => {
    while (next < ranges.length) {
      const [at, n] = ranges[next++];
      await disk.readInto(at, n === chunk ? buf : buf.subarray(0, n));
    }
  };
  await Promise.all(buffers(chunk, inFlight).map(worker));
}

/** Reads the whole disk through our client, `inFlight` requests of `chunk` bytes. */
export function readAll(disk, chunk = 2 * MiB, inFlight = 16) {
  return readRanges(disk, pieces(0, disk.size, chunk), chunk, inFlight);
}

/**
 * Reads only what the disk reports allocated, as a backup of a thin disk does (and as nbdcopy
 * does): one block-status walk over the disk, then the data extents in `chunk`-sized reads,
 * `inFlight` at a time. Holes are never read.
 */
export async function readAllocated(disk, chunk = 2 * MiB, inFlight = 16) {
  const ranges = [];
  for await (const e of disk.extents({ offset: 0, length: disk.size })) if (e.type === 'data') pieces(e.offset, e.length, chunk, ranges);
  await readRanges(disk, ranges, chunk, inFlight);
}
