import { fromSystemError, isVdError, VdError } from '@vd/core';
import { CommanderError } from 'commander';

/** Exit codes: 0 ok, 1 the operation failed (or the answer is "no", as for `vd cmp`), 2 bad usage. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export function usageError(message: string, details?: Record<string, unknown>): VdError {
  return new VdError('ERR_VD_USAGE', message, details ? { details } : {});
}

/**
 * Anything thrown while running a command, as a VdError: commander's own usage errors become
 * ERR_VD_USAGE, Node system errors get their mapped code, anything else (a bug) ERR_VD_IO.
 */
export function toVdError(err: unknown): VdError {
  if (isVdError(err)) return err;
  if (err instanceof CommanderError) {
    return new VdError('ERR_VD_USAGE', err.message.replace(/^error: /, ''), { cause: err, details: { commander: err.code } });
  }
  return fromSystemError(err, 'unexpected error');
}

export function exitCodeFor(err: VdError): number {
  return err.code === 'ERR_VD_USAGE' ? EXIT_USAGE : EXIT_FAILURE;
}

/** `vd: <message> [ERR_VD_CODE]` (then any further lines of the message); with VD_DEBUG=1 also the stack and every cause. */
export function formatError(err: VdError, debug: boolean): string {
  // The code goes on the first line, so `vd: ... [ERR_VD_X]` is one greppable line; the rest of
  // a multi-line message (openDisk's list of transports tried) follows it.
  const nl = err.message.indexOf('\n');
  const first = (nl < 0 ? err.message : err.message.slice(0, nl)).replace(/:$/, '');
  let text = `vd: ${first} [${err.code}]\n${nl < 0 ? '' : `${err.message.slice(nl + 1)}\n`}`;
  if (err.code === 'ERR_VD_USAGE' && !err.message.includes('--help')) text += `vd: see 'vd --help' or 'vd <command> --help'\n`;
  if (debug) {
    let e: unknown = err;
    while (e) {
      text += `${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`;
      if (isVdError(e) && Object.keys(e.details).length > 0) text += `details: ${safeJson(e.details)}\n`;
      e = e instanceof Error ? e.cause : undefined;
      if (e) text += 'caused by: ';
    }
  }
  return text;
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}
