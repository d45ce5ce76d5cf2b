import type { ChangedArea } from '@vd/cbt';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { caOption, type HostClientOptions, hostClient, tokenFileOption } from '../host-client.js';
import { jsonOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';

type Opts = HostClientOptions & { since: string; upTo?: string; json?: boolean };

export function define(cmd: Command, ctx: Context): void {
  cmd
    .requiredOption('--since <changeId>', 'a change ID from vd snapshot create, or * for every allocated area')
    .option('--up-to <changeId>', "only changes up to this change ID (the snapshot's you back up)")
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Fails with ERR_VD_CBT_RESET when tracking cannot answer for that change ID: take a full backup.

Examples:
  vd changes http://127.0.0.1:8080 disk.img --since 52c1…/3 --token-file ./token
  VD_TOKEN=… vd changes http://127.0.0.1:8080 disk.img --since 52c1…/3 --up-to 52c1…/4 --json`,
    )
    .action(async (url: string, disk: string, opts: Opts) => {
      const client = await hostClient(ctx, url, opts);
      const areas: ChangedArea[] = [];
      for await (const a of client.allChanges(disk, opts.since, { upTo: opts.upTo, signal: ctx.signal })) areas.push(a);
      const bytes = areas.reduce((n, a) => n + a.length, 0);
      if (opts.json) {
        printJson(ctx, { disk, since: opts.since, upTo: opts.upTo ?? null, changedBytes: bytes, areas });
        return;
      }
      printLines(
        ctx,
        ...formatTable(
          areas.map((a) => [String(a.start), String(a.length)]),
          { header: ['START', 'LENGTH'], right: [0, 1] },
        ),
      );
      printLines(ctx, `${areas.length} areas, ${bytes} bytes changed`);
    });
}
