import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryIo } from '../src/io.js';
import { main } from '../src/main.js';

export interface RunResult {
  code: number;
  stdout: string;
  stdoutBytes: Uint8Array;
  stderr: string;
}

/** Runs `vd <argv>` in-process and captures what it printed. */
export async function vd(...argv: string[]): Promise<RunResult> {
  const io = new MemoryIo();
  const code = await main(argv, io);
  return { code, stdout: io.stdoutText, stdoutBytes: io.stdoutBytes, stderr: io.stderrText };
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-cli-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
