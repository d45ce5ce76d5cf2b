import { Command, CommanderError, Help } from 'commander';
import { commands } from './commands/index.js';
import type { Context } from './context.js';
import { EXIT_OK, exitCodeFor, formatError, toVdError } from './errors.js';
import { type CliIo, processIo } from './io.js';
import { printJson } from './output.js';
import { VERSION } from './version.js';

/**
 * Builds the `vd` program: every command of `commands/index.ts` with its name, summary and
 * arguments (all `vd --help` shows), and the one `argv` names (`vd NAME …`, `vd help NAME`)
 * complete with options, help and action, its module imported now. The other commands' modules,
 * and what they import, are never loaded.
 */
export async function createProgram(ctx: Context, argv: readonly string[] = []): Promise<Command> {
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
  const optionsLater = new WeakSet<Command>();
  for (const entry of commands) {
    const cmd = program.command(entry.name).description(entry.description);
    for (const [name, description] of entry.arguments ?? []) cmd.argument(name, description);
    if (!entry.subcommands) optionsLater.add(cmd);
  }
  // A command whose module is not loaded has no options yet; list it as `info [options] <disk>` all the same.
  const term = Help.prototype.subcommandTerm;
  program.configureHelp({
    subcommandTerm(cmd) {
      const text = term.call(this, cmd);
      return optionsLater.has(cmd) && cmd.options.length === 0 ? text.replace(cmd.name(), `${cmd.name()} [options]`) : text;
    },
  });
  const named = namedCommand(argv);
  const entry = commands.find((c) => c.name === named);
  if (entry) (await entry.load()).define(program.commands.find((c) => c.name() === entry.name)!, ctx);
  return program;
}

/** The command of a command line: the first word that is not an option (`vd` has none taking a value), or the one after `help`. */
function namedCommand(argv: readonly string[]): string | undefined {
  const i = argv.findIndex((a) => !a.startsWith('-'));
  return argv[i] === 'help' ? argv[i + 1] : argv[i];
}

/**
 * Runs the command line `argv` (without `node` and the script) and resolves to the exit code. It
 * never exits the process and never throws: errors are printed to `io.stderr` as
 * `vd: <message> [ERR_VD_CODE]`, and with `--json` also as `{ "error": ... }` on stdout.
 */
export async function main(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  const ctx: Context = { io, signal: io.signal, exitCode: EXIT_OK, jsonPrinted: false };
  try {
    const program = await createProgram(ctx, argv);
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
