/**
 * Where a command's output goes. `main()` takes one so tests can run commands in-process and
 * read what they printed; the binary passes the real process streams.
 */
export interface Sink {
  write(chunk: string | Uint8Array): unknown;
}

export interface CliIo {
  stdout: Sink;
  stderr: Sink;
  /** Whether stderr is a terminal: decides between a progress bar and plain progress lines. */
  stderrIsTTY: boolean;
  env: Record<string, string | undefined>;
  /** Aborted on Ctrl-C (SIGINT) or SIGTERM: long commands stop, clean up, and fail with ERR_VD_ABORTED. */
  signal?: AbortSignal | undefined;
  /**
   * Writes raw bytes to stdout and resolves when the sink can take more (backpressure), so
   * `vd dump --format raw` of a large range holds one chunk in memory, not the whole range.
   */
  writeStdout(chunk: Uint8Array): Promise<void>;
}

/** Captures everything written, for tests. */
export class MemoryIo implements CliIo {
  readonly out: Uint8Array[] = [];
  readonly err: string[] = [];
  stderrIsTTY = false;
  env: Record<string, string | undefined> = {};

  readonly stdout: Sink = { write: (c) => this.out.push(typeof c === 'string' ? new TextEncoder().encode(c) : Uint8Array.from(c)) };
  readonly stderr: Sink = { write: (c) => this.err.push(typeof c === 'string' ? c : new TextDecoder().decode(c)) };

  async writeStdout(chunk: Uint8Array): Promise<void> {
    this.stdout.write(chunk);
  }

  get stdoutText(): string {
    return new TextDecoder().decode(Buffer.concat(this.out));
  }

  get stdoutBytes(): Uint8Array {
    return Buffer.concat(this.out);
  }

  get stderrText(): string {
    return this.err.join('');
  }
}

export function processIo(): CliIo {
  const stdout = process.stdout;
  return {
    stdout,
    stderr: process.stderr,
    stderrIsTTY: process.stderr.isTTY === true,
    env: process.env,
    // Resolves once the chunk is handed to the OS: one chunk in memory at a time.
    writeStdout: (chunk) => new Promise((resolve, reject) => stdout.write(chunk, (err) => (err ? reject(err) : resolve()))),
  };
}
