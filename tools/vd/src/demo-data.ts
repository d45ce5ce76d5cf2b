import type { Disk } from '@vd/core';

const MiB = 1 << 20;
const SECTOR = 512;

/** Deterministic pseudo-random numbers (mulberry32), so every demo run writes the same disk. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export interface Written {
  what: string;
  offset: number;
  length: number;
}

/** A DOS partition table with one Linux partition from 1 MiB to the end, and the boot signature. */
export function mbr(diskSize: number): Uint8Array {
  const b = new Uint8Array(SECTOR);
  const v = new DataView(b.buffer);
  const start = MiB / SECTOR;
  const sectors = Math.min(diskSize / SECTOR - start, 0xffffffff);
  v.setUint32(0x1b8, 0x76640001, true); // disk signature
  const e = 0x1be;
  b[e + 4] = 0x83; // Linux
  v.setUint32(e + 8, start, true);
  v.setUint32(e + 12, sectors, true);
  b[0x1fe] = 0x55;
  b[0x1ff] = 0xaa;
  return b;
}

/** Text like a system log: compressible, mostly ASCII, as files on a real disk often are. */
function logText(bytes: number, rand: () => number): Uint8Array {
  const units = ['sshd', 'kernel', 'systemd', 'cron', 'nginx', 'postgres'];
  const words = [
    'started',
    'accepted connection from 10.0.0.',
    'checkpoint complete',
    'session opened',
    'GET /api/v1/disks 200',
    'link up',
  ];
  let text = '';
  let t = Date.UTC(2026, 10, 1);
  while (text.length < bytes) {
    t += Math.floor(rand() * 5000);
    const unit = units[Math.floor(rand() * units.length)];
    const word = words[Math.floor(rand() * words.length)];
    text += `${new Date(t).toISOString()} vm-01 ${unit}[${100 + Math.floor(rand() * 9000)}]: ${word}${Math.floor(rand() * 255)}\n`;
  }
  return new TextEncoder().encode(text.slice(0, bytes));
}

function noise(bytes: number, rand: () => number): Uint8Array {
  const b = new Uint8Array(bytes);
  const v = new DataView(b.buffer);
  for (let i = 0; i + 4 <= bytes; i += 4) v.setUint32(i, rand() * 2 ** 32);
  return b;
}

/**
 * Writes a disk that looks used: a partition table, a file-system-like header, a log file, a
 * binary blob (incompressible, like a compressed archive), blocks scattered across the disk, and
 * one range explicitly written with zeroes (allocated, but it must not be copied as data). The
 * rest stays a hole. Returns what was written where.
 */
export async function writeDemoData(disk: Disk, seed = 1): Promise<Written[]> {
  const rand = prng(seed);
  const size = disk.size;
  const out: Written[] = [];
  const put = async (what: string, offset: number, data: Uint8Array) => {
    await disk.write(offset, data);
    out.push({ what, offset, length: data.length });
  };
  await put('MBR', 0, mbr(size));
  const header = new TextEncoder().encode('VDDEMOFS\x01 label=data uuid=5e1f0c2a-vd-demo\n');
  await put('fs header', MiB + 1024, header);
  await put('log text', 2 * MiB, logText(3 * MiB + 12345, rand));
  await put('random bytes', 16 * MiB, noise(4 * MiB, rand));
  await put('written zeroes', 24 * MiB, new Uint8Array(MiB));
  const blocks = 40;
  for (let i = 0; i < blocks; i++) {
    const at = 32 * MiB + Math.floor(rand() * ((size - 33 * MiB) / 4096)) * 4096;
    await put('64 KiB blocks', at, noise(64 * 1024, rand));
  }
  await disk.flush();
  return out;
}
