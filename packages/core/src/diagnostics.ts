import * as diagnosticsChannel from 'node:diagnostics_channel';
import { debuglog } from 'node:util';

/**
 * Named `vd:*` diagnostics channels. Subscribers get plain objects; publishing costs nothing
 * when nobody listens (`hasSubscribers` is checked first at the call sites).
 */
export const channels = {
  /** `{ disk, location, transport }` after a disk is opened. */
  open: diagnosticsChannel.channel('vd:disk:open'),
  /** `{ disk }` when a disk is closed or destroyed. */
  close: diagnosticsChannel.channel('vd:disk:close'),
  /** `{ disk, op, offset, length }` before a request reaches the source. */
  requestStart: diagnosticsChannel.channel('vd:request:start'),
  /** `{ disk, op, offset, length, error? }` when it settles. */
  requestEnd: diagnosticsChannel.channel('vd:request:end'),
  /** `{ location, tried, selected }` after `openDisk` chose a transport (or none). */
  select: diagnosticsChannel.channel('vd:transport:select'),
  /** `{ transport, op, attempt, error }` when a transport retries. */
  retry: diagnosticsChannel.channel('vd:retry'),
} as const;

/** `NODE_DEBUG=vd` turns this on. */
export const debug = debuglog('vd');
