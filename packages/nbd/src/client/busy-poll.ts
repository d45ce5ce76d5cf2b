import { performance } from 'node:perf_hooks';
import { VdError } from '@vd/core';

/** `HandshakeOptions.busyPoll` on a plain unix socket, in microseconds. */
export const DEFAULT_BUSY_POLL = 500;

let until = 0;
let spinning = false;

function tick(): void {
  if (performance.now() < until) setImmediate(tick);
  else spinning = false;
}

/**
 * Keeps this thread's event loop polling its sockets for at least `us` more microseconds instead
 * of sleeping in epoll. Over a unix socket the server queues no more than its send buffer (208 KiB
 * by default) before it blocks until the client drains it, so a large read is thousands of
 * hand-offs: the client drains, sleeps, the server refills and wakes it. Where a sleeping CPU is
 * slow to wake (a VM whose idle vCPUs halt at once), each wake-up stalls both sides. A pending
 * immediate makes libuv poll with a zero timeout, so the loop keeps turning, serving everything
 * else as usual, until a quiet spell of that length ends it.
 */
export function keepPolling(us: number): void {
  const end = performance.now() + us / 1000;
  if (end > until) until = end;
  if (!spinning) {
    spinning = true;
    setImmediate(tick);
  }
}

/**
 * How long a connection polls (`HandshakeOptions.busyPoll`, microseconds): the option, else
 * `VD_NBD_BUSY_POLL`, else `DEFAULT_BUSY_POLL` on a plain unix socket and 0 elsewhere.
 */
export function busyPollFor(option: number | undefined, plainUnix: boolean): number {
  const env = process.env.VD_NBD_BUSY_POLL;
  const us = option ?? (env ? Number(env) : plainUnix ? DEFAULT_BUSY_POLL : 0);
  if (!Number.isFinite(us) || us < 0) {
    const given = option === undefined ? `VD_NBD_BUSY_POLL=${env}` : `busyPoll ${option}`;
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `${given} is not a number of microseconds >= 0 (0 turns polling off)`, {
      details: { busyPoll: option ?? env },
    });
  }
  return us;
}

/** Whether the loop is polling now (for tests). */
export function polling(): boolean {
  return spinning;
}
