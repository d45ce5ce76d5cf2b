import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { openDiskArg } from '../disk-arg.js';
import { usageError } from '../errors.js';
import { HexDumper } from '../hexdump.js';
import { checkRange, lengthOption, offsetOption } from '../options.js';
import { formatBytes } from '../units.js';

/** Hex output is about 4.3 times its input; past this it is almost surely a mistake on a terminal. */
export const MAX_HEX_LENGTH = 16 * 2 ** 20;
/** Read and print in chunks of this size, so memory stays bounded whatever the length. */
const CHUNK = 2 ** 20;
const DEFAULT_LENGTH = 512;

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(offsetOption())
    .addOption(lengthOption(`length of the range (default ${DEFAULT_LENGTH}, or less at the end of the disk)`))
    .addOption(new Option('--format <format>', 'output format').choices(['hex', 'raw']).default('hex'))
    .addHelpText(
      'after',
      `
Hex dumps are limited to ${formatBytes(MAX_HEX_LENGTH)}; --format raw streams any length to stdout.

Examples:
  vd dump disk.img                                  # the first sector
  vd dump disk.img --offset 0x1be --length 64       # an MBR partition table
  vd dump disk.img --offset 1G --length 1M --format raw > slice.bin`,
    )
    .action(async (arg: string, opts: { offset: number; length?: number; format: 'hex' | 'raw' }) => {
      if (opts.format === 'hex' && opts.length !== undefined && opts.length > MAX_HEX_LENGTH) {
        throw usageError(
          `a hex dump of more than ${formatBytes(MAX_HEX_LENGTH)} is refused; use --format raw (and a pager or a file) for more`,
        );
      }
      const disk = await openDiskArg(arg);
      try {
        const length = opts.length ?? Math.min(DEFAULT_LENGTH, Math.max(0, disk.size - opts.offset));
        const range = checkRange(disk.size, opts.offset, length);
        const end = range.offset + range.length;
        // Reads cover whole blocks of the disk's minimum size (an NBD disk may need 512); only the
        // asked-for bytes are printed.
        const min = disk.capabilities.blockSize.minimum;
        const first = range.offset - (range.offset % min);
        const last = Math.min(disk.size, Math.ceil(end / min) * min);
        const step = Math.ceil(CHUNK / min) * min;
        // One chunk read ahead while the previous one is written: the disk and stdout both stay busy.
        const buffers = [new Uint8Array(Math.min(step, last - first)), new Uint8Array(Math.min(step, last - first))];
        const readAt = (at: number, i: number) =>
          disk.readInto(at, buffers[i % 2]!.subarray(0, Math.min(step, last - at)), { signal: ctx.signal });
        const hex = new HexDumper(range.offset);
        let next = range.length > 0 ? readAt(first, 0) : undefined;
        for (let at = first, i = 0; next; at += step, i++) {
          const got = await next;
          next = at + step < last ? readAt(at + step, i + 1) : undefined;
          const chunk = got.subarray(Math.max(range.offset, at) - at, Math.min(end, at + got.length) - at);
          if (opts.format === 'raw') await ctx.io.writeStdout(chunk);
          else ctx.io.stdout.write(hex.push(chunk));
        }
        if (opts.format === 'hex') ctx.io.stdout.write(hex.end());
      } finally {
        await disk.close();
      }
    });
}
