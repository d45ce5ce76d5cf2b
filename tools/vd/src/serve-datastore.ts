import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VdError } from '@vd/core';
import { ApiServer, DiskHost } from '@vd/host';
import type { ListenOptions } from '@vd/nbd';
import { defaultPkiDir, loadPki } from '@vd/nbdssl';
import type { Context } from './context.js';
import { printLines } from './output.js';
import { serverTlsFromOptions, type TlsCliOptions } from './serve-tls.js';

export interface DatastoreServeOptions extends TlsCliOptions {
  datastore: string;
  /** Where NBD listens (already parsed by `vd serve`). */
  listen: ListenOptions;
  /** `HOST:PORT` of the control API; no API without it. */
  api?: { host: string; port: number } | undefined;
  tokenFile?: string | undefined;
  /** The environment, for systemd socket activation. */
  env: NodeJS.ProcessEnv;
}

/**
 * `vd serve --datastore DIR`: every disk of DIR exported read-write under its file name and
 * tracked, snapshots through the control API (`--api`), HTTPS whenever the NBD side has a
 * certificate. Without `--token-file`, a new token is written to DIR/.vd-host/api-token (0600).
 */
export async function serveDatastore(ctx: Context, opts: DatastoreServeOptions, untilAborted: () => Promise<void>): Promise<void> {
  const nbdTls = await serverTlsFromOptions(opts, (line) => ctx.io.stderr.write(`${line}\n`));
  // The same certificate serves HTTPS; TLS-PSK alone gives none, so the API stays plain HTTP then.
  const https = nbdTls ? (await loadPki(opts.tlsCertificates ?? defaultPkiDir())).server : undefined;
  const host = await DiskHost.open({ datastore: opts.datastore, tls: nbdTls });
  for (const x of host.skipped) ctx.io.stderr.write(`vd: not serving ${x.name}: ${x.message} [${x.code}]\n`);
  let api: ApiServer | undefined;
  try {
    const activated = await host.server.listenSystemd(opts.env);
    if (activated === 0) await host.listen(opts.listen);
    for (const d of host.disks()) printLines(ctx, `${d.name}: ${d.uri ?? `(socket-activated export ${d.exportName})`}`);
    if (opts.api) {
      const { token, file } = await apiToken(host, opts.tokenFile);
      api = new ApiServer(host, { token, tls: https });
      const a = await api.listen(opts.api);
      printLines(ctx, `control API: ${a.url} (token in ${file})`);
    }
    await untilAborted();
  } finally {
    await api?.close();
    await host.close();
  }
}

async function apiToken(host: DiskHost, tokenFile: string | undefined): Promise<{ token: string; file: string }> {
  if (tokenFile !== undefined) {
    const token = (
      await readFile(tokenFile, 'utf8').catch((err) => {
        throw new VdError('ERR_VD_NOT_FOUND', `cannot read the token file ${tokenFile}`, { cause: err, details: { tokenFile } });
      })
    )
      .split('\n')[0]!
      .trim();
    if (token.length < 16) throw new VdError('ERR_VD_INVALID_ARGUMENT', `the token in ${tokenFile} is shorter than 16 characters`);
    return { token, file: tokenFile };
  }
  const file = join(host.datastore.hostDir, 'api-token');
  return { token: await writeNewToken(file), file };
}

/**
 * Writes a fresh token to `file`, readable by the owner only. The old file is removed first:
 * `mode` applies only to a file being created, so rewriting one left readable by others (an older
 * run, a copy) would have put the new token where anyone could read it.
 */
export async function writeNewToken(file: string): Promise<string> {
  const token = randomBytes(32).toString('base64url');
  await rm(file, { force: true });
  await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
  return token;
}
