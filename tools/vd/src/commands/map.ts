import { BASE_ALLOCATION, type Extent } from '@vd/core';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { openDiskArg } from '../disk-arg.js';
import { checkRange, jsonOption, lengthOption, offsetOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { formatBytes, formatHex } from '../units.js';

interface MapOptions {
  json?: boolean;
  context: string;
  offset: number;
  length?: number;
}

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(jsonOption())
    .option('--context <name>', 'extent context, e.g. base:allocation or a change-tracking context', BASE_ALLOCATION)
    .addOption(offsetOption())
    .addOption(lengthOption())
    .addHelpText(
      'after',
      `
Offsets and lengths in the table are hexadecimal (like qemu-img map); --json gives decimal.

Examples:
  vd map disk.img
  vd map disk.img --offset 1G --length 64M
  vd map disk.img --json`,
    )
    .action(async (arg: string, opts: MapOptions) => {
      const disk = await openDiskArg(arg);
      try {
        const { length } = checkRange(disk.size, opts.offset, opts.length);
        const extents = disk.extents({ offset: opts.offset, length, context: opts.context, signal: ctx.signal });
        if (opts.json) {
          const all: Extent[] = [];
          for await (const e of extents) all.push(e);
          printJson(ctx, { location: disk.location, size: disk.size, context: opts.context, offset: opts.offset, length, extents: all });
          return;
        }
        // Rows are printed as the extents arrive (a fragmented disk has millions); the columns are
        // as wide as the largest number in the range can be.
        const width = formatHex(opts.offset + length).length;
        const row = (offset: string, len: string, type: string) => `${offset.padEnd(width)}  ${len.padEnd(width)}  ${type}`;
        printLines(ctx, row('Offset', 'Length', 'Type'));
        const totals = new Map<string, number>();
        let count = 0;
        for await (const e of extents) {
          printLines(ctx, row(formatHex(e.offset), formatHex(e.length), e.type));
          totals.set(e.type, (totals.get(e.type) ?? 0) + e.length);
          count++;
        }
        const summary = [...totals].map(([type, n]) => `${type} ${formatBytes(n)}`).join(', ');
        printLines(ctx, `${count} extent${count === 1 ? '' : 's'}${summary ? `: ${summary}` : ''}`);
      } finally {
        await disk.close();
      }
    });
}
