import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryIo } from '../src/io.js';
import { main } from '../src/main.js';
import { withTempDir } from './run.js';

const bin = fileURLToPath(new URL('../src/bin.ts', import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx');
const TOKEN = randomBytes(24).toString('hex');

async function vdWith(env: Record<string, string>, ...argv: string[]) {
  const io = new MemoryIo();
  io.env = env;
  const code = await main(argv, io);
  return { code, stdout: io.stdoutText, stderr: io.err.join('') };
}

describe('vd serve --datastore, vd snapshot, vd changes', () => {
  let server: ChildProcess | undefined;
  afterAll(() => {
    server?.kill('SIGINT');
  });

  it('serves a datastore; snapshots and changed areas through the control API', async () => {
    await withTempDir(async (dir) => {
      const ds = join(dir, 'ds');
      await (await import('node:fs/promises')).mkdir(ds);
      const fh = await open(join(ds, 'disk.img'), 'w');
      await fh.truncate(4 << 20);
      await fh.close();
      const tokenFile = join(dir, 'token');
      await writeFile(tokenFile, `${TOKEN}\n`);
      server = spawn(
        process.execPath,
        [
          '--conditions=@vd/source',
          '--import',
          tsx,
          bin,
          'serve',
          '--datastore',
          ds,
          '--listen',
          '127.0.0.1:0',
          '--api',
          '127.0.0.1:0',
          '--token-file',
          tokenFile,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const lines = createInterface({ input: server.stdout! })[Symbol.asyncIterator]();
      const first = (await lines.next()).value as string;
      expect(first).toMatch(/^disk\.img: nbd:\/\/127\.0\.0\.1:\d+\/disk\.img$/);
      const apiLine = (await lines.next()).value as string;
      const api = /^control API: (http:\/\/127\.0\.0\.1:\d+) \(token in .*\)$/.exec(apiLine)![1]!;
      const env = { VD_TOKEN: TOKEN };

      const s1 = JSON.parse((await vdWith(env, 'snapshot', 'create', api, 'disk.img', '--json')).stdout);
      expect(Object.keys(s1).sort()).toEqual(['changeId', 'id', 'uri']);
      expect(s1.uri).toMatch(new RegExp(`/disk\\.img%40${s1.id}$`));
      expect((await vdWith(env, 'snapshot', 'delete', api, 'disk.img', s1.id)).code).toBe(0);

      const live = await openDisk(first.slice('disk.img: '.length), { transports: [nbd()] });
      await live.write(3 * 65536 + 5, new Uint8Array(10).fill(1));
      await live.close();
      const s2 = await vdWith({}, 'snapshot', 'create', api, 'disk.img', '--token-file', tokenFile);
      expect(s2.code).toBe(0);
      const s2Id = /^id: ([0-9a-f]{12})$/m.exec(s2.stdout)![1]!;
      const s2Change = /^changeId: (\S+)$/m.exec(s2.stdout)![1]!;
      expect(s2.stdout).toMatch(/^uri: nbd:\/\//m);

      const changes = await vdWith(env, 'changes', api, 'disk.img', '--since', s1.changeId, '--up-to', s2Change, '--json');
      expect(changes.code).toBe(0);
      expect(JSON.parse(changes.stdout)).toMatchObject({ changedBytes: 65536, areas: [{ start: 3 * 65536, length: 65536 }] });
      const text = await vdWith(env, 'changes', api, 'disk.img', '--since', s1.changeId);
      expect(text.stdout).toContain('1 areas, 65536 bytes changed');

      const list = JSON.parse((await vdWith(env, 'snapshot', 'list', api, 'disk.img', '--json')).stdout);
      expect(list.map((s: { id: string }) => s.id)).toEqual([s2Id]);

      const noToken = await vdWith({}, 'snapshot', 'list', api, 'disk.img');
      expect(noToken.code).not.toBe(0);
      expect(noToken.stderr).toContain('ERR_VD_UNAUTHORIZED');
      const wrong = await vdWith({ VD_TOKEN: 'x'.repeat(40) }, 'changes', api, 'disk.img', '--since', s1.changeId);
      expect(wrong.code).not.toBe(0);
      expect(wrong.stderr).toContain('ERR_VD_UNAUTHORIZED');
      const outside = await vdWith(env, 'changes', api, '../disk.img', '--since', '*');
      expect(outside.stderr).toContain('ERR_VD_INVALID_ARGUMENT');
      expect((await vdWith(env, 'snapshot', 'delete', api, 'disk.img', s2Id)).code).toBe(0);
      // Ctrl-C: the host closes cleanly (sidecar marked clean, snapshots consolidated).
      const exited = new Promise((resolve) => server!.once('exit', (code, signal) => resolve(signal ?? code)));
      server!.kill('SIGINT');
      expect(await exited).toBe(0);
      server = undefined;
    });
  });
});
