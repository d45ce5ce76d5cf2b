import { createDisk } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { localPath } from '../convert.js';
import { jsonOption, sizeOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { creatableFormats, formats } from '../transports.js';
import { formatBytes } from '../units.js';

export function registerCreate(program: Command, ctx: Context): void {
  program
    .command('create')
    .description('create a new, empty (all-zero, sparse) disk')
    .argument('<path>', 'path of the new disk (must not exist)')
    .addOption(sizeOption('virtual size, e.g. 4G, 512M, 1T or bytes').makeOptionMandatory())
    .addOption(new Option('--format <format>', 'disk format').choices(creatableFormats).default('raw'))
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Examples:
  vd create disk.img --size 4G
  vd create /var/lib/images/big.raw --size 1.5T --format raw`,
    )
    .action(async (arg: string, opts: { size: number; format: string; json?: boolean }) => {
      const path = localPath(arg);
      await createDisk(path, { size: opts.size, format: opts.format, formats });
      if (opts.json) printJson(ctx, { path, format: opts.format, size: opts.size });
      else printLines(ctx, `created ${arg}: ${opts.format}, ${formatBytes(opts.size)} (${opts.size} bytes)`);
    });
}
