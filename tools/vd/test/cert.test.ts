import { execFileSync } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

const openssl = (...args: string[]) => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('vd cert', () => {
  it('init writes a PKI directory whose certificates verify, and prints the thumbprint', async () => {
    await withTempDir(async (tmp) => {
      const dir = join(tmp, 'pki');
      const r = await vd('cert', 'init', dir, '--host', 'disk.example', '--host', '127.0.0.1', '--client-name', 'backup-1');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect((await stat(join(dir, 'server-key.pem'))).mode & 0o777).toBe(0o600);
      expect(openssl('verify', '-CAfile', join(dir, 'ca-cert.pem'), join(dir, 'server-cert.pem'))).toMatch(/OK/);
      const fp = openssl('x509', '-noout', '-fingerprint', '-sha256', '-in', join(dir, 'server-cert.pem')).trim().split('=')[1];
      expect(r.stdout).toContain(`sha256:${fp}`);
      expect(openssl('x509', '-noout', '-ext', 'subjectAltName', '-in', join(dir, 'server-cert.pem'))).toMatch(
        /DNS:disk\.example, IP Address:127\.0\.0\.1/,
      );
      expect(openssl('x509', '-noout', '-subject', '-in', join(dir, 'client-cert.pem'))).toMatch(/CN ?= ?backup-1/);

      const again = await vd('cert', 'init', dir);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/ERR_VD_EXISTS/);

      const t = await vd('cert', 'thumbprint', dir, '--json');
      expect(JSON.parse(t.stdout).sha256).toBe(`sha256:${fp}`);
      const fp1 = openssl('x509', '-noout', '-fingerprint', '-sha1', '-in', join(dir, 'server-cert.pem')).trim().split('=')[1];
      expect(JSON.parse(t.stdout).vddk).toBe(fp1);
    });
  });

  it('ca, server and client issue step by step, the client into its own directory', async () => {
    await withTempDir(async (tmp) => {
      const dir = join(tmp, 'pki');
      expect((await vd('cert', 'ca', dir)).code).toBe(0);
      expect((await vd('cert', 'server', dir, '--host', 'localhost', '--days', '30')).code).toBe(0);
      const out = join(tmp, 'client');
      expect((await vd('cert', 'client', dir, '--name', 'laptop', '--out', out)).code).toBe(0);
      expect(openssl('verify', '-CAfile', join(out, 'ca-cert.pem'), '-purpose', 'sslclient', join(out, 'client-cert.pem'))).toMatch(/OK/);
      const show = await vd('cert', 'show', join(dir, 'server-cert.pem'), '--json');
      const s = JSON.parse(show.stdout);
      expect(s.subjectAltName).toBe('DNS:localhost');
      expect(s.expired).toBe(false);
      expect(new Date(s.validTo).getTime() - Date.now()).toBeLessThan(31 * 86400_000);
    });
  });

  it('explains what is missing', async () => {
    await withTempDir(async (tmp) => {
      const r = await vd('cert', 'server', tmp);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/ca-cert\.pem.*ERR_VD_NOT_FOUND/);
      const bad = await vd('cert', 'init', join(tmp, 'x'), '--days', 'soon');
      expect(bad.code).toBe(2);
    });
  });
});
