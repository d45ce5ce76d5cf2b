import { createHash } from 'node:crypto';
import { lstat, realpath, unlink } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { debug, VdError } from '@vd/core';

/** How long a server waits for another that is taking over the same stale socket. */
const LOCK_TIMEOUT_MS = 10_000;

/**
 * Runs `fn` (removing a stale socket at `path` and listening there) while no other vd server does
 * so for the same path. Without it, two servers that both found the socket dead could each unlink
 * by name, the later one removing the socket the first had just bound. The lock is an abstract
 * unix socket named for the path: binding it is atomic, the kernel drops it when its holder exits
 * however it ends, and it leaves no file behind. Only lock holders ever remove a socket file.
 */
export async function withSocketPathLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  // Abstract sockets are Linux's; elsewhere the race stays (as with most servers).
  if (process.platform !== 'linux') return fn();
  const where = join(await realpath(dirname(path)).catch(() => dirname(path)), basename(path));
  const name = `\0vd-nbd-listen-${createHash('sha256').update(where).digest('hex').slice(0, 40)}`;
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  let lock: Server | undefined;
  while (!lock) {
    lock = await bind(name);
    if (lock) break;
    if (Date.now() > deadline) {
      throw new VdError(
        'ERR_VD_TIMEOUT',
        `cannot listen on ${path}: another vd server has been taking it over for ${LOCK_TIMEOUT_MS / 1000} s`,
        {
          details: { path },
        },
      );
    }
    await sleep(5 + Math.random() * 10);
  }
  try {
    return await fn();
  } finally {
    lock.close();
  }
}

/** The bound lock, or undefined while another process (or server) holds it. */
function bind(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    // Nobody has anything to say to a lock: whoever connects is hung up on.
    const s = createServer((c) => c.destroy());
    s.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(undefined) : reject(err)));
    s.listen(name, () => resolve(s));
  });
}

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
