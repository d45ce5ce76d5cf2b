import type { Command } from 'commander';
import type { Context } from '../context.js';
import { caOption, type HostClientOptions, hostClient, tokenFileOption } from '../host-client.js';
import { jsonOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';

type Opts = HostClientOptions & { json?: boolean };

export function define(cmd: Command, ctx: Context): void {
  const snapshot = cmd.addHelpText(
    'after',
    `
The token comes from --token-file or VD_TOKEN.

Examples:
  vd snapshot create http://127.0.0.1:8080 disk.img --token-file ./token
  vd snapshot list http://127.0.0.1:8080 disk.img
  vd snapshot delete http://127.0.0.1:8080 disk.img 3f2a9c01d4e5`,
  );

  snapshot
    .command('create')
    .description("freeze the disk's state: prints the snapshot's id, change ID and read-only export URI")
    .argument('<api-url>', "the host's control API, http(s)://host:port")
    .argument('<disk>', 'the disk (its file name in the datastore)')
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .action(async (url: string, disk: string, opts: Opts) => {
      const s = await (await hostClient(ctx, url, opts)).createSnapshot(disk, { signal: ctx.signal });
      if (opts.json) printJson(ctx, { id: s.id, changeId: s.changeId, uri: s.uri ?? null });
      else printLines(ctx, `id: ${s.id}`, `changeId: ${s.changeId}`, `uri: ${s.uri ?? '(the host has no NBD listener)'}`);
    });

  snapshot
    .command('list')
    .description("a disk's snapshots")
    .argument('<api-url>', "the host's control API, http(s)://host:port")
    .argument('<disk>', 'the disk (its file name in the datastore)')
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .action(async (url: string, disk: string, opts: Opts) => {
      const list = await (await hostClient(ctx, url, opts)).snapshots(disk, { signal: ctx.signal });
      if (opts.json) printJson(ctx, list);
      else if (list.length === 0) printLines(ctx, `${disk} has no snapshots`);
      else
        printLines(
          ctx,
          ...formatTable(
            list.map((s) => [s.id, s.status, s.changeId, s.uri ?? '']),
            { header: ['ID', 'STATUS', 'CHANGE ID', 'URI'] },
          ),
        );
    });

  snapshot
    .command('delete')
    .description('delete a snapshot: its redo log is consolidated into the disk while writes continue')
    .argument('<api-url>', "the host's control API, http(s)://host:port")
    .argument('<disk>', 'the disk (its file name in the datastore)')
    .argument('<id>', 'the snapshot id')
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .action(async (url: string, disk: string, id: string, opts: Opts) => {
      await (await hostClient(ctx, url, opts)).deleteSnapshot(disk, id, { signal: ctx.signal });
      if (opts.json) printJson(ctx, { id, deleted: true });
      else printLines(ctx, `deleted ${id}`);
    });
}
