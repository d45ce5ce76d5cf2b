import { createHash } from 'node:crypto';
import { type Disk, isVdError, throwIfAborted, VdError } from '@vd/core';
import type { Manifest } from './manifest.js';
import { openPointDisk } from './point-disk.js';
import { type PointRef, Repository } from './repository.js';

export interface VerifyProblem {
  point: string;
  /** The damaged extent, when the problem is one. */
  offset?: number;
  length?: number;
  code: string;
  message: string;
}

export interface PointReport {
  id: string;
  kind: 'full' | 'incremental' | 'unknown';
  parent: string | null;
  created?: string;
  ok: boolean;
  /** Bytes read back and compared. */
  bytesChecked: number;
  extents: number;
  problems: VerifyProblem[];
}

export interface VerifyReport {
  ok: boolean;
  /** The point asked for (the latest when none was). */
  point: string;
  /** Every point of its chain, oldest first. */
  points: PointReport[];
  bytesChecked: number;
  seconds: number;
}

export interface VerifyOptions {
  signal?: AbortSignal | undefined;
  onProgress?: ((p: { point: string; bytesDone: number; bytesTotal: number }) => void) | undefined;
  /** Reads in flight (default 8). */
  inFlight?: number | undefined;
}

const ZERO_CHECK = 1024 * 1024;
const ZEROES = Buffer.alloc(ZERO_CHECK);

/**
 * Checks a point and every point below it: manifests (their own checksums, ids, parents), the VMDK
 * chain (present, opening, CIDs as recorded), and every extent's SHA-256 read back through the
 * chain as of that point; whatever a point covers without an extent must read as zeroes. Never
 * throws for damage: the report names the point and extent.
 */
export async function verifyPoint(repoDir: string, pointId?: string, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const started = performance.now();
  const repo = await Repository.open(repoDir);
  const target = (await repo.ids()).length > 0 ? await resolveId(repo, pointId) : undefined;
  if (!target) throw new VdError('ERR_VD_NOT_FOUND', `the repository ${repoDir} holds no restore points yet`);
  const reports: PointReport[] = [];
  // Walk down by manifest parents; a damaged manifest stops the walk there and is reported.
  const chain: (PointRef | { id: string; error: unknown })[] = [];
  let next: string | null = target;
  const seen = new Set<string>();
  while (next !== null && !seen.has(next)) {
    const id: string = next;
    seen.add(id);
    try {
      const ref = await repo.point(id);
      chain.unshift(ref);
      next = ref.manifest.parent;
    } catch (err) {
      chain.unshift({ id, error: err });
      next = null;
    }
  }
  if (next !== null) chain.unshift({ id: next, error: new VdError('ERR_VD_LOOP', `point ${next} is its own ancestor`) });

  let previous: Manifest | undefined;
  for (const entry of chain) {
    throwIfAborted(opts.signal, 'verify');
    if ('error' in entry) {
      reports.push({
        id: entry.id,
        kind: 'unknown',
        parent: null,
        ok: false,
        bytesChecked: 0,
        extents: 0,
        problems: [problem(entry.id, entry.error)],
      });
      previous = undefined;
      continue;
    }
    const report = await verifyOne(entry, previous, chain[0] === entry, opts);
    reports.push(report);
    previous = entry.manifest;
  }
  const ok = reports.every((r) => r.ok);
  return {
    ok,
    point: target,
    points: reports,
    bytesChecked: reports.reduce((n, r) => n + r.bytesChecked, 0),
    seconds: (performance.now() - started) / 1000,
  };
}

async function resolveId(repo: Repository, id: string | undefined): Promise<string> {
  const ids = await repo.ids();
  if (id === undefined) return ids[ids.length - 1]!;
  const found = ids.find((x) => x === id || Number(x) === Number(id));
  if (!found)
    throw new VdError('ERR_VD_NOT_FOUND', `the repository ${repo.dir} has no point ${JSON.stringify(id)}; it has ${ids.join(', ')}`);
  return found;
}

function problem(point: string, err: unknown, at?: { offset: number; length: number }): VerifyProblem {
  const code = isVdError(err) ? err.code : 'ERR_VD_IO';
  const message = err instanceof Error ? err.message : String(err);
  return { point, code, message, ...(at ?? {}) };
}

async function verifyOne(ref: PointRef, parent: Manifest | undefined, first: boolean, opts: VerifyOptions): Promise<PointReport> {
  const m = ref.manifest;
  const report: PointReport = {
    id: ref.id,
    kind: m.kind,
    parent: m.parent,
    created: m.created,
    ok: true,
    bytesChecked: 0,
    extents: m.extents.length,
    problems: [],
  };
  const fail = (err: unknown, at?: { offset: number; length: number }) => {
    report.ok = false;
    report.problems.push(problem(ref.id, err, at));
  };
  if (first && m.kind !== 'full')
    fail(new VdError('ERR_VD_CORRUPT', `point ${ref.id} is incremental but its parent ${m.parent} is missing`));
  if (parent && m.parent !== parent.id)
    fail(new VdError('ERR_VD_CORRUPT', `point ${ref.id} names parent ${m.parent}, the chain has ${parent.id}`));
  if (parent && m.size !== parent.size)
    fail(new VdError('ERR_VD_CORRUPT', `point ${ref.id} is ${m.size} bytes, its parent ${parent.size}`));
  if (parent && m.disk.parentCid !== parent.disk.cid) {
    fail(
      new VdError(
        'ERR_VD_CID_MISMATCH',
        `point ${ref.id} was made from parent CID ${m.disk.parentCid}, point ${parent.id} has CID ${parent.disk.cid}`,
      ),
    );
  }
  let disk: Disk;
  try {
    disk = await openPointDisk(ref.dir, m.disk.file, { signal: opts.signal });
  } catch (err) {
    fail(err);
    return report;
  }
  try {
    const info = disk.info();
    if (String(info.cid) !== m.disk.cid) {
      fail(
        new VdError(
          'ERR_VD_CID_MISMATCH',
          `point ${ref.id}'s VMDK has CID ${String(info.cid)}, its manifest recorded ${m.disk.cid}: it was modified`,
        ),
      );
    }
    if (disk.size !== m.size)
      fail(new VdError('ERR_VD_CORRUPT', `point ${ref.id}'s VMDK is ${disk.size} bytes, its manifest says ${m.size}`));
    else await checkContent(disk, ref.id, m, report, fail, opts);
  } finally {
    await disk.close().catch(() => {});
  }
  return report;
}

type Work = { offset: number; length: number; sha256?: string };

/** Extents to compare, and the uncovered rest of each range to check for zeroes, in order. */
function* work(m: Manifest): Generator<Work> {
  let i = 0;
  for (const [offset, length] of m.ranges) {
    let at = offset;
    const end = offset + length;
    while (i < m.extents.length && m.extents[i]![0] < end) {
      const [eo, el, sha] = m.extents[i]!;
      if (eo > at) yield { offset: at, length: eo - at };
      yield { offset: eo, length: el, sha256: sha };
      at = Math.max(at, eo + el);
      i++;
    }
    if (at < end) yield { offset: at, length: end - at };
  }
}

async function checkContent(
  disk: Disk,
  id: string,
  m: Manifest,
  report: PointReport,
  fail: (err: unknown, at?: { offset: number; length: number }) => void,
  opts: VerifyOptions,
): Promise<void> {
  const total = m.ranges.reduce((n, [, l]) => n + l, 0);
  let done = 0;
  const items = work(m);
  const inFlight = opts.inFlight ?? 8;
  const one = async (w: Work) => {
    throwIfAborted(opts.signal, 'verify');
    try {
      if (w.sha256 !== undefined) {
        const data = await disk.read(w.offset, w.length, { signal: opts.signal });
        report.bytesChecked += w.length;
        const got = createHash('sha256').update(data).digest('hex');
        if (got !== w.sha256) {
          fail(
            new VdError('ERR_VD_VERIFY', `point ${id}: the ${w.length} bytes at ${w.offset} do not match their SHA-256 (damaged data)`, {
              details: { point: id, offset: w.offset, length: w.length },
            }),
            { offset: w.offset, length: w.length },
          );
        }
      } else {
        // Ranges the point covers without data must read as zeroes; only allocated parts need reading.
        for await (const e of disk.extents({ offset: w.offset, length: w.length, signal: opts.signal })) {
          if (e.type === 'hole' || e.type === 'zero') continue;
          for (let at = e.offset; at < e.offset + e.length; at += ZERO_CHECK) {
            const n = Math.min(ZERO_CHECK, e.offset + e.length - at);
            const data = await disk.read(at, n, { signal: opts.signal });
            report.bytesChecked += n;
            if (!Buffer.from(data.buffer, data.byteOffset, n).equals(ZEROES.subarray(0, n))) {
              fail(
                new VdError('ERR_VD_VERIFY', `point ${id}: the ${n} bytes at ${at} should read as zeroes and do not`, {
                  details: { point: id, offset: at, length: n },
                }),
                { offset: at, length: n },
              );
              return;
            }
          }
        }
      }
    } catch (err) {
      if (isVdError(err, 'ERR_VD_ABORTED')) throw err;
      fail(err, { offset: w.offset, length: w.length });
    } finally {
      done += w.length;
      opts.onProgress?.({ point: id, bytesDone: done, bytesTotal: total });
    }
  };
  const workers = Array.from({ length: inFlight }, async () => {
    for (;;) {
      const r = items.next();
      if (r.done) return;
      await one(r.value);
    }
  });
  await Promise.all(workers);
}
