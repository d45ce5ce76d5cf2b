import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterEach, describe, expect, it } from 'vitest';
import { addTlsOptions, serverTlsFromOptions, type TlsCliOptions } from '../src/serve-tls.js';
import { vd, withTempDir } from './run.js';

function parse(...argv: string[]): TlsCliOptions {
  const cmd = addTlsOptions(new Command('serve').exitOverride());
  cmd.parse(argv, { from: 'user' });
  return cmd.opts<TlsCliOptions>();
}

const xdg = process.env.XDG_CONFIG_HOME;
afterEach(() => {
  if (xdg === undefined) delete process.env.XDG_CONFIG_HOME;
  else process.env.XDG_CONFIG_HOME = xdg;
});

describe('vd serve TLS options', () => {
  it('parses nbdkit-style flags', () => {
    expect(parse('--tls')).toMatchObject({ tls: 'require' });
    expect(parse('--tls=on', '--tls-certificates', '/x', '--tls-verify-peer')).toEqual({
      tls: 'on',
      tlsCertificates: '/x',
      tlsVerifyPeer: true,
    });
    expect(parse()).toEqual({});
    expect(() => parse('--tls=sometimes')).toThrow();
  });

  it('off without any flag; --tls-verify-peer alone is a usage error', async () => {
    expect(await serverTlsFromOptions({}, () => {})).toBeUndefined();
    await expect(serverTlsFromOptions({ tlsVerifyPeer: true }, () => {})).rejects.toMatchObject({ code: 'ERR_VD_USAGE' });
  });

  it('bare --tls makes a certificate once, prints its thumbprint, and reuses it', async () => {
    await withTempDir(async (tmp) => {
      process.env.XDG_CONFIG_HOME = tmp;
      const lines: string[] = [];
      const hook = await serverTlsFromOptions({ tls: 'require' }, (l) => lines.push(l));
      expect(hook?.required).toBe(true);
      const dir = join(tmp, 'vd', 'pki');
      expect((await stat(join(dir, 'server-key.pem'))).mode & 0o777).toBe(0o600);
      expect(lines.join('\n')).toContain('(created now)');
      const thumb = /thumbprint: (sha256:[0-9A-F:]+)/.exec(lines.join('\n'))![1];
      const shown = JSON.parse((await vd('cert', 'thumbprint', dir, '--json')).stdout).sha256;
      expect(thumb).toBe(shown);
      const again: string[] = [];
      const on = await serverTlsFromOptions({ tls: 'on' }, (l) => again.push(l));
      expect(on?.required).toBe(false);
      expect(again.join('\n')).not.toContain('created now');
      expect(again.join('\n')).toContain(shown);
    });
  });

  it('--tls-certificates implies require and needs a server certificate there', async () => {
    await withTempDir(async (tmp) => {
      expect((await vd('cert', 'ca', tmp)).code).toBe(0);
      await expect(serverTlsFromOptions({ tlsCertificates: tmp }, () => {})).rejects.toMatchObject({ code: 'ERR_VD_TLS' });
      expect((await vd('cert', 'server', tmp)).code).toBe(0);
      expect((await serverTlsFromOptions({ tlsCertificates: tmp }, () => {}))?.required).toBe(true);
    });
  });
});
