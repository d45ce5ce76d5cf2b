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

/** Completes a command the program has named: its options, help text and action. */
export type DefineCommand = (cmd: Command, ctx: Context) => void;

/**
 * One command as `vd --help` lists it, and the module that defines the rest. Only the module of
 * the command that runs is imported (see `commands/index.ts`).
 */
export interface CommandEntry {
  readonly name: string;
  readonly description: string;
  /** `[name, description]`: `<required>`, `[optional]`, `<many...>`. */
  readonly arguments?: readonly (readonly [string, string])[];
  /** It has subcommands (`vd cert init`) rather than options of its own. */
  readonly subcommands?: boolean;
  readonly load: () => Promise<{ define: DefineCommand }>;
}
