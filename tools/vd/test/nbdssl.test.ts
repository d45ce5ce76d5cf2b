import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { peerEnv, skipWithoutPeers, startPeer } from '@vd/conformance/peers';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

/** `vd` reaching nbdkit --tls=require over nbds+unix://, with certificates made by `vd cert init`. */
describe.skipIf(skipWithoutPeers('nbdkit'))('vd over nbds://', () => {
  it('vd info reads a TLS-only nbdkit; a wrong thumbprint is refused naming both', async () => {
    await withTempDir(async (tmp) => {
      const pki = join(tmp, 'pki');
      expect((await vd('cert', 'init', pki)).code).toBe(0);
      const sock = join(tmp, 'nbdkit.sock');
      const kit = await startPeer(
        'nbdkit',
        ['-f', '--exit-with-parent', '--tls=require', `--tls-certificates=${pki}`, '-U', sock, 'pattern', '1M'],
        {
          socket: sock,
          tls: true,
        },
      );
      try {
        const uri = `${kit.uri}&tls-certificates=${encodeURIComponent(pki)}`;
        const info = await vd('info', uri, '--json');
        expect(info.stderr).toBe('');
        const report = JSON.parse(info.stdout);
        expect(report).toMatchObject({ size: 1 << 20, transport: 'nbdssl' });
        const plain = await vd('info', uri.replace('nbds+unix', 'nbd+unix'));
        expect(plain.code).not.toBe(0);
        const wrong = `sha256:${'AB:'.repeat(31)}AB`;
        const pinned = await vd('info', `${uri}&tls-thumbprint=${wrong}`);
        expect(pinned.code).toBe(1);
        expect(pinned.stderr).toContain('ERR_VD_TLS');
        expect(pinned.stderr).toContain(wrong);
        const actual = JSON.parse((await vd('cert', 'thumbprint', pki, '--json')).stdout).sha256;
        expect(pinned.stderr).toContain(actual);
        expect((await vd('info', `${uri}&tls-thumbprint=${actual}`)).code).toBe(0);
      } finally {
        await kit.stop();
      }
    });
  });
});

const exec = promisify(execFile);

/** `vd serve --tls` as a real process, read by libnbd's tools over nbds+unix://. */
describe.skipIf(skipWithoutPeers('nbdinfo', 'nbdcopy'))('vd serve --tls', () => {
  it('makes a certificate, prints its thumbprint, and serves only over TLS', async () => {
    await withTempDir(async (tmp) => {
      const disk = join(tmp, 'disk.img');
      const data = randomBytes(3 << 20);
      await writeFile(disk, data);
      const sock = join(tmp, 'vd.sock');
      const bin = fileURLToPath(new URL('../src/bin.ts', import.meta.url));
      const tsx = createRequire(import.meta.url).resolve('tsx');
      const child = spawn(process.execPath, ['--conditions=@vd/source', '--import', tsx, bin, 'serve', '--tls', '--socket', sock, disk], {
        env: { ...process.env, XDG_CONFIG_HOME: tmp, VD_DEBUG: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => {
        stdout += d;
      });
      child.stderr!.on('data', (d) => {
        stderr += d;
      });
      try {
        for (let i = 0; i < 600 && !stdout.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
        const uri = stdout.trim().split('\n')[0]!;
        expect(uri, stderr).toMatch(/^nbds\+unix:\/\/\/disk\.img\?socket=/);
        const thumbprint = /thumbprint: (sha256:[0-9A-F:]+)/.exec(stderr)?.[1];
        expect(thumbprint, stderr).toBeDefined();
        const pki = join(tmp, 'vd', 'pki');
        const info = await exec('nbdinfo', [`${uri}&tls-certificates=${pki}`], { env: peerEnv });
        expect(info.stdout).toMatch(/with TLS/);
        const out = join(tmp, 'copy.raw');
        await exec('nbdcopy', [`${uri}&tls-certificates=${pki}`, out], { env: peerEnv });
        expect(Buffer.compare(await readFile(out), data)).toBe(0);
        const plain = await exec('nbdinfo', [uri.replace('nbds+unix', 'nbd+unix')], { env: peerEnv }).then(
          () => 'connected',
          (e) => String(e.stderr),
        );
        expect(plain).not.toBe('connected');
        // Our client pins the printed thumbprint without any CA.
        const pinned = await vd('info', `${uri}&tls-thumbprint=${thumbprint}`, '--json');
        expect(pinned.stderr).toBe('');
        expect(JSON.parse(pinned.stdout)).toMatchObject({ size: 3 << 20, transport: 'nbdssl' });
      } finally {
        child.kill('SIGINT');
        await once(child, 'exit');
      }
    });
  });
});
