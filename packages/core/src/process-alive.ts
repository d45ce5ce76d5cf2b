/**
 * Whether process `pid` exists on this host: signal 0 checks without delivering anything. A
 * process of another user answers EPERM, which still means it exists. Lock files that hold a
 * pid (a datastore's, a backup repository's) use it to tell a live owner from a killed one.
 */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
