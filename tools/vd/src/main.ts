import { Command, CommanderError } from 'commander';
import { commands } from './commands/index.js';
import type { Context } from './context.js';
import { EXIT_OK, exitCodeFor, formatError, toVdError } from './errors.js';
import { type CliIo, processIo } from './io.js';
import { printJson } from './output.js';
import { VERSION } from './version.js';

/** Builds the `vd` program with every command in `commands/index.ts` registered on it. */
export function createProgram(ctx: Context): Command {
  const program = new Command('vd')
    .description('vd: inspect, create, copy and compare virtual disks')
    .version(VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => ctx.io.stdout.write(s),
      writeErr: (s) => ctx.io.stderr.write(s),
      // Usage errors are printed by main() in the one `vd: message [CODE]` shape.
      outputError: () => {},
    })
    .addHelpText(
      'after',
      `
Disks are paths or URIs (file:///var/lib/disk.img). Sizes and offsets take bytes or a binary
suffix: 4096, 0x1000, 512K, 64M, 4G, 1.5T (1K = 1024). Exit status: 0 ok, 1 failure, 2 usage.
Set VD_DEBUG=1 for stack traces.`,
    );
  // Subcommands created by `program.command()` inherit exitOverride and configureOutput.
  for (const register of commands) register(program, ctx);
  return program;
}

/**
 * Runs the command line `argv` (without `node` and the script) and resolves to the exit code. It
 * never exits the process and never throws: errors are printed to `io.stderr` as
 * `vd: <message> [ERR_VD_CODE]`, and with `--json` also as `{ "error": ... }` on stdout.
 */
export async function main(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  const ctx: Context = { io, signal: io.signal, exitCode: EXIT_OK, jsonPrinted: false };
  try {
    const program = createProgram(ctx);
    // `vd` alone is `vd --help`.
    if (argv.length === 0) {
      program.outputHelp();
      return EXIT_OK;
    }
    await program.parseAsync([...argv], { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    // --help and --version arrive as "errors" with exit code 0.
    if (err instanceof CommanderError && err.exitCode === 0) return EXIT_OK;
    const e = toVdError(err);
    io.stderr.write(formatError(e, io.env.VD_DEBUG === '1'));
    if (argv.includes('--json') && !ctx.jsonPrinted) printJson(ctx, { error: e.toJSON() });
    return exitCodeFor(e);
  }
}
