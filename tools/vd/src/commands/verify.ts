import { verifyPoint } from '@vd/backup';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { EXIT_FAILURE } from '../errors.js';
import { jsonOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';
import { createProgress, type Progress } from '../progress.js';
import { formatBytes } from '../units.js';
import { parseRepoArg } from './backup.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .option('--no-progress', 'no progress bar (one is shown on a terminal)')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Exit status 0 when every point of the chain is intact, 1 when one is damaged (the report names the
point and the extent), 2 for usage errors.

Examples:
  vd verify ./repo
  vd verify ./repo@0002 --json`,
    )
    .action(async (repoArg: string, opts: { progress?: boolean; json?: boolean }) => {
      const { repo, point } = parseRepoArg(repoArg);
      let progress: Progress | undefined;
      let current = '';
      try {
        const report = await verifyPoint(repo, point, {
          signal: ctx.signal,
          onProgress: (p) => {
            if (opts.json || opts.progress === false || !ctx.io.stderrIsTTY) return;
            if (p.point !== current) {
              progress?.stop();
              current = p.point;
              progress = createProgress(ctx, { enabled: true, total: p.bytesTotal, label: `verify ${p.point}` });
            }
            progress?.update(p.bytesDone);
          },
        });
        progress?.stop();
        progress = undefined;
        if (!report.ok) ctx.exitCode = EXIT_FAILURE;
        if (opts.json) {
          printJson(ctx, report);
          return;
        }
        printLines(
          ctx,
          ...formatTable(
            report.points.map((p) => [
              p.id,
              p.kind,
              p.ok ? 'ok' : 'DAMAGED',
              String(p.extents),
              formatBytes(p.bytesChecked),
              p.problems.map((x) => (x.offset !== undefined ? `extent ${x.offset}+${x.length}: ${x.message}` : x.message)).join('; '),
            ]),
            { header: ['POINT', 'KIND', 'RESULT', 'EXTENTS', 'CHECKED', 'PROBLEMS'] },
          ),
          '',
          report.ok
            ? `point ${report.point} and its chain are intact`
            : `point ${report.point} cannot be trusted: see the damaged points above`,
        );
      } finally {
        progress?.stop();
      }
    });
}
