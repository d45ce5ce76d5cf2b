/**
 * Incremental backup with vd, end to end: the calls a backup product makes.
 *
 *   1. (stand-in for your infrastructure) a vd host serving a datastore over NBDSSL, with its API
 *   2. a VM writes to its disk over NBD
 *   3. backup → a full point; the VM writes more; backup → an incremental point (changed areas only)
 *   4. verify the repository; restore the latest point; check it against the disk
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backup, hostSource, restore, verifyPoint } from '@vd/backup';
import { createDisk, type Disk, file, openDisk } from '@vd/core';
import { ApiServer, DiskHost, HostClient } from '@vd/host';
import { createPki, nbdServerTls, nbdssl } from '@vd/nbdssl';

const MiB = 1024 * 1024;
const DISK = 'vm.raw';

async function sha256(disk: Disk): Promise<string> {
  const h = createHash('sha256');
  for (let at = 0; at < disk.size; at += 4 * MiB) h.update(await disk.read(at, Math.min(4 * MiB, disk.size - at)));
  return h.digest('hex');
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'vd-example-backup-'));
  const datastore = join(work, 'datastore');
  const pki = join(work, 'pki');
  const repo = join(work, 'repo');

  // 1. Stand-in infrastructure: in production the host runs elsewhere (`vd serve --datastore … --api …`)
  //    and you are given its API URL, a token and its CA certificate.
  await mkdir(datastore);
  await writeFile(join(datastore, DISK), '');
  await truncate(join(datastore, DISK), 128 * MiB);
  await createPki(pki);
  const host = await DiskHost.open({ datastore, tls: await nbdServerTls({ certificates: pki }) });
  await host.listen({ host: '127.0.0.1', port: 0 });
  const token = randomBytes(24).toString('hex');
  const api = new ApiServer(host, { token });
  const { url } = await api.listen();

  // 2. The running VM: writes go through NBDSSL to the host, which tracks every change.
  const vm = await openDisk(host.uriOf(DISK)!, { readOnly: false, transports: [nbdssl({ certificates: pki })] });
  try {
    for (let at = 0; at < vm.size; at += 4 * MiB) if (randomInt(3) > 0) await vm.write(at, randomBytes(2 * MiB));

    // 3. The backup product. A source says how to freeze and read the disk: here a host snapshot,
    //    read over NBDSSL (fall back to clear NBD only if you list nbd() after it), with the
    //    host's changed block tracking for incrementals. The snapshot is deleted after each run.
    const client = new HostClient({ url, token });
    const source = hostSource(client, DISK, { transports: [nbdssl({ certificates: pki })] });

    const full = await backup(repo, source, {
      onStart: (s) => console.log(`point ${s.point}: ${s.kind} — ${s.reason}`),
    });
    console.log(`  read ${full.bytesRead} bytes in ${full.seconds.toFixed(2)} s`);

    // The VM keeps running: about 1% of its data changes.
    for (let i = 0; i < 8; i++) await vm.write(randomInt(0, vm.size - 65536), randomBytes(65536));
    await vm.flush();

    const inc = await backup(repo, source, {
      onStart: (s) => console.log(`point ${s.point}: ${s.kind} — ${s.reason}`),
    });
    console.log(`  read ${inc.bytesRead} bytes in ${inc.seconds.toFixed(2)} s`);
    if (inc.kind !== 'incremental') throw new Error(`expected an incremental, got ${inc.kind}: ${inc.reason}`);
    if (inc.bytesRead > 0.03 * full.bytesRead) throw new Error('the incremental read more than the changed areas');

    // 4. Verify the whole chain (manifest checksums, VMDK links, every extent's SHA-256).
    const report = await verifyPoint(repo);
    for (const p of report.points) console.log(`verify ${p.id} (${p.kind}): ${p.ok ? 'ok' : p.problems.map((x) => x.message).join('; ')}`);
    if (!report.ok) throw new Error('the repository failed verification');

    // Restore the latest point into a new sparse raw file, verified as it is written.
    const restoredPath = join(work, 'restored.raw');
    await createDisk(restoredPath, { size: vm.size });
    const restored = await openDisk(restoredPath, { readOnly: false, transports: [file()] });
    try {
      const r = await restore(repo, undefined, restored, { verify: true, targetIsZero: true });
      console.log(`restored point ${r.point}: ${r.bytesRead} bytes read, verified: ${r.verified}`);
      // The VM has been quiet since the last snapshot, so its disk must equal the restored one.
      const same = (await sha256(restored)) === (await sha256(vm));
      console.log(`restored disk identical to the VM's disk: ${same}`);
      if (!same || !r.verified) throw new Error('the restored disk differs');
    } finally {
      await restored.close();
    }
  } finally {
    await vm.close();
    await api.close();
    await host.close();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
