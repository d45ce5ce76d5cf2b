import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { access } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Peers' environment: /usr/bin first, so libnbd tools find the system python and libraries. */
export const peerEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' };

/** Runs a peer without blocking the event loop (our own server may live in this process). */
export async function run(cmd: string, args: string[], timeout = 60_000): Promise<{ stdout: string; stderr: string }> {
  return execFileP(cmd, args, { env: peerEnv, timeout, maxBuffer: 64 << 20, encoding: 'utf8' });
}

/** Runs a peer that is expected to fail; resolves with its stderr. */
export async function runFailing(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  try {
    await run(cmd, args, timeout);
  } catch (err) {
    return String((err as { stderr?: string }).stderr ?? err);
  }
  throw new Error(`${cmd} ${args.join(' ')} succeeded where it should have failed`);
}

export interface Daemon {
  child: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts nbdkit or qemu-nbd in the foreground and waits until it writes its pid file, which both
 * do only once they accept connections: the socket file alone appears at bind(), before listen(),
 * and a connect in between is refused.
 */
export async function daemon(cmd: 'nbdkit' | 'qemu-nbd', args: string[], socketPath: string): Promise<Daemon> {
  const pidFile = `${socketPath}.pid`;
  const pidArgs = cmd === 'nbdkit' ? ['-P', pidFile] : [`--pid-file=${pidFile}`];
  const child = spawn(cmd, [...pidArgs, ...args], { env: peerEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  };
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited with ${child.exitCode}: ${stderr}`);
    try {
      await access(pidFile);
      await access(socketPath);
      return { child, stop };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await stop();
  throw new Error(`${cmd} did not listen on ${socketPath} in 10 s: ${stderr}`);
}
