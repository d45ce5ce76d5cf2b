import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type ConformanceOptions, defineConformance } from '@vd/conformance';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { type Disk, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nbd } from '../../src/index.js';
import { pattern, run, sparseRaw, tempDir } from '../helpers.js';
import { type Peer, startPeer } from '../peers.js';

const MiB = 1 << 20;
const skipNbdkit = skipWithoutPeers('nbdkit');
const skipQemu = skipWithoutPeers('qemu-nbd', 'qemu-img');

let counter = 0;
const peers: Peer[] = [];
const dirs: Awaited<ReturnType<typeof tempDir>>[] = [];

async function dir(): Promise<string> {
  const d = await tempDir();
  dirs.push(d);
  return d.dir;
}

afterAll(async () => {
  for (const p of peers.splice(0)) await p.stop();
  for (const d of dirs.splice(0)) await d.cleanup();
});

async function peer(cmd: string, args: (sock: string) => string[]): Promise<Peer> {
  const d = await dir();
  const n = counter++;
  const sock = join(d, `p${n}.sock`);
  const pid = join(d, `p${n}.pid`);
  const p = await startPeer(cmd, [...(cmd === 'nbdkit' ? ['-P', pid] : [`--pid-file=${pid}`]), ...args(sock)], sock, pid);
  peers.push(p);
  return p;
}

/**
 * The conformance suite, with cases a peer is known to fail for reasons of its own marked
 * `it.fails` (so a peer that starts passing shows up) and the reason in the title.
 */
function conformance(options: ConformanceOptions, deviations: Record<string, string> = {}): void {
  const suite = defineConformance(options);
  describe(`conformance: ${suite.name}`, () => {
    afterAll(() => suite.teardown());
    for (const c of suite.cases) {
      const why = deviations[c.id];
      const title = `${c.id}: ${c.title}${why ? ` [known peer deviation: ${why}]` : ''}`;
      (why ? it.fails : it)(title, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }));
    }
  });
}

const NO_HOLE_AS_HOLE = 'block status reports a NO_HOLE zeroed range as a hole';

async function open(uri: string, readOnly?: boolean): Promise<Disk> {
  return openDisk(uri, { transports: [nbd()], readOnly });
}

if (!skipNbdkit) {
  conformance(
    {
      name: 'nbd client ↔ nbdkit memory',
      factory: async ({ readOnly }) =>
        open((await peer('nbdkit', (s) => ['-f', '--exit-with-parent', '-U', s, 'memory', '4M'])).uri, readOnly),
    },
    { 'zero/no-hole': NO_HOLE_AS_HOLE },
  );
  conformance({
    name: 'nbd client ↔ nbdkit file',
    factory: async ({ readOnly }) => {
      const f = join(await dir(), 'f.raw');
      await sparseRaw(f, 4 * MiB, []);
      return open((await peer('nbdkit', (s) => ['-f', '--exit-with-parent', '-U', s, 'file', f])).uri, readOnly);
    },
  });
  // The server's block-size constraints are obeyed (a violation is an EINVAL here): split and alignment cases run.
  conformance(
    {
      name: 'nbd client ↔ nbdkit memory with blocksize-policy 4K/64K/1M',
      factory: async ({ readOnly }) =>
        open(
          (
            await peer('nbdkit', (s) => [
              '-f',
              '--exit-with-parent',
              '-U',
              s,
              '--filter=blocksize-policy',
              'memory',
              '4M',
              'blocksize-minimum=4096',
              'blocksize-preferred=65536',
              'blocksize-maximum=1M',
              'blocksize-error-policy=error',
            ])
          ).uri,
          readOnly,
        ),
    },
    { 'zero/no-hole': NO_HOLE_AS_HOLE },
  );
}

if (!skipQemu) {
  for (const fmt of ['raw', 'qcow2', 'vmdk']) {
    conformance(
      {
        name: `nbd client ↔ qemu-nbd ${fmt}`,
        factory: async ({ readOnly }) => {
          const f = join(await dir(), `q.${fmt}`);
          await run('qemu-img', ['create', '-q', '-f', fmt, f, '4M']);
          return open((await peer('qemu-nbd', (s) => ['-k', s, '-f', fmt, '--cache=writeback', f])).uri, readOnly);
        },
      },
      fmt === 'qcow2' ? { 'zero/no-hole': NO_HOLE_AS_HOLE } : {},
    );
  }
}

describe.skipIf(skipWithoutPeers('nbdkit', 'qemu-nbd', 'qemu-img', 'nbdinfo', 'nbdcopy'))('our client against nbdkit and qemu-nbd', () => {
  let src: string;
  let want: Buffer;

  beforeAll(async () => {
    src = join(await dir(), 'src.raw');
    await sparseRaw(src, 32 * MiB, [
      [0, pattern(4096, 1)],
      [3 * MiB, pattern(MiB, 2)],
      [20 * MiB + 512, pattern(70000, 3)],
    ]);
    want = await readFile(src);
  });

  async function check(uri: string): Promise<void> {
    // nbdinfo first: a single-connection server would not greet it while our disk is open.
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', uri])) as { offset: number; length: number; type: number }[];
    const disk = await open(uri, true);
    try {
      const got = await disk.read(0, disk.size);
      expect(Buffer.compare(got, want)).toBe(0);
      const ours: { offset: number; length: number; type: number }[] = [];
      for await (const e of disk.extents())
        ours.push({ offset: e.offset, length: e.length, type: e.type === 'hole' ? 3 : e.type === 'zero' ? 2 : 0 });
      const merged: typeof ours = [];
      for (const m of map) {
        const last = merged[merged.length - 1];
        if (last && last.type === m.type) last.length += m.length;
        else merged.push({ offset: m.offset, length: m.length, type: m.type });
      }
      expect(ours).toEqual(merged);
      expect(ours.some((e) => e.type !== 0)).toBe(true);
    } finally {
      await disk.close();
    }
  }

  it('nbdkit file: full copy identical, extents equal nbdinfo --map', async () => {
    await check((await peer('nbdkit', (s) => ['-f', '--exit-with-parent', '-U', s, 'file', src])).uri);
  });

  it('qemu-nbd raw (single connection): full copy identical, extents equal nbdinfo --map', async () => {
    const p = await peer('qemu-nbd', (s) => ['-k', s, '-f', 'raw', '-r', '-t', src]);
    const disk = await openDisk(p.uri, { transports: [nbd({ connections: 4 })], readOnly: true });
    // qemu-nbd -e 1 does not advertise multi-conn: a second connection would never be greeted.
    expect(disk.capabilities.multiConn).toBe(false);
    expect(disk.info().connections).toBe(1);
    await disk.close();
    await check(p.uri);
  });

  it('qemu-nbd qcow2 -e 4: multi-conn, dirty bitmap and allocation depth contexts', async () => {
    const q = join(await dir(), 'b.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', q, '8M']);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 64k', q]);
    await run('qemu-img', ['bitmap', '--add', q, 'b0']);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xcd 1M 64k', '-c', 'write -z 4M 1M', q]);
    const p = await peer('qemu-nbd', (s) => ['-k', s, '-f', 'qcow2', '-r', '-t', '-A', '-B', 'b0', '-e', '4', q]);
    const disk = await openDisk(p.uri, {
      transports: [nbd({ connections: 2, metaContexts: ['qemu:dirty-bitmap:', 'qemu:allocation-depth'] })],
      readOnly: true,
    });
    try {
      expect(disk.capabilities.multiConn).toBe(true);
      expect(disk.info().connections).toBe(2);
      expect([...disk.capabilities.extents].sort()).toEqual(['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:b0']);
      const dirty = [];
      for await (const e of disk.extents({ context: 'qemu:dirty-bitmap:b0' })) dirty.push(e);
      // -e 4 lets nbdinfo in while we are connected.
      const line = (await run('nbdinfo', ['--map=qemu:dirty-bitmap:b0', '--json', p.uri])).trim();
      const theirs = (JSON.parse(line) as { offset: number; length: number; type: number }[]).map((m) => ({
        offset: m.offset,
        length: m.length,
        type: m.type & 1 ? 'changed' : 'unchanged',
      }));
      expect(dirty).toEqual(theirs);
      expect(dirty.some((e) => e.type === 'changed' && e.offset === MiB)).toBe(true);
      const depth = [];
      for await (const e of disk.extents({ context: 'qemu:allocation-depth' })) depth.push(e);
      expect(depth[0]).toMatchObject({ offset: 0, type: '1' });
    } finally {
      await disk.close();
    }
  });

  it('writes through our client are visible to qemu-img compare', async () => {
    const target = join(await dir(), 't.raw');
    await sparseRaw(target, 32 * MiB, []);
    const p = await peer('nbdkit', (s) => ['-f', '--exit-with-parent', '-U', s, 'file', target]);
    const disk = await open(p.uri);
    try {
      await disk.write(0, want);
      await disk.flush();
    } finally {
      await disk.close();
    }
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, target]);
  });
});
