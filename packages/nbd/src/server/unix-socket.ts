import { lstat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { debug, VdError } from '@vd/core';

/**
 * Called when listening on `path` failed with EADDRINUSE. A server killed without closing leaves
 * its socket file behind; a socket nobody accepts on (connect says ECONNREFUSED) is removed so the
 * caller can listen again. Throws a coded error when a server is live there or the path is not a
 * socket: it never removes anything but a dead socket.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  // Gone meanwhile: listening again may work.
  if (!st) return;
  if (!st.isSocket()) {
    throw new VdError('ERR_VD_EXISTS', `cannot listen on ${path}: it exists and is not a socket; remove it or choose another path`, {
      details: { path, errno: 'EADDRINUSE' },
    });
  }
  const answer = await probe(path);
  if (answer !== 'ECONNREFUSED') {
    const why = answer === 'live' ? 'another server is listening there' : `it is in use (${answer})`;
    throw new VdError('ERR_VD_EXISTS', `cannot listen on ${path}: ${why}; stop it or choose another path`, {
      details: { path, errno: 'EADDRINUSE', ...(answer === 'live' ? { listening: true } : {}) },
    });
  }
  debug('nbd server: removing the stale socket %s (nobody accepts on it)', path);
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw new VdError('ERR_VD_IO', `cannot remove the stale socket ${path}: ${err.message}`, { cause: err });
  });
}

/** 'live' when something accepts a connection on `path`, else the errno connecting failed with. */
function probe(path: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve('live');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}
