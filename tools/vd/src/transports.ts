import type { Transport } from '@vd/core';
import { file } from './file-shim.js';

/**
 * The transports `vd` tries, in order, for every disk argument: the one list in the CLI. To add
 * a transport, import its factory and append it here (e.g. `nbd()` for `nbd://` URIs); every
 * command then accepts its URIs, and `vd info` shows which one was selected and why others were
 * skipped.
 */
export function transports(): Transport[] {
  return [file()];
}
