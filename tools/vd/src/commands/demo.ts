import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDisk, VdError } from '@vd/core';
import type { Command } from 'commander';
import { compareDisks } from '../compare.js';
import type { Context } from '../context.js';
import { convertDisk } from '../convert.js';
import { writeDemoData } from '../demo-data.js';
import { openDiskArg } from '../disk-arg.js';
import { jsonOption, sizeOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';
import { formats } from '../transports.js';
import { formatBytes, formatRate } from '../units.js';

interface Step {
  step: string;
  ok: boolean;
  detail: string;
}

export function registerDemo(program: Command, ctx: Context): void {
  program
    .command('demo')
    .description('run a self-contained tour: create a disk, fill it, convert it with verification, compare')
    .addOption(sizeOption('size of the demo disk').default(256 * 2 ** 20, '256M'))
    .option('--keep', 'keep the temporary directory with the disks')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Needs nothing but Node: the disks live in a temporary directory, removed afterwards unless --keep.
Exit status 0 only when every step succeeded and every check passed.

Examples:
  vd demo
  vd demo --size 1G --keep --json`,
    )
    .action(async (opts: { size: number; keep?: boolean; json?: boolean }) => {
      const dir = await mkdtemp(join(tmpdir(), 'vd-demo-'));
      const steps: Step[] = [];
      // On a terminal each step is shown as it finishes; the table at the end is the result.
      const live = !opts.json && ctx.io.stderrIsTTY;
      const log = (s: Step) => {
        steps.push(s);
        if (live) ctx.io.stderr.write(`  ${s.step}: ${s.detail}\n`);
      };
      try {
        if (live) ctx.io.stderr.write(`vd demo in ${dir}\n`);
        const source = join(dir, 'source.raw');
        const copy = join(dir, 'copy.raw');

        await createDisk(source, { size: opts.size, format: 'raw', formats });
        log({ step: 'create', ok: true, detail: `source.raw: raw, ${formatBytes(opts.size)}, empty and sparse` });

        const disk = await openDiskArg(source, { readOnly: false });
        let written: Awaited<ReturnType<typeof writeDemoData>>;
        try {
          written = await writeDemoData(disk);
        } finally {
          await disk.close();
        }
        const bytes = written.reduce((n, w) => n + w.length, 0);
        const kinds = new Map<string, number>();
        for (const w of written) kinds.set(w.what, (kinds.get(w.what) ?? 0) + 1);
        const what = [...kinds].map(([name, count]) => (count > 1 ? `${count} × ${name}` : name));
        log({ step: 'write', ok: true, detail: `${formatBytes(bytes)} in ${written.length} writes: ${what.join(', ')}` });

        const r = await convertDisk(source, copy, { verify: true, signal: ctx.signal });
        log({
          step: 'convert',
          ok: true,
          detail: `copy.raw: read ${formatBytes(r.bytesRead)}, wrote ${formatBytes(r.bytesWritten)}, ${r.seconds.toFixed(2)} s (${formatRate(r.size, r.seconds)})`,
        });
        log({
          step: 'verify',
          ok: r.verified,
          detail: r.verified ? 'copy.raw read back, every chunk matches its SHA-256' : 'not verified',
        });

        const a = await openDiskArg(source);
        const b = await openDiskArg(copy).catch(async (err) => {
          await a.close();
          throw err;
        });
        let cmp: Awaited<ReturnType<typeof compareDisks>>;
        try {
          cmp = await compareDisks(a, b, { signal: ctx.signal });
        } finally {
          await Promise.all([a.close(), b.close()]);
        }
        log({
          step: 'cmp',
          ok: cmp.identical,
          detail: cmp.identical
            ? `identical: ${formatBytes(cmp.bytesCompared)} compared, ${formatBytes(cmp.bytesSkipped)} of holes skipped`
            : `the copy differs at offset ${cmp.firstDifference}`,
        });

        // Holes and the explicitly written zeroes must not have become data in the copy.
        const allocated = (await stat(copy)).blocks * 512;
        log({
          step: 'sparse',
          ok: allocated < opts.size,
          detail: `copy.raw occupies ${formatBytes(allocated)} of ${formatBytes(opts.size)}`,
        });

        const passed = steps.every((s) => s.ok);
        if (opts.json) {
          printJson(ctx, {
            ok: passed,
            dir: opts.keep ? dir : undefined,
            size: opts.size,
            steps,
            convert: r,
            cmp,
            allocatedBytes: allocated,
          });
        } else {
          printLines(
            ctx,
            ...formatTable(
              steps.map((s) => [s.step, s.ok ? 'ok' : 'FAILED', s.detail]),
              { header: ['step', 'result', 'detail'] },
            ),
          );
          if (opts.keep) printLines(ctx, '', `disks kept in ${dir}`);
        }
        if (!passed) {
          const failed = steps.filter((s) => !s.ok).map((s) => s.step);
          throw new VdError('ERR_VD_VERIFY', `demo: ${failed.join(', ')} failed`, { details: { failed } });
        }
      } finally {
        if (!opts.keep) await rm(dir, { recursive: true, force: true });
      }
    });
}
