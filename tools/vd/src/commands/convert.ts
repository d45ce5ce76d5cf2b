import { VMDK_ADAPTERS, VMDK_SUBFORMATS } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { convertDisk } from '../convert.js';
import { usageError } from '../errors.js';
import { jsonOption } from '../options.js';
import { formatFields, printJson, printLines } from '../output.js';
import { createProgress, type Progress } from '../progress.js';
import { creatableFormats } from '../transports.js';
import { formatBytes, formatRate } from '../units.js';

interface ConvertCliOptions {
  format?: string;
  type?: string;
  adapter?: string;
  progress?: boolean;
  verify?: boolean;
  recover?: boolean;
  sync?: boolean;
  level?: string;
  json?: boolean;
}

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(new Option('--format <format>', 'format of the new disk (default raw; vmdk when --type is given)').choices(creatableFormats))
    .addOption(new Option('--type <subformat>', 'VMDK layout of the new disk (default monolithicSparse)').choices(VMDK_SUBFORMATS))
    .addOption(new Option('--adapter <adapter>', 'VMDK adapter type of the new disk').choices(VMDK_ADAPTERS))
    .option('--progress', 'show progress on stderr (a bar on a terminal, plain lines otherwise)')
    .option('--verify', 'read the new disk back and check it against what was copied')
    .option('--level <0-9>', 'zlib level of a streamOptimized VMDK (default 5: about 1% larger than 6, a quarter less CPU)')
    .option('--no-sync', 'do not flush the new disk at the end (as qemu-img convert does by default): faster, not crash-safe')
    .option('--recover', 'read a streamOptimized VMDK that was cut short (no footer): grains up to the cut, holes after')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Only allocated data is read; holes and zero ranges are not written, so the new disk stays sparse.

Examples:
  vd convert disk.img copy.img --verify
  vd convert file:///images/disk.img /backups/disk.raw --progress --json
  vd convert disk.raw disk.vmdk --type streamOptimized   (an OVF/OVA-ready stream)
  vd convert snapshot-000002.vmdk flat.vmdk --type monolithicFlat   (flattens the chain)
  vd convert --recover cut-short.vmdk salvaged.raw   (a stream whose writer died)`,
    )
    .action(async (src: string, dst: string, opts: ConvertCliOptions) => {
      let progress: Progress | undefined;
      try {
        const format = opts.format ?? (opts.type || opts.adapter ? 'vmdk' : 'raw');
        const r = await convertDisk(src, dst, {
          format,
          formatOptions: format === 'vmdk' ? { subformat: opts.type, adapter: opts.adapter } : undefined,
          verify: opts.verify,
          recover: opts.recover,
          noSync: opts.sync === false,
          level: parseLevel(opts.level),
          signal: ctx.signal,
          onStart: (source) => {
            progress = createProgress(ctx, { enabled: opts.progress === true, total: source.size, label: 'converting' });
          },
          onProgress: (p) => progress?.update(p.bytesDone),
        });
        progress?.update(r.size);
        progress?.stop();
        progress = undefined;
        if (opts.json) {
          printJson(ctx, r);
          return;
        }
        printLines(
          ctx,
          ...formatFields([
            ['source', r.source ?? src],
            ['target', `${r.target ?? dst} (${r.format})`],
            ['size', `${formatBytes(r.size)} (${r.size} bytes)`],
            ['read', `${formatBytes(r.bytesRead)} (${r.bytesRead} bytes)`],
            ['written', `${formatBytes(r.bytesWritten)} (${r.bytesWritten} bytes)`],
            ['zeroed', `${formatBytes(r.bytesZeroed)} (${r.bytesZeroed} bytes)`],
            ['skipped', `${formatBytes(r.bytesSkipped)} (${r.bytesSkipped} bytes, already zero on the new disk)`],
            ['time', `${r.seconds.toFixed(2)} s`],
            ['throughput', `${formatRate(r.size, r.seconds)} of disk, ${formatRate(r.bytesRead, r.seconds)} read`],
            ['verified', r.verified ? 'yes' : 'no (use --verify)'],
          ]),
        );
      } finally {
        progress?.stop();
      }
    });
}

function parseLevel(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^[0-9]$/.test(v)) throw usageError(`--level ${v}: give a zlib level from 0 to 9`);
  return Number(v);
}
