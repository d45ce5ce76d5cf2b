import { defaultPkiDir, describeServerPki, ensureServerPki, nbdServerTls } from '@vd/nbdssl';
import { type Command, Option } from 'commander';
import { usageError } from './errors.js';

/**
 * `vd serve`'s TLS options, in nbdkit's words: `--tls=off|on|require`, `--tls-certificates=DIR`,
 * `--tls-verify-peer`, `--tls-psk=FILE`. `serve.ts` adds them with `addTlsOptions(command)` and
 * passes `await serverTlsFromOptions(opts, print)` as NbdServer's `tls`.
 */

export type TlsMode = 'off' | 'on' | 'require';

export interface TlsCliOptions {
  tls?: TlsMode;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
}

export function addTlsOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--tls [mode]', 'TLS: off, on (offered; clients may stay in the clear) or require (the default of a bare --tls)')
        .choices(['off', 'on', 'require'])
        .preset('require'),
    )
    .addOption(
      new Option(
        '--tls-certificates <dir>',
        `certificates directory (ca-cert.pem, server-cert.pem, server-key.pem); without it --tls uses ${defaultPkiDir()}, creating a certificate there`,
      ),
    )
    .addOption(new Option('--tls-verify-peer', 'require a client certificate signed by ca-cert.pem'))
    .addOption(new Option('--tls-psk <file>', 'accept TLS-PSK with the identity:hexkey lines of this file (psktool format)'));
}

/** The `tls` option for NbdServer (undefined when TLS is off); prints how clients connect and pin. */
export async function serverTlsFromOptions(
  o: TlsCliOptions,
  print: (line: string) => void,
): Promise<Awaited<ReturnType<typeof nbdServerTls>>> {
  const mode: TlsMode = o.tls ?? (o.tlsCertificates !== undefined || o.tlsPsk !== undefined ? 'require' : 'off');
  if (mode === 'off') {
    if (o.tlsVerifyPeer) throw usageError('--tls-verify-peer needs --tls=on or --tls=require');
    return undefined;
  }
  let certificates = o.tlsCertificates;
  if (certificates === undefined && o.tlsPsk === undefined) {
    const ensured = await ensureServerPki(defaultPkiDir());
    certificates = ensured.pki.dir;
    for (const line of describeServerPki(ensured)) print(line);
  }
  print(
    `TLS ${mode === 'require' ? 'required' : 'offered'}${o.tlsVerifyPeer ? ', client certificates verified' : ''}${o.tlsPsk ? `, PSK from ${o.tlsPsk}` : ''}`,
  );
  return nbdServerTls({
    mode,
    ...(certificates === undefined ? {} : { certificates }),
    ...(o.tlsVerifyPeer ? { verifyPeer: true } : {}),
    ...(o.tlsPsk === undefined ? {} : { psk: o.tlsPsk }),
  });
}
