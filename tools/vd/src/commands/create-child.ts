import { createChild, VMDK_ADAPTERS } from '@vd/core';
import { type Command, Option } from 'commander';
import type { Context } from '../context.js';
import { jsonOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { relativeTo, vmdkArg } from '../vmdk-files.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(
      new Option('--type <subformat>', 'layout of the child')
        .choices(['monolithicSparse', 'twoGbMaxExtentSparse'])
        .default('monolithicSparse'),
    )
    .addOption(new Option('--adapter <adapter>', 'adapter type, when the parent names none').choices(VMDK_ADAPTERS))
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
The child records the parent's CID; if the parent is written afterwards, opening the child fails
with ERR_VD_CID_MISMATCH. Flatten a chain with \`vd convert child.vmdk flat.vmdk --format vmdk\`.

Examples:
  vd create-child base.vmdk base-000001.vmdk
  vd info base-000001.vmdk`,
    )
    .action(
      async (
        parentArg: string,
        childArg: string,
        opts: { type: 'monolithicSparse' | 'twoGbMaxExtentSparse'; adapter?: string; json?: boolean },
      ) => {
        const child = vmdkArg(childArg);
        const parent = relativeTo(child.dir, parentArg);
        await createChild(child.resolver, parent, child.name, {
          subformat: opts.type,
          ...(opts.adapter ? { adapter: opts.adapter as never } : {}),
        });
        if (opts.json) printJson(ctx, { child: child.path, parent, subformat: opts.type });
        else printLines(ctx, `created ${childArg}: ${opts.type} child of ${parent}`);
      },
    );
}
