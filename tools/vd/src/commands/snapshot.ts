import { isVdError, VdError } from '@vd/core';
import type { SnapshotInfo } from '@vd/host';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { caOption, type HostClientOptions, hostClient, tokenFileOption } from '../host-client.js';
import { jsonOption, leaseOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';

type Opts = HostClientOptions & { json?: boolean; lease?: number };

/** What create and renew print: the same fields, `null` where there is none. */
function printSnapshot(ctx: Context, s: SnapshotInfo, json: boolean | undefined): void {
  if (json) {
    printJson(ctx, { id: s.id, changeId: s.changeId, uri: s.uri ?? null, expires: s.expires ?? null });
    return;
  }
  printLines(
    ctx,
    `id: ${s.id}`,
    `changeId: ${s.changeId}`,
    `uri: ${s.uri ?? '(the host has no NBD listener)'}`,
    ...(s.expires ? [`expires: ${s.expires} (renew with vd snapshot renew, or the host deletes it then)`] : []),
  );
}

export function define(cmd: Command, ctx: Context): void {
  const snapshot = cmd.addHelpText(
    'after',
    `
The token comes from --token-file or VD_TOKEN.

A snapshot taken with --lease is deleted by the host (consolidated, as by vd snapshot delete) once
its lease runs out unless renewed, so a script killed before it could delete it holds the redo log
for one lease at most. Durations: seconds (90), or with units s m h d (90s, 15m, 1h30m, 2d); the
host allows 1 s to 30 days.

Examples:
  vd snapshot create http://127.0.0.1:8080 disk.img --token-file ./token
  vd snapshot create http://127.0.0.1:8080 disk.img --lease 15m --json
  vd snapshot renew http://127.0.0.1:8080 disk.img 3f2a9c01d4e5
  vd snapshot list http://127.0.0.1:8080 disk.img
  vd snapshot delete http://127.0.0.1:8080 disk.img 3f2a9c01d4e5`,
  );

  snapshot
    .command('create')
    .description("freeze the disk's state: prints the snapshot's id, change ID and read-only export URI")
    .argument('<api-url>', "the host's control API, http(s)://host:port")
    .argument('<disk>', 'the disk (its file name in the datastore)')
    .addOption(leaseOption('lease the snapshot for this long (e.g. 15m): the host deletes it unless renewed in time'))
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .action(async (url: string, disk: string, opts: Opts) => {
      const s = await (await hostClient(ctx, url, opts)).createSnapshot(disk, { ttl: opts.lease, signal: ctx.signal });
      printSnapshot(ctx, s, opts.json);
    });

  snapshot
    .command('renew')
    .description("extend a leased snapshot's lease from now; prints the new expiry")
    .argument('<api-url>', "the host's control API, http(s)://host:port")
    .argument('<disk>', 'the disk (its file name in the datastore)')
    .argument('<id>', 'the snapshot id')
    .addOption(leaseOption('the new lease, from now (default: the one it was taken with); gives a snapshot without one a lease'))
    .addOption(tokenFileOption())
    .addOption(caOption())
    .addOption(jsonOption())
    .action(async (url: string, disk: string, id: string, opts: Opts) => {
      const client = await hostClient(ctx, url, opts);
      let s: SnapshotInfo;
      try {
        s = await client.renewSnapshot(disk, id, { ttl: opts.lease, signal: ctx.signal });
      } catch (err) {
        throw renewError(err, disk, id, opts.lease);
      }
      printSnapshot(ctx, s, opts.json);
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
            list.map((s) => [s.id, s.status, s.changeId, s.expires ?? '-', s.uri ?? '']),
            { header: ['ID', 'STATUS', 'CHANGE ID', 'EXPIRES', 'URI'] },
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

/** The host's answers in the CLI's words: it speaks of a `ttl`, the user typed `--lease`. */
function renewError(err: unknown, disk: string, id: string, lease: number | undefined): unknown {
  if (!isVdError(err)) return err;
  if (err.code === 'ERR_VD_INVALID_ARGUMENT' && lease === undefined && err.details?.id === id) {
    return new VdError('ERR_VD_INVALID_ARGUMENT', `snapshot ${id} of ${disk} has no lease; pass --lease DURATION to give it one`, {
      cause: err,
      details: err.details,
    });
  }
  if (err.code === 'ERR_VD_NOT_FOUND' && err.details?.id === id) {
    return new VdError('ERR_VD_NOT_FOUND', `${err.message} (a leased snapshot is deleted once its lease runs out; take a new one)`, {
      cause: err,
      details: err.details,
    });
  }
  return err;
}
