import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { processAlive } from './process-alive.js';

describe('processAlive', () => {
  it('is true for a running process and false once it has exited', async () => {
    expect(processAlive(process.pid)).toBe(true);
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
    await once(child, 'spawn');
    const pid = child.pid!;
    expect(processAlive(pid)).toBe(true);
    child.kill('SIGKILL');
    await once(child, 'exit'); // reaped by Node, so the pid no longer names a process
    expect(processAlive(pid)).toBe(false);
  });

  it('is false for what cannot be a pid (0 and negatives would signal process groups)', () => {
    for (const pid of [0, -1, 1.5, Number.NaN, 2 ** 53]) expect(processAlive(pid)).toBe(false);
  });
});
