import { lstat, mkdir, readdir, realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { VdError } from '@vd/core';

/** Where the host keeps its own files inside the datastore (sidecars, snapshot children, state). */
export const HOST_DIR = '.vd-host';

/** VMDK extent files (`-flat`, `-s001`, `-f001`, `-delta`) belong to their descriptor, not exported on their own. */
const EXTENT_FILE = /-(flat|delta|[sf]\d{3})\.vmdk$/i;

/**
 * Checks a disk name taken from a client (an export name, an API path segment): one plain file
 * name, nothing that could leave the directory. ERR_VD_INVALID_ARGUMENT names the rule it broke.
 */
export function checkDiskName(name: unknown): string {
  const bad = (why: string) =>
    new VdError('ERR_VD_INVALID_ARGUMENT', `disk name ${JSON.stringify(name)} ${why}; name a file directly inside the datastore`, {
      details: { name },
    });
  if (typeof name !== 'string' || name.length === 0) throw bad('is empty');
  if (name.length > 255) throw bad('is longer than 255 characters');
  if (name.includes('\0')) throw bad('contains NUL');
  if (name.includes('/') || name.includes('\\')) throw bad('contains a path separator');
  if (name === '.' || name === '..') throw bad('is a directory reference');
  if (name.startsWith('.')) throw bad('is hidden (starts with a dot)');
  if (name.includes('@')) throw bad('contains "@" (reserved for snapshot exports)');
  return name;
}

/**
 * The datastore directory: every disk is a regular file directly inside it, reached only through
 * `resolve`, which refuses names that are not plain file names and symlinks that lead outside.
 */
export class Datastore {
  private constructor(readonly dir: string) {}

  /** `dir` must exist and be a directory; it is kept as its real path. */
  static async open(dir: string): Promise<Datastore> {
    let real: string;
    try {
      real = await realpath(dir);
    } catch (err) {
      throw new VdError('ERR_VD_NOT_FOUND', `datastore ${dir} does not exist; create the directory first`, {
        cause: err,
        details: { dir },
      });
    }
    if (!(await stat(real)).isDirectory()) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `datastore ${dir} is not a directory`, { details: { dir } });
    }
    return new Datastore(real);
  }

  /** The host's own directory inside the datastore. */
  get hostDir(): string {
    return join(this.dir, HOST_DIR);
  }

  /**
   * Creates the host's directory (mode 0700) when missing. A link (or anything but a directory)
   * in its place is refused: every file the host writes goes there, and none may land outside.
   */
  async makeHostDir(): Promise<string> {
    const dir = this.hostDir;
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    if (!(await lstat(dir)).isDirectory()) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${dir} is not a directory (a link?); move it away, the host keeps its files there`, {
        details: { path: dir },
      });
    }
    return dir;
  }

  /**
   * The path of disk `name`: a regular file (or a symlink to one) strictly inside the datastore.
   * ERR_VD_INVALID_ARGUMENT for a bad name or a link leading outside, ERR_VD_NOT_FOUND when absent.
   */
  async resolve(name: unknown): Promise<string> {
    const checked = checkDiskName(name);
    const path = join(this.dir, checked);
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      throw new VdError('ERR_VD_NOT_FOUND', `no disk ${JSON.stringify(checked)} in the datastore`, {
        cause: err,
        details: { name: checked },
      });
    }
    if (!real.startsWith(this.dir + sep) || real.slice(this.dir.length + 1).includes(sep)) {
      throw new VdError(
        'ERR_VD_INVALID_ARGUMENT',
        `disk ${JSON.stringify(checked)} is a link leading outside the datastore; it is not served`,
        {
          details: { name: checked },
        },
      );
    }
    const st = await stat(real);
    if (!st.isFile()) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `${JSON.stringify(checked)} is not a regular file`, { details: { name: checked } });
    }
    return real;
  }

  /** The names of the disks in the datastore, sorted: regular files (or safe links to them), VMDK extent files left out. */
  async list(): Promise<string[]> {
    const out: string[] = [];
    for (const entry of await readdir(this.dir)) {
      try {
        checkDiskName(entry);
      } catch {
        continue;
      }
      if (EXTENT_FILE.test(entry)) continue;
      const st = await lstat(join(this.dir, entry));
      if (!st.isFile() && !st.isSymbolicLink()) continue;
      try {
        await this.resolve(entry);
      } catch {
        continue;
      }
      out.push(entry);
    }
    return out.sort();
  }
}
