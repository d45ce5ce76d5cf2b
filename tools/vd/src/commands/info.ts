import { BASE_ALLOCATION, type Disk } from '@vd/core';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { openDiskArg } from '../disk-arg.js';
import { jsonOption } from '../options.js';
import { formatFields, printJson, printLines } from '../output.js';
import { formatBytes } from '../units.js';

export function define(cmd: Command, ctx: Context): void {
  cmd
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Examples:
  vd info disk.img
  vd info file:///var/lib/images/disk.img --json`,
    )
    .action(async (arg: string, opts: { json?: boolean }) => {
      const disk = await openDiskArg(arg);
      try {
        const report = await describe(disk);
        if (opts.json) printJson(ctx, report);
        else printLines(ctx, ...human(report));
      } finally {
        await disk.close();
      }
    });
}

async function describe(disk: Disk) {
  const { size, transport, format, allocatedBytes, ...rest } = disk.info();
  // The format's own count (e.g. blocks on the file system) wins; otherwise the allocation map says.
  let allocated = typeof allocatedBytes === 'number' ? allocatedBytes : undefined;
  let allocatedSource: 'format' | 'extents' = 'format';
  if (allocated === undefined) {
    allocated = 0;
    allocatedSource = 'extents';
    for await (const e of disk.extents({ context: BASE_ALLOCATION })) if (e.type !== 'hole') allocated += e.length;
  }
  return {
    location: disk.location,
    size,
    format,
    ...rest,
    allocatedBytes: allocated,
    allocatedSource,
    transport,
    selection: disk.selection,
    capabilities: disk.capabilities,
  };
}

function human(r: Awaited<ReturnType<typeof describe>>): string[] {
  const c = r.capabilities;
  const ops = [
    c.readOnly ? 'read-only' : 'read-write',
    c.flush ? 'flush' : 'no flush',
    `zero ${c.zero}${c.fastZero ? ' (fast)' : ''}`,
    `trim ${c.trim}${c.trimReadsZero ? ' (reads zero)' : ''}`,
    `fua ${c.fua}`,
    c.multiConn ? 'multi-conn' : undefined,
  ].filter(Boolean);
  const fields: [string, string][] = [
    ['disk', r.location ?? '-'],
    ['size', `${formatBytes(r.size)} (${r.size} bytes)`],
    ['format', typeof r.subformat === 'string' ? `${r.format} (${r.subformat})` : r.format],
    [
      'allocated',
      `${formatBytes(r.allocatedBytes)} (${r.allocatedBytes} bytes${r.allocatedSource === 'extents' ? ', from the allocation map' : ''})`,
    ],
    ['transport', r.transport],
    ['operations', ops.join(', ')],
    ['extents', c.extents.length > 0 ? c.extents.join(', ') : 'none (reported as all data)'],
    [
      'block size',
      `minimum ${c.blockSize.minimum}, preferred ${formatBytes(c.blockSize.preferred)}, maximum ${formatBytes(c.blockSize.maximum)}`,
    ],
    ['concurrency', `${c.concurrency.model}, up to ${c.concurrency.maxInFlight} in flight`],
  ];
  const lines = formatFields(fields);
  // VMDK: the redo-log chain, newest link first, with the CIDs that tie it together.
  const chain = (r as Record<string, unknown>).chain;
  if (Array.isArray(chain)) {
    lines.push('chain:');
    for (const link of chain as { name: string; createType: string; cid: string; parentCid: string }[]) {
      lines.push(`  ${link.name} (${link.createType}, CID ${link.cid}, parentCID ${link.parentCid})`);
    }
  }
  lines.push('transport selection:');
  for (const a of r.selection) lines.push(`  ${a.transport}: ${a.outcome} (${a.reason})`);
  return lines;
}
