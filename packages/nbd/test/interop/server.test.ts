import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { type Disk, file, memoryDisk, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer } from '../../src/index.js';
import { pattern, run, sparseRaw, tempDir } from '../helpers.js';

const MiB = 1 << 20;
const SIZE = 8 * MiB;

/** Data at 1 MiB (64 KiB) and at 5 MiB (1 MiB); the rest is a hole. */
const layout: [number, Uint8Array][] = [
  [MiB, pattern(64 * 1024, 1)],
  [5 * MiB, pattern(MiB, 2)],
];

describe.skipIf(skipWithoutPeers('nbdinfo', 'nbdcopy', 'nbdsh', 'qemu-img', 'qemu-io'))('NbdServer driven by libnbd and qemu tools', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let src: string;
  let disk: Disk;
  let scratch: Disk;
  let server: NbdServer;
  let tcp: string;
  let unix: string;
  let sock: string;

  beforeAll(async () => {
    tmp = await tempDir();
    src = join(tmp.dir, 'src.raw');
    await sparseRaw(src, SIZE, layout);
    disk = await openDisk(src, { transports: [file()], readOnly: true });
    scratch = memoryDisk(SIZE);
    server = new NbdServer({
      exports: [
        { name: 'src', disk, description: 'the source' },
        { name: 'scratch', disk: scratch },
      ],
    });
    tcp = (await server.listen({ host: '127.0.0.1', port: 0 })).uri;
    sock = join(tmp.dir, 'nbd.sock');
    unix = (await server.listen({ path: sock })).uri;
  });

  afterAll(async () => {
    await server?.close();
    await disk?.close();
    await scratch?.close();
    await tmp?.cleanup();
  });

  it('prints the URI of the default export', () => {
    expect(tcp).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/src$/);
    expect(unix).toBe(`nbd+unix:///src?socket=${encodeURIComponent(sock)}`);
  });

  it('nbdinfo sees size, flags, block sizes and contexts', async () => {
    const info = JSON.parse(await run('nbdinfo', ['--json', tcp]));
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(true);
    const exp = info.exports[0];
    expect(exp['export-size']).toBe(SIZE);
    expect(exp.is_read_only).toBe(true);
    expect(exp.can_multi_conn).toBe(true);
    expect(exp.can_df).toBe(true);
    expect(exp.contexts).toContain('base:allocation');
    expect(exp.block_size_minimum).toBe(1);
    expect(exp.block_size_maximum).toBe(32 * MiB);
    expect(exp.description).toBe('the source');
    const rw = JSON.parse(await run('nbdinfo', ['--json', unix.replace('/src?', '/scratch?')]));
    const w = rw.exports[0];
    expect(w.is_read_only).toBe(false);
    expect(w.can_flush).toBe(true);
    expect(w.can_fua).toBe(true);
    expect(w.can_trim).toBe(true);
    expect(w.can_zero).toBe(true);
    expect(w.can_fast_zero).toBe(true);
  });

  it('nbdinfo --list lists both exports', async () => {
    const list = JSON.parse(await run('nbdinfo', ['--list', '--json', tcp]));
    expect(list.exports.map((e: { 'export-name': string }) => e['export-name']).sort()).toEqual(['scratch', 'src']);
  });

  it('nbdinfo --map matches the disk extents', async () => {
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', tcp]));
    const ours: { offset: number; length: number; type: number }[] = [];
    for await (const e of disk.extents())
      ours.push({ offset: e.offset, length: e.length, type: e.type === 'hole' ? 3 : e.type === 'zero' ? 2 : 0 });
    expect(
      map.map((m: { offset: number; length: number; type: number }) => ({ offset: m.offset, length: m.length, type: m.type })),
    ).toEqual(ours);
    // The file is sparse, so the map has holes around the data.
    expect(ours.some((e) => e.type === 3)).toBe(true);
    expect(ours.some((e) => e.type === 0)).toBe(true);
  });

  it('nbdcopy reads the export identical to the file, over TCP and unix', async () => {
    const want = await readFile(src);
    for (const uri of [tcp, unix]) {
      const out = join(tmp.dir, 'copy.raw');
      await run('nbdcopy', [uri, out]);
      expect(Buffer.compare(await readFile(out), want)).toBe(0);
    }
  });

  it('nbdcopy writes into the export, qemu-img compare agrees', async () => {
    const target = unix.replace('/src?', '/scratch?');
    const before = server.stats.directWriteBytes;
    await run('nbdcopy', ['--flush', src, target]);
    // nbdcopy writes the 1 MiB extent in 256 KiB requests: the server reads all but the part that
    // came with each header straight into the request's buffer.
    expect(server.stats.directWriteBytes - before).toBeGreaterThanOrEqual(MiB - 4 * (64 << 10));
    const back = await scratch.read(0, SIZE);
    expect(Buffer.compare(back, await readFile(src))).toBe(0);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, target.replace('/scratch?', '/scratch?')]);
  });

  it('qemu-img convert and compare read from nbd://', async () => {
    const out = join(tmp.dir, 'conv.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', tcp, out]);
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', out, tcp]);
    await run('qemu-img', ['compare', '-F', 'raw', src, tcp]);
  });

  it('qemu-io writes are visible through the disk', async () => {
    const target = `${tcp.replace(/\/src$/, '/scratch')}`;
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 3M 64k', '-c', 'write -z 4M 64k', '-c', 'flush', target]);
    const got = await scratch.read(3 * MiB, 64 * 1024);
    expect(got.every((b) => b === 0x5a)).toBe(true);
    const z = await scratch.read(4 * MiB, 64 * 1024);
    expect(z.every((b) => b === 0)).toBe(true);
  });

  it('nbdsh: structured replies, DF reads, block status, zero, trim, flush, errors', async () => {
    const target = unix.replace('/src?', '/scratch?');
    const script = `
import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
ctx = []
h.opt_list_meta_context(lambda n: ctx.append(n))
assert 'base:allocation' in ctx, ctx
h.add_meta_context('base:allocation')
h.opt_go()
assert h.get_structured_replies_negotiated()
assert h.can_meta_context('base:allocation')
size = h.get_size()
h.pwrite(b'\\xab' * 65536, 0)
h.pwrite(b'\\xcd' * 4096, 65536, nbd.CMD_FLAG_FUA)
chunks = []
h.pread_structured(8192, 61440, lambda buf, off, st, err: chunks.append((off, st, len(buf))) or 0, nbd.CMD_FLAG_DF)
assert chunks == [(61440, nbd.READ_DATA, 8192)], chunks
assert h.pread(4, 65534) == b'\\xab\\xab\\xcd\\xcd'
# libnbd takes (count, offset)
h.zero(1 << 20, 2 << 20)
h.zero(65536, 1 << 20, nbd.CMD_FLAG_NO_HOLE)
h.trim(65536, 6 << 20)
h.flush()
ext = []
h.block_status(size, 0, lambda m, o, e, err: ext.append((m, list(e))) or 0)
assert ext[0][0] == 'base:allocation'
flat = ext[0][1]
runs, at = [], 0
for i in range(0, len(flat), 2):
    runs.append((at, flat[i], flat[i + 1]))
    at += flat[i]
assert at >= size, (at, flat)
def type_at(off):
    return next(t for (o, n, t) in runs if o <= off < o + n)
assert runs[0] == (0, 69632, 0), flat
assert type_at(69632) == 3 and type_at((1 << 20) - 1) == 3, flat
assert type_at(1 << 20) == 2 and type_at((1 << 20) + 65535) == 2, flat
assert type_at(2 << 20) & 2 and type_at((3 << 20) - 1) & 2, flat
assert type_at(6 << 20) == 3 and type_at((6 << 20) + 65535) == 3, flat
one = []
h.block_status(size, 0, lambda m, o, e, err: one.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
assert len(one[0]) == 2 and one[0][0] <= size, one
h.set_strict_mode(0)
for f in (lambda: h.pread(512, size), lambda: h.pwrite(b'x' * 512, size)):
    try:
        f(); raise SystemExit('past-EOF request succeeded')
    except nbd.Error as e:
        assert e.errnum in (22, 28), e
print('ok')
h.shutdown()
`;
    expect((await run('python3', ['-c', script, target])).trim()).toBe('ok');
    const head = await scratch.read(0, 4);
    expect([...head]).toEqual([0xab, 0xab, 0xab, 0xab]);
  });

  it('a read-only export refuses writes with EPERM', async () => {
    const script = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.is_read_only()
h.set_strict_mode(0)
try:
    h.pwrite(b'x' * 512, 0); raise SystemExit('write succeeded')
except nbd.Error as e:
    assert e.errnum == 1, e
print('ok')
`;
    expect((await run('python3', ['-c', script, tcp])).trim()).toBe('ok');
  });
});
