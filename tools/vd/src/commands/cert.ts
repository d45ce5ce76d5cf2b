import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  caPair,
  createPki,
  defaultServerHosts,
  describeCertificate,
  formatThumbprint,
  generateCa,
  generateClientCertificate,
  generateServerCertificate,
  loadPki,
  pkiFiles,
  thumbprintOf,
  writePki,
} from '@vd/nbdssl';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { usageError } from '../errors.js';
import { argParser, jsonOption } from '../options.js';
import { printJson, printLines } from '../output.js';

/**
 * `vd cert`: the certificates NBD over TLS needs, in the directory layout nbdkit, qemu-nbd and
 * libnbd read (`--tls-certificates=DIR`, `tls-creds-x509,dir=DIR`, `?tls-certificates=DIR`).
 */

const days = (what: string) =>
  new Option('--days <n>', `days the ${what} stays valid`).argParser(
    argParser((text) => {
      const n = Number(text);
      if (!Number.isSafeInteger(n) || n < 1 || n > 36500) throw usageError(`--days must be a whole number from 1 to 36500, got ${text}`);
      return n;
    }, 'days'),
  );
const hosts = () =>
  new Option('--host <name...>', `DNS names and IP addresses the server answers to (default: ${defaultServerHosts().join(', ')})`);
const force = () => new Option('--force', 'replace files that exist');

async function show(ctx: Context, json: boolean | undefined, dir: string, written: string[], serverCert?: string): Promise<void> {
  const report: Record<string, unknown> = { dir, files: written };
  if (serverCert !== undefined) {
    report.sha256 = formatThumbprint(thumbprintOf(serverCert, 'sha256'));
    report.sha1 = formatThumbprint(thumbprintOf(serverCert, 'sha1'), 'vddk');
  }
  if (json) return printJson(ctx, report);
  const lines = written.map((f) => `wrote ${f}`);
  if (serverCert !== undefined) lines.push(`server certificate thumbprint: ${report.sha256}`, `  (VDDK-style SHA-1: ${report.sha1})`);
  printLines(ctx, ...lines);
}

export function define(cmd: Command, ctx: Context): void {
  const cert = cmd.addHelpText(
    'after',
    `
The directory layout is the one nbdkit, qemu-nbd and libnbd read: ca-cert.pem, server-cert.pem,
server-key.pem, client-cert.pem, client-key.pem (keys are written mode 0600). ca-key.pem lets
vd cert issue more certificates later; keep it off hosts that only serve.

Examples:
  vd cert init ./pki --host disk.example --host 192.0.2.10
  vd serve disk.img --tls=require --tls-certificates=./pki
  nbdinfo 'nbds://disk.example/?tls-certificates=./pki'
  vd cert thumbprint ./pki`,
  );

  cert
    .command('init')
    .description('create a CA and a server and a client certificate signed by it')
    .argument('<dir>', 'the certificates directory')
    .addOption(hosts())
    .option('--client-name <cn>', 'common name of the client certificate', 'vd client')
    .addOption(days('certificates'))
    .addOption(force())
    .addOption(jsonOption())
    .action(async (dir: string, o: { host?: string[]; clientName: string; days?: number; force?: boolean; json?: boolean }) => {
      const leaf = o.days === undefined ? {} : { validityDays: o.days };
      const pki = await createPki(dir, {
        server: { ...leaf, ...(o.host ? { hosts: o.host } : {}) },
        client: { ...leaf, commonName: o.clientName },
        overwrite: o.force ?? false,
      });
      const files = Object.values(pkiFiles).map((f) => join(dir, f));
      await show(ctx, o.json, dir, files, pki.server!.cert);
    });

  cert
    .command('ca')
    .description('create only the certificate authority (ca-cert.pem, ca-key.pem)')
    .argument('<dir>', 'the certificates directory')
    .option('--name <cn>', 'common name of the CA', 'vd CA')
    .addOption(days('CA'))
    .addOption(force())
    .addOption(jsonOption())
    .action(async (dir: string, o: { name: string; days?: number; force?: boolean; json?: boolean }) => {
      const ca = await generateCa({ commonName: o.name, ...(o.days === undefined ? {} : { validityDays: o.days }) });
      const written = await writePki(dir, { caCert: ca.cert, caKey: ca.key }, { overwrite: o.force ?? false });
      await show(ctx, o.json, dir, written);
    });

  cert
    .command('server')
    .description("issue server-cert.pem and server-key.pem from the directory's CA")
    .argument('<dir>', 'the certificates directory (with ca-cert.pem and ca-key.pem)')
    .addOption(hosts())
    .addOption(days('certificate'))
    .addOption(force())
    .addOption(jsonOption())
    .action(async (dir: string, o: { host?: string[]; days?: number; force?: boolean; json?: boolean }) => {
      const ca = caPair(await loadPki(dir));
      const pair = await generateServerCertificate(ca, {
        ...(o.host ? { hosts: o.host } : {}),
        ...(o.days === undefined ? {} : { validityDays: o.days }),
      });
      const written = await writePki(dir, { server: pair }, { overwrite: o.force ?? false });
      await show(ctx, o.json, dir, written, pair.cert);
    });

  cert
    .command('client')
    .description("issue client-cert.pem and client-key.pem from the directory's CA")
    .argument('<dir>', 'the certificates directory (with ca-cert.pem and ca-key.pem)')
    .option('--name <cn>', 'common name, the identity servers authorize', 'vd client')
    .option('--out <dir>', 'write the client certificate (and ca-cert.pem) to this directory instead, for the client machine')
    .addOption(days('certificate'))
    .addOption(force())
    .addOption(jsonOption())
    .action(async (dir: string, o: { name: string; out?: string; days?: number; force?: boolean; json?: boolean }) => {
      const pki = await loadPki(dir);
      const pair = await generateClientCertificate(caPair(pki), {
        commonName: o.name,
        ...(o.days === undefined ? {} : { validityDays: o.days }),
      });
      const target = o.out ?? dir;
      const written = await writePki(
        target,
        { client: pair, ...(o.out === undefined ? {} : { caCert: pki.caCert }) },
        { overwrite: o.force ?? false },
      );
      await show(ctx, o.json, target, written);
    });

  cert
    .command('thumbprint')
    .description('print the SHA-256 and SHA-1 thumbprints of a certificate (server-cert.pem of a directory)')
    .argument('<path>', 'a PEM certificate, or a certificates directory')
    .addOption(jsonOption())
    .action(async (path: string, o: { json?: boolean }) => {
      const pem = await readCertificate(path);
      const s = describeCertificate(pem);
      const report = {
        subject: s.subject,
        sha256: formatThumbprint(thumbprintOf(pem, 'sha256')),
        sha1: formatThumbprint(thumbprintOf(pem, 'sha1')),
        vddk: formatThumbprint(thumbprintOf(pem, 'sha1'), 'vddk'),
        validTo: s.validTo.toISOString(),
      };
      if (o.json) printJson(ctx, report);
      else printLines(ctx, report.sha256, report.sha1, `VDDK thumbPrint: ${report.vddk}`);
    });

  cert
    .command('show')
    .description('print subject, issuer, validity, names and thumbprint of a certificate')
    .argument('<path>', 'a PEM certificate, or a certificates directory (its server-cert.pem)')
    .addOption(jsonOption())
    .action(async (path: string, o: { json?: boolean }) => {
      const pem = await readCertificate(path);
      const s = describeCertificate(pem);
      const report = { ...s, sha256: formatThumbprint(thumbprintOf(pem)), expired: s.validTo.getTime() < Date.now() };
      if (o.json) return printJson(ctx, report);
      printLines(
        ctx,
        `subject:  ${s.subject}`,
        `issuer:   ${s.issuer}`,
        `valid:    ${s.validFrom.toISOString()} to ${s.validTo.toISOString()}${report.expired ? ' (EXPIRED)' : ''}`,
        `names:    ${s.subjectAltName ?? '-'}`,
        `CA:       ${s.ca ? 'yes' : 'no'}`,
        `sha256:   ${report.sha256}`,
      );
    });
}

async function readCertificate(path: string): Promise<string> {
  const isDir = await stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (isDir) {
    const pki = await loadPki(path);
    const pem = pki.server?.cert ?? pki.caCert;
    if (pem === undefined) throw usageError(`${path} holds neither ${pkiFiles.serverCert} nor ${pkiFiles.caCert}`);
    return pem;
  }
  return readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw usageError(`cannot read ${path}: ${err.code ?? err.message}`);
  });
}
