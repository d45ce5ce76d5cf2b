import { checkVmdk } from '@vd/core';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { jsonOption } from '../options.js';
import { printJson, printLines } from '../output.js';
import { vmdkArg } from '../vmdk-files.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .option('--repair', 'fix repairable problems (unclean flag, bad pointers, redundant directory, short flat files)')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Exit code 0 when the disk is sound (warnings only, or everything repaired), 1 when errors remain.

Examples:
  vd check disk.vmdk
  vd check disk.vmdk --repair --json`,
    )
    .action(async (arg: string, opts: { repair?: boolean; json?: boolean }) => {
      const { resolver, name } = vmdkArg(arg);
      const report = await checkVmdk(resolver, name, { repair: opts.repair === true });
      if (!report.ok) ctx.exitCode = 1;
      if (opts.json) {
        printJson(ctx, report);
        return;
      }
      const lines = report.problems.map(
        (p) => `${p.severity}: ${p.file}: ${p.message}${p.repaired ? ' (repaired)' : p.repairable ? ' (repairable with --repair)' : ''}`,
      );
      lines.push(report.ok ? `${arg}: ok${report.repaired ? `, ${report.repaired} repaired` : ''}` : `${arg}: damaged`);
      printLines(ctx, ...lines);
    });
}
