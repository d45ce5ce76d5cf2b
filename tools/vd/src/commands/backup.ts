import { type BackupResult, type BackupSource, backup, DEFAULT_SNAPSHOT_TTL, diskSource, hostSource } from '@vd/backup';
import { DIRTY_BITMAP_PREFIX } from '@vd/cbt';
import { file, openDisk, type Transport, VdError } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { type HostClientOptions, hostClient } from '../host-client.js';
import { jsonOption, leaseOption } from '../options.js';
import { formatFields, printJson, printLines } from '../output.js';
import { createProgress, type Progress } from '../progress.js';
import { formats, lazyNbd, lazyNbdssl } from '../transports.js';
import { formatBytes, formatRate } from '../units.js';

/** Options every repository command that reads disks takes. */
export interface TransportCliOptions {
  transports?: string;
  tlsCertificates?: string;
  tlsThumbprint?: string;
}

export const transportsOption = () =>
  new Option('--transports <list>', 'transports to try, in order, VDDK style (e.g. san:hotadd:nbdssl:nbd); default file:nbdssl:nbd');
export const tlsCertificatesOption = () =>
  new Option('--tls-certificates <dir>', 'for nbds:// disks: a PKI directory with the CA certificate to trust (ca-cert.pem)');
export const tlsThumbprintOption = () =>
  new Option('--tls-thumbprint <sha256>', "for nbds:// disks: pin the server certificate's thumbprint (sha256:AB:CD:…)");

/** What `vd` itself can offer for a transport name of `--transports`. */
const KNOWN = ['file', 'nbdssl', 'nbd'] as const;

/**
 * The transports `--transports` names, in its order. Names this build has no transport for (san,
 * hotadd) are reported on stderr and passed over, never silently.
 */
export function chooseTransports(ctx: Context, opts: TransportCliOptions, extra: { metaContexts?: string[] } = {}): Transport[] {
  const names = (opts.transports ?? 'file:nbdssl:nbd').split(/[:,]/).filter((n) => n.length > 0);
  const out: Transport[] = [];
  const missing: string[] = [];
  for (const name of names) {
    if (!(KNOWN as readonly string[]).includes(name)) {
      missing.push(name);
      continue;
    }
    if (name === 'file') out.push(file({ formats }));
    else if (name === 'nbd') out.push(lazyNbd({ metaContexts: extra.metaContexts }));
    else
      out.push(
        lazyNbdssl({
          metaContexts: extra.metaContexts,
          ...(opts.tlsCertificates !== undefined ? { certificates: opts.tlsCertificates } : {}),
          ...(opts.tlsThumbprint !== undefined ? { thumbprint: opts.tlsThumbprint } : {}),
        }),
      );
  }
  if (missing.length > 0)
    ctx.io.stderr.write(
      `vd: no ${missing.join(', ')} transport in this vd; trying ${names.filter((n) => !missing.includes(n)).join(', ') || 'nothing'}\n`,
    );
  if (out.length === 0) {
    throw new VdError('ERR_VD_USAGE', `--transports ${opts.transports}: none of these is available; vd offers ${KNOWN.join(', ')}`);
  }
  return out;
}

/** `<repo>` or `<repo>@<point>`: a point is digits (or `latest`); any other `@` belongs to the path. */
export function parseRepoArg(arg: string): { repo: string; point: string | undefined } {
  const m = /^(.*)@(\d+|latest)$/.exec(arg);
  if (!m || m[1] === '') return { repo: arg, point: undefined };
  return { repo: m[1]!, point: m[2] === 'latest' ? undefined : m[2] };
}

interface BackupCliOptions extends TransportCliOptions, HostClientOptions {
  dirtyBitmap?: string;
  full?: boolean;
  fullFormat?: 'monolithicSparse' | 'streamOptimized';
  lease?: number;
  progress?: boolean;
  json?: boolean;
}

/** A disk URI as a backup source: a vd host's API URL (snapshot + CBT) or any disk the transports open. */
async function sourceFor(ctx: Context, uri: string, opts: BackupCliOptions): Promise<BackupSource> {
  if (/^https?:\/\//i.test(uri)) {
    const url = new URL(uri);
    const name = decodeURIComponent(url.pathname.replace(/^\/+/, '').split('/').pop() ?? '');
    if (!name) throw new VdError('ERR_VD_USAGE', `${uri}: name the disk after the API URL, e.g. http://127.0.0.1:8080/disk.img`);
    url.pathname = url.pathname.replace(/\/?[^/]*\/*$/, '');
    const client = await hostClient(ctx, url.origin + url.pathname, opts);
    return hostSource(client, name, {
      snapshotTtl: opts.lease,
      transports: chooseTransports(ctx, { ...opts, transports: opts.transports ?? 'nbdssl:nbd' }),
      // A host listening on every address names its exports 0.0.0.0 or ::; reach them where the API is.
      uri: (snapshotUri) => {
        const u = new URL(snapshotUri);
        if (u.hostname === '0.0.0.0' || u.hostname === '[::]') u.hostname = url.hostname;
        return u.href;
      },
    });
  }
  if (opts.lease !== undefined) {
    throw new VdError(
      'ERR_VD_USAGE',
      `--lease is for a vd host's disk (http(s)://api-host:port/<disk>), where a snapshot is taken; ${uri} is not one`,
    );
  }
  const bitmap = opts.dirtyBitmap;
  const context = bitmap === undefined ? undefined : bitmap.startsWith(DIRTY_BITMAP_PREFIX) ? bitmap : DIRTY_BITMAP_PREFIX + bitmap;
  const disk = await openDisk(uri, {
    readOnly: true,
    signal: ctx.signal,
    transports: chooseTransports(ctx, opts, context ? { metaContexts: [context] } : {}),
  });
  return diskSource(disk, { dirtyBitmap: bitmap });
}

export function backupSummary(r: BackupResult) {
  return {
    point: r.point,
    kind: r.kind,
    parent: r.parent,
    strategy: r.strategy,
    reason: r.reason,
    changeId: r.changeId,
    size: r.size,
    bytesCovered: r.bytesCovered,
    bytesRead: r.bytesRead,
    bytesWritten: r.bytesWritten,
    seconds: r.seconds,
  };
}

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(transportsOption())
    .option('--dirty-bitmap <name>', 'a qemu dirty bitmap the NBD export offers (qemu-nbd -B NAME): changes since the last point')
    .option('--full', 'take a full backup even when an incremental is possible')
    .addOption(
      new Option('--full-format <subformat>', 'VMDK layout of full points (incrementals are sparse children)')
        .choices(['monolithicSparse', 'streamOptimized'])
        .default('monolithicSparse'),
    )
    .option('--token-file <file>', 'for a vd host: file holding the API token (default: $VD_TOKEN)')
    .option('--ca <file>', 'for a vd host: PEM CA certificate of an https:// API')
    .addOption(
      leaseOption(
        `for a vd host: the snapshot's lease (e.g. 10m), renewed every third of it while the backup runs; if vd dies, the host deletes the snapshot when it runs out (default ${DEFAULT_SNAPSHOT_TTL}s)`,
      ),
    )
    .addOption(tlsCertificatesOption())
    .addOption(tlsThumbprintOption())
    .option('--no-progress', 'no progress bar (one is shown on a terminal)')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Against a vd host (vd serve --api) a snapshot is taken, backed up and deleted, and only the areas
changed since the previous point are read. Against an NBD export with --dirty-bitmap the bitmap's
areas are read (clear or rotate the bitmap after each backup). Anything else is read whole (the
allocated data only), and the reason is printed.

Each point is a VMDK in <repo-dir>/points/<id>/: the first a sparse disk, each later one a child of
the one before, with a manifest of checksums. A point appears only when complete.

Examples:
  vd backup http://127.0.0.1:8080/disk.img ./repo --token-file token --tls-certificates pki
  vd backup 'nbd+unix:///?socket=/tmp/nbd.sock' ./repo --dirty-bitmap b0 --json
  vd backup disk.img ./repo`,
    )
    .action(async (uri: string, repoDir: string, opts: BackupCliOptions) => {
      const source = await sourceFor(ctx, uri, opts);
      let progress: Progress | undefined;
      try {
        const r = await backup(repoDir, source, {
          signal: ctx.signal,
          full: opts.full,
          fullFormat: opts.fullFormat,
          onStart: (s) => {
            if (!opts.json) ctx.io.stderr.write(`point ${s.point}: ${s.kind} — ${s.reason}\n`);
            progress = createProgress(ctx, {
              enabled: opts.progress !== false && !opts.json && ctx.io.stderrIsTTY,
              total: s.bytesTotal,
              label: `backup ${s.point}`,
            });
          },
          onProgress: (p) => progress?.update(p.bytesDone),
        });
        progress?.stop();
        progress = undefined;
        if (opts.json) {
          printJson(ctx, backupSummary(r));
          return;
        }
        printLines(
          ctx,
          ...formatFields([
            ['point', `${r.point} (${r.kind}${r.parent ? `, child of ${r.parent}` : ''})`],
            ['how', r.reason],
            ['read', `${formatBytes(r.bytesRead)} (${r.bytesRead} bytes) of ${formatBytes(r.size)}`],
            ['written', `${formatBytes(r.bytesWritten)} (${r.bytesWritten} bytes)`],
            ['time', `${r.seconds.toFixed(2)} s (${formatRate(r.bytesRead, r.seconds)} read)`],
            ['change ID', r.changeId ?? '(none)'],
          ]),
        );
      } finally {
        progress?.stop();
      }
    });
}
