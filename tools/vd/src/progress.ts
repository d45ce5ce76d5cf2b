import { createRequire } from 'node:module';
import type { Context } from './context.js';
import { formatBytes, formatRate } from './units.js';

/** Receives how many bytes of `total` are done; `stop()` once at the end. */
export interface Progress {
  update(done: number): void;
  stop(): void;
}

const NONE: Progress = { update() {}, stop() {} };

/** How often a non-terminal gets a plain progress line. */
const PLAIN_INTERVAL_MS = 2000;

/**
 * `--progress`: a bar on a terminal (cli-progress, redrawn in place on stderr); on anything else
 * (a CI log, a file) a plain line every two seconds and one at the end, so logs stay readable.
 * Progress never goes to stdout, which belongs to the command's result.
 */
export function createProgress(ctx: Context, opts: { enabled: boolean; total: number; label: string }): Progress {
  if (!opts.enabled) return NONE;
  const started = Date.now();
  if (ctx.io.stderrIsTTY) {
    // Loaded here, on a terminal only: most runs (scripts, CI, --json) never draw a bar.
    const { Presets, SingleBar } = createRequire(import.meta.url)('cli-progress') as typeof import('cli-progress');
    const bar = new SingleBar(
      {
        stream: ctx.io.stderr as NodeJS.WritableStream,
        format: `${opts.label} [{bar}] {percentage}% | {doneText} / {totalText} | {rate} | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 50,
      },
      Presets.shades_classic,
    );
    const fields = (done: number) => ({
      doneText: formatBytes(done),
      totalText: formatBytes(opts.total),
      rate: formatRate(done, (Date.now() - started) / 1000),
    });
    bar.start(Math.max(opts.total, 1), 0, fields(0));
    return {
      update: (done) => bar.update(done, fields(done)),
      stop: () => bar.stop(),
    };
  }
  let last = started;
  let latest = 0;
  const line = (done: number) => {
    const pct = opts.total > 0 ? Math.floor((done / opts.total) * 100) : 100;
    const secs = (Date.now() - started) / 1000;
    ctx.io.stderr.write(`${opts.label}: ${pct}% (${formatBytes(done)} of ${formatBytes(opts.total)}, ${formatRate(done, secs)})\n`);
  };
  return {
    update(done) {
      latest = done;
      const now = Date.now();
      if (now - last >= PLAIN_INTERVAL_MS) {
        last = now;
        line(done);
      }
    },
    stop() {
      line(latest);
    },
  };
}
