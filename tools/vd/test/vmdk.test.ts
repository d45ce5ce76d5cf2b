import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

const hasQemu = spawnSync('sh', ['-c', 'command -v qemu-img']).status === 0 || process.env.VD_REQUIRE_PEERS === '1';

describe('vd VMDK commands', () => {
  it('create --type, create-child, info shows the chain, meta, check, convert flattens', async () => {
    await withTempDir(async (dir) => {
      const base = join(dir, 'base.vmdk');
      expect((await vd('create', base, '--size', '8M', '--type', 'monolithicFlat', '--adapter', 'lsilogic')).code).toBe(0);
      await writeFile(join(dir, 'base-flat.vmdk'), Buffer.alloc(8 << 20, 0x5a));
      const child = join(dir, 'base-000001.vmdk');
      const cc = await vd('create-child', base, child);
      expect(cc.code).toBe(0);
      const info = await vd('info', child, '--json');
      expect(info.code).toBe(0);
      const doc = JSON.parse(info.stdout);
      expect(doc).toMatchObject({
        format: 'vmdk',
        subformat: 'monolithicSparse',
        links: 2,
        parentFileNameHint: 'base.vmdk',
        adapterType: 'lsilogic',
      });
      const human = await vd('info', child);
      expect(human.stdout).toMatch(
        /chain:\n {2}base-000001\.vmdk \(monolithicSparse, CID [0-9a-f]{8}, parentCID [0-9a-f]{8}\)\n {2}base\.vmdk \(monolithicFlat/,
      );

      expect((await vd('meta', 'set', child, 'backup.id', 'job-7')).code).toBe(0);
      expect((await vd('meta', 'get', child, 'backup.id')).stdout).toBe('job-7\n');
      expect((await vd('meta', 'get', child, 'nope')).code).toBe(1);
      expect(JSON.parse((await vd('meta', 'list', child, '--json')).stdout)).toMatchObject({
        'ddb.backup.id': 'job-7',
        'ddb.adapterType': 'lsilogic',
      });
      expect((await vd('meta', 'set', child, 'backup.id', '--delete')).code).toBe(0);
      expect((await vd('meta', 'get', child, 'backup.id')).code).toBe(1);

      const ok = await vd('check', child, '--json');
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, problems: [] });

      const flat = join(dir, 'flat.raw');
      expect((await vd('convert', child, flat)).code).toBe(0);
      expect(Buffer.compare(await readFile(flat), Buffer.alloc(8 << 20, 0x5a))).toBe(0);
      const stream = join(dir, 'stream.vmdk');
      const cs = await vd('convert', child, stream, '--type', 'streamOptimized', '--verify', '--json');
      expect(cs.code).toBe(0);
      expect(JSON.parse(cs.stdout)).toMatchObject({ format: 'vmdk', verified: true });
      const back = join(dir, 'back.vmdk');
      expect((await vd('convert', stream, back, '--type', 'twoGbMaxExtentSparse', '--verify')).code).toBe(0);
      expect(JSON.parse((await vd('info', back, '--json')).stdout)).toMatchObject({ subformat: 'twoGbMaxExtentSparse', links: 1 });
      if (hasQemu) {
        const q = JSON.parse(spawnSync('qemu-img', ['info', '--output=json', stream], { encoding: 'utf8' }).stdout);
        expect(q['format-specific'].data['create-type']).toBe('streamOptimized');
        expect(spawnSync('qemu-img', ['compare', '-q', '-f', 'vmdk', '-F', 'raw', back, flat]).status).toBe(0);
      }

      // Damage: a parent written after the child was made.
      const text = (await readFile(base)).toString('latin1').replace(/CID=[0-9a-f]{8}/, 'CID=0badc0de');
      await writeFile(base, text);
      const bad = await vd('check', child);
      expect(bad.code).toBe(1);
      expect(bad.stdout).toMatch(/does not match the parent's CID 0badc0de/);
      const open = await vd('info', child);
      expect(open.code).not.toBe(0);
      expect(open.stderr).toMatch(/ERR_VD_CID_MISMATCH/);
    });
  });

  it('convert --recover salvages a streamOptimized VMDK cut short; without it the error names the option', async () => {
    await withTempDir(async (dir) => {
      const raw = join(dir, 'in.raw');
      // Distinct content per MiB, so a grain read from the wrong place shows.
      const data = Buffer.alloc(8 << 20);
      for (let i = 0; i < 8; i++) data.fill(0x10 + i, i << 20, (i + 1) << 20);
      await writeFile(raw, data);
      const stream = join(dir, 'stream.vmdk');
      expect((await vd('convert', raw, stream, '--type', 'streamOptimized')).code).toBe(0);
      // Cut off the last third: the grain tables, directory, footer and end-of-stream marker go.
      const whole = await readFile(stream);
      await writeFile(stream, whole.subarray(0, Math.floor((whole.length * 2) / 3)));

      const refused = await vd('convert', stream, join(dir, 'refused.raw'));
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/ERR_VD_CORRUPT/);
      expect(refused.stderr).toMatch(/recover/);

      const out = join(dir, 'salvaged.raw');
      const r = await vd('convert', '--recover', stream, out, '--json');
      expect(r.code).toBe(0);
      const got = await readFile(out);
      expect(got.length).toBe(data.length);
      // Every 64 KiB grain reads as the original or, past the cut, as a hole; the first MiB survived.
      const grain = 64 << 10;
      for (let at = 0; at < data.length; at += grain) {
        const g = got.subarray(at, at + grain);
        expect(g.equals(data.subarray(at, at + grain)) || g.every((b) => b === 0)).toBe(true);
      }
      expect(got.subarray(0, 1 << 20).equals(data.subarray(0, 1 << 20))).toBe(true);
    });
  });
});
