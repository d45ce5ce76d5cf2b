import { createDisk, VMDK_ADAPTERS, VMDK_SUBFORMATS } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { localPath } from '../convert.js';
import { jsonOption, sizeOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { creatableFormats, formats } from '../transports.js';
import { formatBytes } from '../units.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(sizeOption('virtual size, e.g. 4G, 512M, 1T or bytes').makeOptionMandatory())
    .addOption(new Option('--format <format>', 'disk format (default raw; vmdk when --type is given)').choices(creatableFormats))
    .addOption(new Option('--type <subformat>', 'VMDK layout (default monolithicSparse)').choices(VMDK_SUBFORMATS))
    .addOption(new Option('--adapter <adapter>', 'VMDK adapter type (default lsilogic)').choices(VMDK_ADAPTERS))
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
All or nothing: if creating fails partway (a VMDK extent name is taken, the disk is full), the
files it made are removed; files that were there before are never touched.

Examples:
  vd create disk.img --size 4G
  vd create /var/lib/images/big.raw --size 1.5T --format raw
  vd create disk.vmdk --size 40G --format vmdk --type monolithicFlat --adapter lsilogic`,
    )
    .action(async (arg: string, opts: { size: number; format?: string; type?: string; adapter?: string; json?: boolean }) => {
      const path = localPath(arg);
      const format = opts.format ?? (opts.type || opts.adapter ? 'vmdk' : 'raw');
      const formatOptions = format === 'vmdk' ? { subformat: opts.type, adapter: opts.adapter } : undefined;
      await createDisk(path, { size: opts.size, format, formats, formatOptions });
      const kind = format === 'vmdk' ? `vmdk (${opts.type ?? 'monolithicSparse'})` : format;
      if (opts.json)
        printJson(ctx, { path, format, ...(format === 'vmdk' ? { subformat: opts.type ?? 'monolithicSparse' } : {}), size: opts.size });
      else printLines(ctx, `created ${arg}: ${kind}, ${formatBytes(opts.size)} (${opts.size} bytes)`);
    });
}
