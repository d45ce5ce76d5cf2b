import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BackupResult, type BackupSource, backup, hostSource, restore, verifyPoint } from '@vd/backup';
import { createDisk, type Disk, file, openDisk, VdError } from '@vd/core';
import { ApiServer, DiskHost, HostClient } from '@vd/host';
import { createPki, nbdServerTls, nbdssl } from '@vd/nbdssl';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { prng, writeDemoData } from '../demo-data.js';
import { jsonOption, sizeOption } from '../options.js';
import { formatTable, printJson, printLines } from '../output.js';
import { formatBytes, formatRate } from '../units.js';
import { backupSummary } from './backup.js';

interface Step {
  step: string;
  ok: boolean;
  detail: string;
}

const MiB = 1024 * 1024;
const HASH_CHUNK = 4 * MiB;
const ZEROES = new Uint8Array(HASH_CHUNK);

/** SHA-256 of every byte of a disk; holes and zero extents are hashed as zeroes without reading them. */
async function contentDigest(disk: Disk, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  for await (const e of disk.extents({ signal })) {
    for (let at = e.offset; at < e.offset + e.length; at += HASH_CHUNK) {
      const n = Math.min(HASH_CHUNK, e.offset + e.length - at);
      h.update(e.type === 'data' ? await disk.read(at, n, { signal }) : ZEROES.subarray(0, n));
    }
  }
  return h.digest('hex');
}

/**
 * A host source that also fingerprints each snapshot before it is deleted (outside the backup's
 * own timing), so the demo can prove a restore equals the snapshot, not merely the repository.
 */
function fingerprinted(source: BackupSource, digests: string[], signal?: AbortSignal): BackupSource {
  return {
    description: source.description,
    async open(sig) {
      const state = await source.open(sig);
      const release = state.release.bind(state);
      return Object.assign(state, {
        release: async () => {
          try {
            digests.push(await contentDigest(state.disk, signal));
          } finally {
            await release();
          }
        },
      });
    },
  };
}

/**
 * Installed software and user files: 1–8 MiB runs of data filling about `fraction` of the disk
 * above the first 64 MiB, with holes between (a thin disk that is partly used).
 */
async function bulkData(disk: Disk, fraction: number, seed: number): Promise<{ bytes: number; writes: number }> {
  const rnd = prng(seed);
  const start = Math.min(64 * MiB, Math.floor(disk.size / 4 / MiB) * MiB);
  let bytes = 0;
  let writes = 0;
  for (let at = start; at < disk.size; ) {
    const run = Math.min((1 + Math.floor(rnd() * 8)) * MiB, disk.size - at);
    if (rnd() < fraction) {
      for (let o = 0; o < run; o += 4 * MiB) {
        const n = Math.min(4 * MiB, run - o);
        await disk.write(at + o, randomBytes(n));
        writes++;
      }
      bytes += run;
    }
    at += run;
  }
  return { bytes, writes };
}

/** What a running VM does between backups: scattered writes of 4–256 KiB, `bytes` in total. */
async function vmWrites(disk: Disk, bytes: number, seed: number): Promise<number> {
  const rnd = prng(seed);
  let left = bytes;
  let count = 0;
  while (left > 0) {
    const length = Math.min(left, 4096 * (1 + Math.floor(rnd() * 64)));
    const offset = Math.floor((rnd() * (disk.size - length)) / 512) * 512;
    await disk.write(offset, randomBytes(length));
    left -= length;
    count++;
  }
  return count;
}

export function define(cmd: Command, ctx: Context): void {
  cmd
    // 1 GiB: large enough that an incremental's fixed cost (snapshot, TLS handshake, fsyncs) does
    // not dominate its time, small enough to run in well under a minute.
    .addOption(sizeOption('size of the demo disk').default(1024 * MiB, '1G'))
    .option('--keep', 'keep the temporary workspace (datastore, repository, restored disks)')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `
Needs nothing but Node. In a temporary workspace, on 127.0.0.1, it starts a vd host (NBDSSL with a
fresh CA, and its control API), creates a disk, writes realistic content to it through NBD like a
running VM, takes a full backup from a snapshot, changes about 1% of the disk, takes an incremental,
restores the latest point and proves it identical to the snapshot it was taken from.
Exit status 0 only when every step succeeded and every check passed.

Examples:
  vd demo
  vd demo --size 256M --keep --json`,
    )
    .action(async (opts: { size: number; keep?: boolean; json?: boolean }) => {
      const dir = await mkdtemp(join(tmpdir(), 'vd-demo-'));
      const steps: Step[] = [];
      const live = !opts.json && ctx.io.stderrIsTTY;
      const log = (s: Step) => {
        steps.push(s);
        if (live) ctx.io.stderr.write(`  ${s.ok ? '✓' : '✗'} ${s.step}: ${s.detail}\n`);
      };
      const signal = ctx.signal;
      let host: DiskHost | undefined;
      let api: ApiServer | undefined;
      let vm: Disk | undefined;
      try {
        if (live) ctx.io.stderr.write(`vd demo in ${dir}\n`);
        const datastore = join(dir, 'datastore');
        const pki = join(dir, 'pki');
        const repo = join(dir, 'repo');
        await mkdir(datastore);
        await writeFile(join(datastore, 'vm-disk.raw'), '');
        await truncate(join(datastore, 'vm-disk.raw'), opts.size);
        await createPki(pki);
        host = await DiskHost.open({ datastore, tls: await nbdServerTls({ certificates: pki }) });
        const nbdAddress = await host.listen({ host: '127.0.0.1', port: 0 });
        const token = randomBytes(24).toString('hex');
        api = new ApiServer(host, { token });
        const { url } = await api.listen();
        log({
          step: 'host',
          ok: true,
          detail: `NBDSSL on 127.0.0.1:${nbdAddress.port} (TLS required, certificates from a new CA), control API on ${url}`,
        });

        const transports = () => [nbdssl({ certificates: pki })];
        vm = await openDisk(host.uriOf('vm-disk.raw')!, { readOnly: false, transports: transports(), signal });
        const written = await writeDemoData(vm);
        const bulk = await bulkData(vm, 0.45, 3);
        await vm.flush();
        const bytes = written.reduce((n, w) => n + w.length, 0) + bulk.bytes;
        log({
          step: 'write',
          ok: true,
          detail: `a ${formatBytes(opts.size)} thin disk: ${formatBytes(bytes)} in ${written.length + bulk.writes} writes over NBDSSL (partition table, file-system-like metadata, logs, zeroes, file data)`,
        });

        const client = new HostClient({ url, token });
        const digests: string[] = [];
        const source = fingerprinted(hostSource(client, 'vm-disk.raw', { transports: transports() }), digests, signal);
        const full = await backup(repo, source, { signal });
        log({
          step: 'full backup',
          ok: full.kind === 'full',
          detail: `point ${full.point}: read ${formatBytes(full.bytesRead)} in ${full.seconds.toFixed(2)} s (${formatRate(full.bytesRead, full.seconds)}) from a snapshot`,
        });

        const change = Math.round(full.bytesRead / 100);
        const writes = await vmWrites(vm, change, 7);
        await vm.flush();
        log({
          step: 'change',
          ok: true,
          detail: `${writes} scattered writes of ${formatBytes(change)} (1% of the allocated data), like a running VM`,
        });

        const inc = await backup(repo, source, { signal });
        log({
          step: 'incremental',
          ok: inc.kind === 'incremental',
          detail: `point ${inc.point}: read ${formatBytes(inc.bytesRead)} in ${inc.seconds.toFixed(2)} s — only the changed areas the host's CBT reported`,
        });

        const report = await verifyPoint(repo, undefined, { signal });
        const extents = report.points.reduce((n, p) => n + p.extents, 0);
        log({
          step: 'verify',
          ok: report.ok,
          detail: report.ok
            ? `repository: ${report.points.length} points, ${extents} extent checksums, VMDK chain and CIDs intact`
            : `damaged: ${report.points
                .flatMap((p) => p.problems)
                .map((p) => p.message)
                .join('; ')}`,
        });

        const proofs: boolean[] = [];
        for (const [i, r] of [full, inc].entries()) {
          const path = join(dir, `restored-${r.point}.raw`);
          await createDisk(path, { size: opts.size });
          const target = await openDisk(path, { readOnly: false, transports: [file()] });
          let same: boolean;
          let verified: boolean;
          try {
            verified = (await restore(repo, r.point, target, { verify: true, targetIsZero: true, signal })).verified;
            same = (await contentDigest(target, signal)) === digests[i];
          } finally {
            await target.close();
          }
          proofs.push(same && verified);
          log({
            step: `restore ${r.point}`,
            ok: same && verified,
            detail: same
              ? `restored-${r.point}.raw is identical to snapshot ${i + 1} (SHA-256 ${digests[i]!.slice(0, 16)}…), read back and verified`
              : `restored-${r.point}.raw differs from the snapshot`,
          });
        }

        const passed = steps.every((s) => s.ok);
        const ratio = (a: number, b: number) => (b > 0 ? a / b : 0);
        if (opts.json) {
          printJson(ctx, {
            ok: passed,
            dir: opts.keep ? dir : undefined,
            size: opts.size,
            steps,
            full: backupSummary(full),
            incremental: backupSummary(inc),
            incrementalReadRatio: ratio(inc.bytesRead, full.bytesRead),
            incrementalTimeRatio: ratio(inc.seconds, full.seconds),
            verified: { repository: report.ok, restoredIdenticalToSnapshots: proofs },
          });
        } else {
          const row = (r: BackupResult) => [
            `${r.point} ${r.kind}`,
            formatBytes(r.bytesRead),
            `${r.seconds.toFixed(2)} s`,
            formatRate(r.bytesRead, r.seconds),
          ];
          printLines(
            ctx,
            ...formatTable([row(full), row(inc)], { header: ['POINT', 'READ', 'TIME', 'THROUGHPUT'], right: [1, 2, 3] }),
            `incremental: ${(ratio(inc.bytesRead, full.bytesRead) * 100).toFixed(1)}% of the full backup's bytes, ${(ratio(inc.seconds, full.seconds) * 100).toFixed(1)}% of its time`,
            '',
            ...formatTable(
              steps.map((s) => [s.step, s.ok ? 'ok' : 'FAILED', s.detail]),
              { header: ['STEP', 'RESULT', 'DETAIL'] },
            ),
          );
          if (opts.keep) printLines(ctx, '', `workspace kept in ${dir}`);
        }
        if (!passed) {
          const failed = steps.filter((s) => !s.ok).map((s) => s.step);
          throw new VdError('ERR_VD_VERIFY', `demo: ${failed.join(', ')} failed`, { details: { failed } });
        }
      } finally {
        await vm?.close().catch(() => {});
        await api?.close().catch(() => {});
        await host?.close().catch(() => {});
        if (!opts.keep) await rm(dir, { recursive: true, force: true });
      }
    });
}
