import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { openPoint, Repository, restore, verifyPoint } from '@vd/backup';
import { openDisk, toLocation, VdError, VMDK_SUBFORMATS } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { convertDisk, localPath } from '../convert.js';
import { jsonOption } from '../options.js';
import { formatFields, printJson, printLines } from '../output.js';
import { createProgress, type Progress } from '../progress.js';
import { creatableFormats } from '../transports.js';
import { formatBytes, formatRate } from '../units.js';
import {
  chooseTransports,
  parseRepoArg,
  type TransportCliOptions,
  tlsCertificatesOption,
  tlsThumbprintOption,
  transportsOption,
} from './backup.js';

interface RestoreCliOptions extends TransportCliOptions {
  format?: string;
  type?: string;
  verify?: boolean;
  progress?: boolean;
  json?: boolean;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(new Option('--format <format>', 'format of a new target file (default raw; vmdk with --type)').choices(creatableFormats))
    .addOption(new Option('--type <subformat>', 'VMDK layout of a new target file').choices(VMDK_SUBFORMATS))
    .option('--verify', "check the repository's checksums first, then read the target back and compare")
    .addOption(transportsOption())
    .addOption(tlsCertificatesOption())
    .addOption(tlsThumbprintOption())
    .option('--no-progress', 'no progress bar (one is shown on a terminal)')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Holes are skipped: a new file stays sparse. An existing target must be at least as large as the
disk; ranges that are holes in the point are zeroed on it.

Examples:
  vd restore ./repo restored.raw --verify
  vd restore ./repo@0002 restored.vmdk --type streamOptimized
  vd restore ./repo nbd://127.0.0.1:10809/disk --json`,
    )
    .action(async (repoArg: string, target: string, opts: RestoreCliOptions) => {
      const { repo, point } = parseRepoArg(repoArg);
      const location = toLocation(target);
      const newFile = location.protocol === 'file:' && !(await exists(localPath(target)));
      let progress: Progress | undefined;
      const startProgress = (total: number, id: string) => {
        progress = createProgress(ctx, {
          enabled: opts.progress !== false && !opts.json && ctx.io.stderrIsTTY,
          total,
          label: `restore ${id}`,
        });
      };
      try {
        let summary: {
          point: string;
          target: string;
          size: number;
          bytesRead: number;
          bytesWritten: number;
          seconds: number;
          verified: boolean;
          /** NBD targets: WRITEs whose data went from the repository files with sendfile. */
          zeroCopyWrites?: number;
        };
        if (newFile) {
          const ref = await (await Repository.open(repo)).point(point);
          if (opts.verify) {
            const report = await verifyPoint(repo, ref.id, { signal: ctx.signal });
            if (!report.ok) {
              const p = report.points.flatMap((x) => x.problems)[0];
              throw new VdError('ERR_VD_VERIFY', `restore: the repository fails verification at point ${p?.point}: ${p?.message}`);
            }
          }
          // The point's VMDK opens with its chain below it; converting it writes the flattened disk.
          await (await openPoint(repo, ref.id)).disk.close();
          const format = opts.format ?? (opts.type ? 'vmdk' : 'raw');
          const r = await convertDisk(join(ref.dir, ref.manifest.disk.file), target, {
            format,
            formatOptions: format === 'vmdk' ? { subformat: opts.type } : undefined,
            verify: opts.verify,
            signal: ctx.signal,
            onStart: (d) => startProgress(d.size, ref.id),
            onProgress: (p) => progress?.update(p.bytesDone),
          });
          summary = {
            point: ref.id,
            target,
            size: r.size,
            bytesRead: r.bytesRead,
            bytesWritten: r.bytesWritten,
            seconds: r.seconds,
            verified: r.verified,
          };
        } else {
          if (opts.type || opts.format) throw new VdError('ERR_VD_USAGE', `${target} exists: --format and --type only apply to a new file`);
          const disk = await openDisk(location, { readOnly: false, signal: ctx.signal, transports: chooseTransports(ctx, opts) });
          try {
            startProgress(disk.size, point ?? 'latest');
            const r = await restore(repo, point, disk, {
              verify: opts.verify,
              signal: ctx.signal,
              onProgress: (p) => progress?.update(p.bytesDone),
            });
            summary = {
              point: r.point,
              target,
              size: r.size,
              bytesRead: r.bytesRead,
              bytesWritten: r.bytesWritten,
              seconds: r.seconds,
              verified: r.verified,
            };
            const sent = disk.info().zeroCopyWrites;
            if (typeof sent === 'number') summary.zeroCopyWrites = sent;
          } finally {
            await disk.close();
          }
        }
        progress?.stop();
        progress = undefined;
        if (opts.json) {
          printJson(ctx, summary);
          return;
        }
        printLines(
          ctx,
          ...formatFields([
            ['point', summary.point],
            ['target', summary.target],
            ['read', `${formatBytes(summary.bytesRead)} of ${formatBytes(summary.size)}`],
            ['written', formatBytes(summary.bytesWritten)],
            ['time', `${summary.seconds.toFixed(2)} s (${formatRate(summary.size, summary.seconds)} of disk)`],
            ['verified', summary.verified ? 'yes: repository checksums, then the target read back' : 'no (use --verify)'],
            ...(summary.zeroCopyWrites !== undefined
              ? [['zero-copy', `${summary.zeroCopyWrites} WRITEs sent from the repository files (sendfile)`] as [string, string]]
              : []),
          ]),
        );
      } finally {
        progress?.stop();
      }
    });
}
