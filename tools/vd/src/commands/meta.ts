import { readVmdkMetadata, VdError, writeVmdkMetadata } from '@vd/core';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { jsonOption } from '../options.js';
import { formatFields, printJson, printLines } from '../output.js';
import { vmdkArg } from '../vmdk-files.js';

/** `ddb.` may be left off on the command line. */
function ddbKey(key: string): string {
  return key.startsWith('ddb.') ? key : `ddb.${key}`;
}

export function define(cmd: Command, ctx: Context): void {
  const meta = cmd.addHelpText(
    'after',
    `
Examples:
  vd meta list disk.vmdk
  vd meta get disk.vmdk adapterType
  vd meta set disk.vmdk ddb.backup.id 2024-06-01T00:00Z
  vd meta set disk.vmdk backup.id --delete`,
  );
  meta
    .command('list')
    .description('every ddb.* key and value')
    .argument('<disk>', 'path of the VMDK')
    .addOption(jsonOption())
    .action(async (arg: string, opts: { json?: boolean }) => {
      const { resolver, name } = vmdkArg(arg);
      const all = await readVmdkMetadata(resolver, name);
      if (opts.json) printJson(ctx, all);
      else printLines(ctx, ...formatFields(Object.entries(all)));
    });
  meta
    .command('get')
    .description('one value (exit code 1 when the key is absent)')
    .argument('<disk>', 'path of the VMDK')
    .argument('<key>', 'key, with or without the ddb. prefix')
    .addOption(jsonOption())
    .action(async (arg: string, key: string, opts: { json?: boolean }) => {
      const { resolver, name } = vmdkArg(arg);
      const k = ddbKey(key);
      const value = (await readVmdkMetadata(resolver, name))[k];
      if (value === undefined) ctx.exitCode = 1;
      if (opts.json) printJson(ctx, { key: k, value: value ?? null });
      else if (value !== undefined) printLines(ctx, value);
    });
  meta
    .command('set')
    .description('set (or with --delete remove) one key; the descriptor is rewritten, the CID kept')
    .argument('<disk>', 'path of the VMDK')
    .argument('<key>', 'key, with or without the ddb. prefix')
    .argument('[value]', 'new value (no double quotes or line breaks)')
    .option('--delete', 'remove the key')
    .addOption(jsonOption())
    .action(async (arg: string, key: string, value: string | undefined, opts: { delete?: boolean; json?: boolean }) => {
      if (value === undefined && !opts.delete) throw new VdError('ERR_VD_USAGE', 'meta set needs a value, or --delete');
      const { resolver, name } = vmdkArg(arg);
      const k = ddbKey(key);
      await writeVmdkMetadata(resolver, name, { [k]: opts.delete ? undefined : value });
      if (opts.json) printJson(ctx, { key: k, value: opts.delete ? null : value });
      else printLines(ctx, opts.delete ? `removed ${k}` : `${k} = "${value}"`);
    });
}
