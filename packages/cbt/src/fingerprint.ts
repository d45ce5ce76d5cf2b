import { stat } from 'node:fs/promises';

/**
 * A fingerprint hook for a disk held in a local file: size, mtime, ctime, inode and device.
 * Any write by anything changes mtime and ctime, and ctime cannot be set back by `touch`, so a
 * change made without the tracker is seen at the next open. (Renaming or chmod also change
 * ctime: that resets tracking too, which is safe.)
 */
export function fileFingerprint(path: string): () => Promise<string> {
  return async () => {
    const st = await stat(path, { bigint: true });
    return `file:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.ino}:${st.dev}`;
  };
}
