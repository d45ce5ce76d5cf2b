import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fromSystemError, processAlive, VdError } from '@vd/core';
import { type Manifest, parseManifest } from './manifest.js';

/**
 * A backup repository on a local directory:
 *
 *   <repo>/vd-backup.json          what this directory is (format, version)
 *   <repo>/lock                    held while a backup writes (pid inside)
 *   <repo>/points/<id>/disk.vmdk   a restore point: full = sparse VMDK, incremental = its child
 *   <repo>/points/<id>/manifest.json
 *   <repo>/points/.partial-<id>/   a point being written; renamed into place only when complete
 *
 * A point exists exactly when its directory (without the `.partial-` prefix) does, so an
 * interrupted backup leaves the repository as it was; the next one removes the leftovers.
 */
export const REPOSITORY_FILE = 'vd-backup.json';
export const POINTS_DIR = 'points';
export const PARTIAL_PREFIX = '.partial-';
export const MANIFEST_FILE = 'manifest.json';
export const DISK_FILE = 'disk.vmdk';
const LOCK_FILE = 'lock';
const REPOSITORY_FORMAT = 'vd-backup-repository';

export interface PointRef {
  id: string;
  dir: string;
  manifest: Manifest;
}

export class Repository {
  readonly dir: string;
  readonly pointsDir: string;

  private constructor(dir: string) {
    this.dir = dir;
    this.pointsDir = join(dir, POINTS_DIR);
  }

  /** Opens a repository; with `create`, makes one in an empty or missing directory. */
  static async open(dir: string, opts: { create?: boolean } = {}): Promise<Repository> {
    const repo = new Repository(dir);
    let text: string | undefined;
    try {
      text = await readFile(join(dir, REPOSITORY_FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `open repository ${dir}`);
    }
    if (text === undefined) {
      if (!opts.create) {
        throw new VdError('ERR_VD_NOT_FOUND', `${dir} is not a backup repository (no ${REPOSITORY_FILE}); run vd backup into it first`, {
          details: { dir },
        });
      }
      await mkdir(dir, { recursive: true });
      const entries = (await readdir(dir)).filter((e) => e !== LOCK_FILE);
      if (entries.length > 0) {
        throw new VdError('ERR_VD_EXISTS', `${dir} is not empty and not a backup repository; choose an empty or new directory`, {
          details: { dir },
        });
      }
      await mkdir(repo.pointsDir, { recursive: true });
      await writeDurably(join(dir, REPOSITORY_FILE), `${JSON.stringify({ format: REPOSITORY_FORMAT, version: 1 })}\n`);
      await syncDir(dir);
      return repo;
    }
    let doc: { format?: unknown; version?: unknown };
    try {
      doc = JSON.parse(text);
    } catch {
      throw new VdError('ERR_VD_CORRUPT', `${join(dir, REPOSITORY_FILE)} is not JSON`);
    }
    if (doc?.format !== REPOSITORY_FORMAT) throw new VdError('ERR_VD_CORRUPT', `${join(dir, REPOSITORY_FILE)} is not a vd repository file`);
    if (doc.version !== 1) throw new VdError('ERR_VD_NOT_SUPPORTED', `repository version ${String(doc.version)}; this vd reads version 1`);
    await mkdir(repo.pointsDir, { recursive: true });
    return repo;
  }

  /**
   * Takes the repository's lock: ERR_VD_EXISTS while a live process holds it; a lock left by a
   * process that is gone (killed mid-backup) is taken over. Returns the release function.
   */
  async lock(): Promise<() => Promise<void>> {
    const path = join(this.dir, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(path, 'wx');
        await fh.writeFile(`${process.pid}\n`);
        await fh.close();
        return async () => {
          await rm(path, { force: true });
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fromSystemError(err, `lock ${path}`);
      }
      const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
      if (pid !== process.pid && processAlive(pid)) {
        throw new VdError('ERR_VD_EXISTS', `the repository ${this.dir} is in use by process ${pid} (${path}); wait for it to finish`, {
          details: { pid, lock: path },
        });
      }
      if (pid === process.pid) {
        throw new VdError('ERR_VD_EXISTS', `the repository ${this.dir} is already being written by this process`, {
          details: { lock: path },
        });
      }
      await rm(path, { force: true });
    }
    throw new VdError('ERR_VD_EXISTS', `cannot take the lock ${path}`);
  }

  /** Names of half-written point directories. */
  async partials(): Promise<string[]> {
    return (await readdir(this.pointsDir)).filter((e) => e.startsWith(PARTIAL_PREFIX));
  }

  /** Removes half-written points left by an interrupted backup (call with the lock held). */
  async removePartials(): Promise<string[]> {
    const gone: string[] = [];
    for (const e of await readdir(this.pointsDir)) {
      if (e.startsWith(PARTIAL_PREFIX)) {
        await rm(join(this.pointsDir, e), { recursive: true, force: true });
        gone.push(e);
      }
    }
    return gone;
  }

  /** Point ids, oldest first. */
  async ids(): Promise<string[]> {
    const names = await readdir(this.pointsDir).catch((err) => {
      throw fromSystemError(err, `list ${this.pointsDir}`);
    });
    return names.filter((n) => /^\d{4,}$/.test(n)).sort((a, b) => Number(a) - Number(b));
  }

  async manifest(id: string): Promise<Manifest> {
    const where = join(this.pointsDir, id, MANIFEST_FILE);
    let text: string;
    try {
      text = await readFile(where, 'utf8');
    } catch (err) {
      throw new VdError('ERR_VD_CORRUPT', `point ${id} has no readable manifest (${where})`, { cause: err, details: { point: id } });
    }
    const m = parseManifest(text, where);
    if (m.id !== id) throw new VdError('ERR_VD_CORRUPT', `${where} names point ${m.id}, not ${id}`, { details: { point: id } });
    return m;
  }

  async point(id?: string): Promise<PointRef> {
    const ids = await this.ids();
    if (ids.length === 0) throw new VdError('ERR_VD_NOT_FOUND', `the repository ${this.dir} holds no restore points yet`);
    const want = id ?? ids[ids.length - 1]!;
    const found = ids.find((x) => x === want || Number(x) === Number(want));
    if (!found) {
      throw new VdError('ERR_VD_NOT_FOUND', `the repository ${this.dir} has no point ${JSON.stringify(want)}; it has ${ids.join(', ')}`, {
        details: { point: want },
      });
    }
    return { id: found, dir: join(this.pointsDir, found), manifest: await this.manifest(found) };
  }

  /** The chain of `id`: the full point first, `id` last; ERR_VD_CORRUPT when a link is missing or loops. */
  async chain(id?: string): Promise<PointRef[]> {
    const out: PointRef[] = [];
    let ref = await this.point(id);
    for (;;) {
      out.unshift(ref);
      const parent = ref.manifest.parent;
      if (parent === null) return out;
      if (out.some((p) => p.id === parent) || out.length > 100_000) {
        throw new VdError('ERR_VD_LOOP', `point ${ref.id} names ${parent} as its parent, which loops`);
      }
      try {
        ref = await this.point(parent);
      } catch (err) {
        throw new VdError('ERR_VD_CORRUPT', `point ${ref.id} needs its parent ${parent}, which is missing or damaged`, {
          cause: err,
          details: { point: ref.id, parent },
        });
      }
    }
  }

  nextId(ids: readonly string[]): string {
    const last = ids.length > 0 ? Number(ids[ids.length - 1]) : 0;
    return String(last + 1).padStart(4, '0');
  }

  partialDir(id: string): string {
    return join(this.pointsDir, `${PARTIAL_PREFIX}${id}`);
  }

  /** Makes a finished partial point durable and visible: fsync its files and directory, rename, fsync the parent. */
  async commit(id: string): Promise<void> {
    const from = this.partialDir(id);
    for (const name of await readdir(from)) await syncFile(join(from, name));
    await syncDir(from);
    await rename(from, join(this.pointsDir, id));
    await syncDir(this.pointsDir);
  }
}

async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync().catch(() => {});
  } finally {
    await fh.close();
  }
}

export async function writeDurably(path: string, text: string): Promise<void> {
  await writeFile(path, text);
  await syncFile(path);
}
