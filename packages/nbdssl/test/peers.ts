import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { type Peer, peerEnv, startPeer } from '@vd/conformance/peers';

export { peerEnv };

const execFileP = promisify(execFile);

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

export type Daemon = Peer;

/** nbdkit (with `-f`) or qemu-nbd on `socketPath`, listening once this resolves: `@vd/conformance/peers`. */
export function daemon(cmd: 'nbdkit' | 'qemu-nbd', args: string[], socketPath: string): Promise<Daemon> {
  return startPeer(cmd, args, { socket: socketPath });
}
