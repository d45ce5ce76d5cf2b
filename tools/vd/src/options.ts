import { isVdError, VdError } from '@vd/core';
import { InvalidArgumentError, Option } from 'commander';
import { parseDuration, parseOffset, parseSize } from './units.js';

/**
 * Wraps a value parser for commander: ours throw ERR_VD_USAGE, commander wants
 * InvalidArgumentError so its message names the option. Both end as exit code 2.
 */
export function argParser<T>(parse: (text: string, what: string) => T, what: string): (text: string) => T {
  return (text) => {
    try {
      return parse(text, what);
    } catch (err) {
      if (isVdError(err, 'ERR_VD_USAGE')) throw new InvalidArgumentError(err.message);
      throw err;
    }
  };
}

/** The options several commands share, so they parse and read the same everywhere. */
export const jsonOption = () => new Option('--json', 'print one JSON document on stdout');
export const offsetOption = (description = 'start of the range (default 0)') =>
  new Option('--offset <bytes>', description).argParser(argParser(parseOffset, 'offset')).default(0, '0');
export const lengthOption = (description = 'length of the range (default: to the end of the disk)') =>
  new Option('--length <bytes>', description).argParser(argParser(parseSize, 'length'));
export const sizeOption = (description = 'size of the disk, e.g. 4G') =>
  new Option('--size <bytes>', description).argParser(argParser(parseSize, 'size'));
/** A snapshot's lease on a vd host, in seconds (`vd snapshot create/renew`, `vd backup`). */
export const leaseOption = (description: string) =>
  new Option('--lease <duration>', description).argParser(argParser(parseDuration, 'lease'));

/**
 * The range `[offset, offset + length)` of a disk, `length` defaulting to the rest of it; a range
 * reaching past the end is ERR_VD_OUT_OF_RANGE before any output is printed.
 */
export function checkRange(size: number, offset: number, length: number | undefined): { offset: number; length: number } {
  if (offset > size || (length !== undefined && offset + length > size)) {
    const end = length === undefined ? offset : offset + length;
    throw new VdError('ERR_VD_OUT_OF_RANGE', `range ends at ${end}, past the end of the disk (${size} bytes)`, {
      details: { offset, length, size },
    });
  }
  return { offset, length: length ?? size - offset };
}
