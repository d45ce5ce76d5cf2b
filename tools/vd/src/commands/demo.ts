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
import { formatBytes, formatRate } from '../units.js';

interface Step {
  step: string;
  what: string;
  result: string;
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

Examples:
  vd demo
  vd demo --size 1G --keep`,
    )
    .action(async (opts: { size: number; keep?: boolean; json?: boolean }) => {
      const dir = await mkdtemp(join(tmpdir(), 'vd-demo-'));
      const steps: Step[] = [];
      // On a terminal each step is shown as it finishes; the table at the end is the result.
      const live = !opts.json && ctx.io.stderrIsTTY;
      const log = (s: Step) => {
        steps.push(s);
        if (live) ctx.io.stderr.write(`  ${s.step}: ${s.result}\n`);
      };
      try {
        if (live) ctx.io.stderr.write(`vd demo in ${dir}\n`);
        const source = join(dir, 'source.raw');
        const copy = join(dir, 'copy.raw');

        await createDisk(source, { size: opts.size, format: 'raw' });
        log({ step: 'create', what: `source.raw, raw, ${formatBytes(opts.size)}`, result: 'ok' });

        const disk = await openDiskArg(source, { readOnly: false });
        let written: Awaited<ReturnType<typeof writeDemoData>>;
        try {
          written = await writeDemoData(disk);
        } finally {
          await disk.close();
        }
        const dataBytes = written.reduce((n, w) => n + w.length, 0);
        const kinds = new Map<string, { count: number; bytes: number }>();
        for (const w of written) {
          const k = kinds.get(w.what) ?? { count: 0, bytes: 0 };
          k.count++;
          k.bytes += w.length;
          kinds.set(w.what, k);
        }
        const what = [...kinds].map(([name, k]) => (k.count > 1 ? `${k.count} × ${name}` : `${name} ${formatBytes(k.bytes)}`));
        log({ step: 'write', what: what.join(', '), result: `ok: ${written.length} writes, ${formatBytes(dataBytes)}` });

        const r = await convertDisk(source, copy, { verify: true });
        log({
          step: 'convert',
          what: 'source.raw → copy.raw, --verify',
          result: `${r.verified ? 'verified' : 'NOT verified'}: read ${formatBytes(r.bytesRead)}, wrote ${formatBytes(r.bytesWritten)}, ${r.seconds.toFixed(2)} s, ${formatRate(r.size, r.seconds)}`,
        });
        if (!r.verified) throw new VdError('ERR_VD_VERIFY', 'demo: the copy was not verified');

        const a = await openDiskArg(source);
        const b = await openDiskArg(copy).catch(async (err) => {
          await a.close();
          throw err;
        });
        let cmp: Awaited<ReturnType<typeof compareDisks>>;
        try {
          cmp = await compareDisks(a, b);
        } finally {
          await Promise.all([a.close(), b.close()]);
        }
        log({
          step: 'cmp',
          what: 'source.raw copy.raw',
          result: cmp.identical ? `identical (${formatBytes(cmp.bytesCompared)} compared)` : `DIFFER at offset ${cmp.firstDifference}`,
        });
        if (!cmp.identical) throw new VdError('ERR_VD_VERIFY', `demo: the copy differs from the source at offset ${cmp.firstDifference}`);

        // The copy must stay sparse: explicit zeroes and holes are not written as data.
        const allocated = (await stat(copy)).blocks * 512;
        const sparse = allocated < opts.size;
        log({
          step: 'sparse',
          what: 'copy.raw allocated on disk',
          result: `${formatBytes(allocated)} of ${formatBytes(opts.size)} (${sparse ? 'sparse' : 'NOT sparse'})`,
        });

        const summary = { dir: opts.keep ? dir : undefined, size: opts.size, steps, convert: r, cmp, allocatedBytes: allocated };
        if (opts.json) {
          printJson(ctx, summary);
        } else {
          printLines(
            ctx,
            '',
            ...formatTable(
              steps.map((s) => [s.step, s.what, s.result]),
              { header: ['step', 'what', 'result'] },
            ),
          );
          if (opts.keep) printLines(ctx, '', `disks kept in ${dir}`);
        }
      } finally {
        if (!opts.keep) await rm(dir, { recursive: true, force: true });
      }
    });
}
