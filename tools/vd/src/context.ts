import type { Command } from 'commander';
import type { CliIo } from './io.js';

/** What every command gets besides its parsed arguments. */
export interface Context {
  readonly io: CliIo;
  /** Pass to every long operation: aborted on Ctrl-C. */
  readonly signal: AbortSignal | undefined;
  /**
   * The exit code when the command returns normally. A command that ran fine but has a negative
   * answer (`vd cmp`: the disks differ) sets 1; failures throw instead.
   */
  exitCode: number;
  /** Set once a JSON document went to stdout, so an error afterwards does not print a second one. */
  jsonPrinted: boolean;
}

/** One command: a function that adds itself (name, arguments, options, help, action) to the program. */
export type RegisterCommand = (program: Command, ctx: Context) => void;
