import { readFile } from 'node:fs/promises';
import { VdError } from '@vd/core';
import type { HostClient } from '@vd/host';
import { Option } from 'commander';
import type { Context } from './context.js';

/** Options every command that talks to a host's control API takes. */
export interface HostClientOptions {
  tokenFile?: string;
  ca?: string;
}

export const tokenFileOption = () => new Option('--token-file <file>', 'file holding the API token (default: $VD_TOKEN)');
export const caOption = () => new Option('--ca <file>', 'PEM CA certificate to trust for an https:// API (e.g. PKI_DIR/ca-cert.pem)');

/** The token from --token-file (first line, trimmed) or VD_TOKEN; ERR_VD_UNAUTHORIZED when neither is there. */
export async function readToken(ctx: Context, tokenFile: string | undefined): Promise<string> {
  if (tokenFile !== undefined) {
    let text: string;
    try {
      text = await readFile(tokenFile, 'utf8');
    } catch (err) {
      throw new VdError('ERR_VD_NOT_FOUND', `cannot read the token file ${tokenFile}`, { cause: err, details: { tokenFile } });
    }
    const token = text.split('\n')[0]!.trim();
    if (!token) throw new VdError('ERR_VD_UNAUTHORIZED', `the token file ${tokenFile} is empty`);
    return token;
  }
  const env = ctx.io.env.VD_TOKEN?.trim();
  if (!env) throw new VdError('ERR_VD_UNAUTHORIZED', 'no API token: pass --token-file FILE or set VD_TOKEN');
  return env;
}

export async function hostClient(ctx: Context, url: string, opts: HostClientOptions): Promise<HostClient> {
  const token = await readToken(ctx, opts.tokenFile);
  const ca = opts.ca === undefined ? undefined : await readFile(opts.ca, 'utf8');
  const { HostClient } = await import('@vd/host');
  return new HostClient({ url, token, ca });
}
