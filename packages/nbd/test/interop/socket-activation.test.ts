import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pattern, run, sparseRaw, tempDir } from '../helpers.js';

const root = join(import.meta.dirname, '../../../..');
const nbdDist = join(root, 'packages/nbd/dist/index.js');
const coreDist = join(root, 'packages/core/dist/index.js');
/** The launcher runs in a plain `node` started by libnbd, so it needs the built packages (CI builds first). */
const built = existsSync(nbdDist) && existsSync(coreDist);
const skip = skipWithoutPeers('nbdcopy', 'nbdinfo', 'nbdsh') || (!built && process.env.VD_REQUIRE_PEERS !== '1');

describe.skipIf(skip)('NbdServer under systemd socket activation (LISTEN_FDS), as libnbd starts it', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let disk: string;
  let launcher: string;

  beforeAll(async () => {
    expect(built, 'build first: pnpm --filter @vd/core --filter @vd/nbd build').toBe(true);
    tmp = await tempDir();
    disk = join(tmp.dir, 'disk.raw');
    await sparseRaw(disk, 4 << 20, [
      [0, pattern(65536, 4)],
      [3 << 20, pattern(4096, 5)],
    ]);
    launcher = join(tmp.dir, 'serve.mjs');
    await writeFile(
      launcher,
      `const core = await import(${JSON.stringify(coreDist)});
const { NbdServer } = await import(${JSON.stringify(nbdDist)});
const disk = await core.openDisk(process.argv[2], { transports: [core.file()] });
const server = new NbdServer({ exports: [{ name: 'disk', disk }] });
if ((await server.listenSystemd()) === 0) throw new Error('not socket-activated');
process.on('SIGTERM', async () => { await server.close(); await disk.close(); process.exit(0); });
`,
    );
  });

  afterAll(async () => {
    await tmp?.cleanup();
  });

  it('nbdcopy -- [ server ] out.raw copies the disk', async () => {
    const out = join(tmp.dir, 'out.raw');
    await run('nbdcopy', ['--', '[', process.execPath, launcher, disk, ']', out]);
    expect(Buffer.compare(await readFile(out), await readFile(disk))).toBe(0);
  });

  it('nbdinfo -- [ server ] and libnbd connect_systemd_socket_activation see the export', async () => {
    const info = JSON.parse(await run('nbdinfo', ['--json', '--', '[', process.execPath, launcher, disk, ']']));
    expect(info.exports[0]['export-size']).toBe(4 << 20);
    const script = `
import nbd, sys
h = nbd.NBD()
h.connect_systemd_socket_activation([sys.argv[1], sys.argv[2], sys.argv[3]])
assert h.get_size() == 4 << 20
h.pwrite(b'\\x77' * 512, 1 << 20)
assert h.pread(512, 1 << 20) == b'\\x77' * 512
h.flush()
h.shutdown()
print('ok')
`;
    expect((await run('python3', ['-c', script, process.execPath, launcher, disk])).trim()).toBe('ok');
    const back = await readFile(disk);
    expect(back.subarray(1 << 20, (1 << 20) + 512).every((b) => b === 0x77)).toBe(true);
  });
});
