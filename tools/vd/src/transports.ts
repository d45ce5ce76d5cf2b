import { defaultFormats, type FormatDriver, file, type Transport, vmdkFormat } from '@vd/core';
import { nbd } from '@vd/nbd';
import { nbdssl } from '@vd/nbdssl';

/**
 * The formats the CLI reads, detected in this order (raw accepts anything, so it stays last).
 * Deduplicated by name so core adding a driver to `defaultFormats` changes nothing here.
 */
export const formats: readonly FormatDriver[] = [vmdkFormat, ...defaultFormats].filter(
  (f, i, all) => all.findIndex((g) => g.name === f.name) === i,
);

/** Formats `vd create` and `vd convert` can write: those whose driver can lay out a new disk. */
export const creatableFormats: readonly string[] = formats.filter((f) => typeof f.create === 'function').map((f) => f.name);

/**
 * The transports `vd` tries, in order, for every disk argument: the one list in the CLI. To add
 * a transport, import its factory and append it here (e.g. `nbd()` for `nbd://` URIs); every
 * command then accepts its URIs, and `vd info` shows which one was selected and why others were
 * skipped.
 */
export function transports(): Transport[] {
  return [file({ formats }), nbdssl(), nbd()];
}
