import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

/** `vd` reaching nbdkit --tls=require over nbds+unix://, with certificates made by `vd cert init`. */
describe.skipIf(skipWithoutPeers('nbdkit'))('vd over nbds://', () => {
  it('vd info reads a TLS-only nbdkit; a wrong thumbprint is refused naming both', async () => {
    await withTempDir(async (tmp) => {
      const pki = join(tmp, 'pki');
      expect((await vd('cert', 'init', pki)).code).toBe(0);
      const sock = join(tmp, 'nbdkit.sock');
      const child = spawn(
        'nbdkit',
        ['-f', '--exit-with-parent', '--tls=require', `--tls-certificates=${pki}`, '-U', sock, 'pattern', '1M'],
        {
          stdio: 'ignore',
        },
      );
      try {
        for (let i = 0; i < 200; i++) {
          if (
            await access(sock).then(
              () => true,
              () => false,
            )
          )
            break;
          await new Promise((r) => setTimeout(r, 50));
        }
        const uri = `nbds+unix:///?socket=${encodeURIComponent(sock)}&tls-certificates=${encodeURIComponent(pki)}`;
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
        child.kill();
        await once(child, 'exit');
      }
    });
  });
});
