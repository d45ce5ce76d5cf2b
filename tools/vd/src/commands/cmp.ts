import type { Command } from 'commander';
import { compareDisks } from '../compare.js';
import type { Context } from '../context.js';
import { openDiskArg } from '../disk-arg.js';
import { EXIT_FAILURE } from '../errors.js';
import { jsonOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { formatBytes, formatHex, formatRate } from '../units.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Sizes are compared first. Ranges that are holes or zero extents on both disks are not read.

Examples:
  vd cmp disk.img copy.img && echo same
  vd cmp disk.img file:///backups/disk.img --json`,
    )
    .action(async (argA: string, argB: string, opts: { json?: boolean }) => {
      const a = await openDiskArg(argA, { signal: ctx.signal });
      try {
        const b = await openDiskArg(argB, { signal: ctx.signal });
        try {
          const r = await compareDisks(a, b, { signal: ctx.signal });
          if (!r.identical) ctx.exitCode = EXIT_FAILURE;
          if (opts.json) {
            printJson(ctx, { a: a.location, b: b.location, size: a.size, ...r });
          } else if (r.sizes) {
            printLines(ctx, `${argA} ${argB} differ: sizes ${r.sizes.a} and ${r.sizes.b} bytes`);
          } else if (r.firstDifference !== undefined) {
            printLines(ctx, `${argA} ${argB} differ: first difference at offset ${r.firstDifference} (${formatHex(r.firstDifference)})`);
          } else {
            printLines(
              ctx,
              `${argA} ${argB} identical: ${formatBytes(a.size)}; ${formatBytes(r.bytesCompared)} compared, ` +
                `${formatBytes(r.bytesSkipped)} skipped as holes on both, ${r.seconds.toFixed(2)} s (${formatRate(r.bytesCompared, r.seconds)})`,
            );
          }
        } finally {
          await b.close();
        }
      } finally {
        await a.close();
      }
    });
}
