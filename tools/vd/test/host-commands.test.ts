import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, writeFile } from 'node:fs/promises';
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

/** The `vd serve` of the running test; killed after the file if a test left it running. */
let server: ChildProcess | undefined;
afterAll(() => {
  server?.kill('SIGINT');
});

/** `vd serve --datastore DS --api` in a child process; resolves with its first export URI line and API URL. */
async function serveDatastore(ds: string, tokenFile: string): Promise<{ first: string; api: string }> {
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
  return { first, api };
}

/** Ctrl-C: the host closes cleanly (sidecar marked clean, snapshots consolidated) and exits 0. */
async function stopServer(): Promise<void> {
  const s = server!;
  const exited = new Promise((resolve) => s.once('exit', (code, signal) => resolve(signal ?? code)));
  s.kill('SIGINT');
  expect(await exited).toBe(0);
  server = undefined;
}

/** A datastore with a 4 MiB disk.img, and a token file. */
async function datastore(dir: string): Promise<{ ds: string; tokenFile: string }> {
  const ds = join(dir, 'ds');
  await mkdir(ds);
  const fh = await open(join(ds, 'disk.img'), 'w');
  await fh.truncate(4 << 20);
  await fh.close();
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`);
  return { ds, tokenFile };
}

describe('vd serve --datastore, vd snapshot, vd changes', () => {
  it('serves a datastore; snapshots and changed areas through the control API', async () => {
    await withTempDir(async (dir) => {
      const { ds, tokenFile } = await datastore(dir);
      const { first, api } = await serveDatastore(ds, tokenFile);
      const env = { VD_TOKEN: TOKEN };

      const s1 = JSON.parse((await vdWith(env, 'snapshot', 'create', api, 'disk.img', '--json')).stdout);
      expect(Object.keys(s1).sort()).toEqual(['changeId', 'expires', 'id', 'uri']);
      expect(s1.expires).toBeNull();
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
      await stopServer();
    });
  });
});

describe('vd snapshot --lease, vd snapshot renew', () => {
  it('leases a snapshot, renews it, lists its expiry, and explains what it refuses', async () => {
    await withTempDir(async (dir) => {
      const { ds, tokenFile } = await datastore(dir);
      const { api } = await serveDatastore(ds, tokenFile);
      const env = { VD_TOKEN: TOKEN };
      const seconds = (iso: string) => Date.parse(iso) / 1000;

      // Bad durations are usage errors (exit 2) before the host is asked.
      for (const bad of ['soon', '0', '1.5s', '-5m']) {
        const r = await vdWith(env, 'snapshot', 'create', api, 'disk.img', '--lease', bad);
        expect(r.code, bad).toBe(2);
        expect(r.stderr).toMatch(/lease/);
      }
      // Longer than the host allows: its coded refusal.
      const tooLong = await vdWith(env, 'snapshot', 'create', api, 'disk.img', '--lease', '31d');
      expect(tooLong.code).toBe(1);
      expect(tooLong.stderr).toContain('ERR_VD_INVALID_ARGUMENT');
      expect(JSON.parse((await vdWith(env, 'snapshot', 'list', api, 'disk.img', '--json')).stdout)).toEqual([]);

      const before = Date.now() / 1000;
      const created = await vdWith(env, 'snapshot', 'create', api, 'disk.img', '--lease', '15m', '--json');
      expect(created.code).toBe(0);
      const s = JSON.parse(created.stdout);
      expect(Object.keys(s).sort()).toEqual(['changeId', 'expires', 'id', 'uri']);
      // 15 minutes from when the host took it (ISO time has millisecond steps).
      expect(seconds(s.expires)).toBeGreaterThanOrEqual(Math.floor(before) + 900);
      expect(seconds(s.expires)).toBeLessThanOrEqual(Date.now() / 1000 + 900 + 1);

      const renewed = await vdWith(env, 'snapshot', 'renew', api, 'disk.img', s.id, '--lease', '2h', '--json');
      expect(renewed.code).toBe(0);
      const r = JSON.parse(renewed.stdout);
      expect(r).toMatchObject({ id: s.id, changeId: s.changeId, uri: s.uri });
      expect(seconds(r.expires)).toBeGreaterThanOrEqual(seconds(s.expires) + 7200 - 900);
      // Without --lease: its own lease again (2 h now, the last one asked for), from now.
      const again = await vdWith(env, 'snapshot', 'renew', api, 'disk.img', s.id);
      expect(again.code).toBe(0);
      const expires = /^expires: (\S+) \(renew with vd snapshot renew/m.exec(again.stdout)![1]!;
      expect(seconds(expires)).toBeGreaterThanOrEqual(seconds(r.expires));

      const table = (await vdWith(env, 'snapshot', 'list', api, 'disk.img')).stdout;
      expect(table).toMatch(/EXPIRES/);
      expect(table).toContain(expires);
      const listed = JSON.parse((await vdWith(env, 'snapshot', 'list', api, 'disk.img', '--json')).stdout);
      expect(listed).toMatchObject([{ id: s.id, expires }]);

      const gone = await vdWith(env, 'snapshot', 'renew', api, 'disk.img', '0123456789ab');
      expect(gone.code).toBe(1);
      expect(gone.stderr).toContain('ERR_VD_NOT_FOUND');
      expect(gone.stderr).toContain('lease runs out');
      expect((await vdWith(env, 'snapshot', 'delete', api, 'disk.img', s.id)).code).toBe(0);

      // A snapshot taken without a lease: renew needs --lease, and says so in the CLI's words.
      const plain = await vdWith(env, 'snapshot', 'create', api, 'disk.img');
      expect(plain.stdout).not.toMatch(/^expires:/m);
      const plainId = /^id: ([0-9a-f]{12})$/m.exec(plain.stdout)![1]!;
      const noLease = await vdWith(env, 'snapshot', 'renew', api, 'disk.img', plainId, '--json');
      expect(noLease.code).toBe(1);
      expect(JSON.parse(noLease.stdout).error).toMatchObject({
        code: 'ERR_VD_INVALID_ARGUMENT',
        message: expect.stringContaining('--lease'),
      });
      const given = JSON.parse((await vdWith(env, 'snapshot', 'renew', api, 'disk.img', plainId, '--lease', '90s', '--json')).stdout);
      expect(seconds(given.expires)).toBeGreaterThan(Date.now() / 1000 + 60);
      expect((await vdWith(env, 'snapshot', 'delete', api, 'disk.img', plainId)).code).toBe(0);
      await stopServer();
    });
  });
});
