import { type CopyProgress, type CopyResult, copyDisk, type Disk, VdError } from '@vd/core';
import { endReadDisk } from './end-disk.js';
import { openPointDisk } from './point-disk.js';
import { Repository } from './repository.js';
import { type VerifyReport, verifyPoint } from './verify.js';

export interface RestoreOptions {
  signal?: AbortSignal | undefined;
  /**
   * Check the point's chain against its manifests first (every SHA-256), then re-read the target
   * after the copy and compare it with what was read from the repository.
   */
  verify?: boolean | undefined;
  /** The target reads zero everywhere (a new file or image): holes are skipped, not zeroed. */
  targetIsZero?: boolean | undefined;
  onProgress?: ((p: CopyProgress) => void) | undefined;
  inFlight?: number | undefined;
}

export interface RestoreResult extends CopyResult {
  point: string;
  size: number;
  /** The repository check made before the copy (with `verify`). */
  repository?: VerifyReport;
}

/** Opens a point as one read-only disk (its chain down to the full point). Close it when done. */
export async function openPoint(
  repoDir: string,
  pointId?: string,
  opts: { signal?: AbortSignal } = {},
): Promise<{ id: string; disk: Disk }> {
  const repo = await Repository.open(repoDir);
  const ref = await repo.point(pointId);
  await repo.chain(ref.id);
  const disk = await openPointDisk(ref.dir, ref.manifest.disk.file, { signal: opts.signal });
  return { id: ref.id, disk };
}

/** Writes a point onto `target` (at least as large), skipping holes. */
export async function restore(
  repoDir: string,
  pointId: string | undefined,
  target: Disk,
  opts: RestoreOptions = {},
): Promise<RestoreResult> {
  let repository: VerifyReport | undefined;
  if (opts.verify) {
    repository = await verifyPoint(repoDir, pointId, { signal: opts.signal });
    if (!repository.ok) {
      const bad = repository.points.flatMap((p) => p.problems);
      const first = bad[0];
      throw new VdError(
        'ERR_VD_VERIFY',
        `restore: the repository fails verification at point ${first?.point}${first?.offset !== undefined ? `, extent ${first.offset}+${first.length}` : ''}: ${first?.message}`,
        { details: { problems: bad } },
      );
    }
  }
  const { id, disk } = await openPoint(repoDir, pointId, opts);
  try {
    const r = await copyDisk(disk, target, {
      signal: opts.signal,
      verify: opts.verify,
      targetIsZero: opts.targetIsZero,
      onProgress: opts.onProgress,
      inFlight: opts.inFlight,
    });
    return { ...r, point: id, size: disk.size, ...(repository ? { repository } : {}) };
  } finally {
    await endReadDisk(disk, opts.signal, 'restore');
  }
}
