import { type ChildProcess, spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import { peerEnv } from './helpers.js';

export interface Peer {
  child: ChildProcess;
  uri: string;
  stop(): Promise<void>;
}

/**
 * Starts an NBD server process listening on the unix socket `sock` and waits until it writes
 * `pidFile`, which both nbdkit (`-P`) and qemu-nbd (`--pid-file`) do once they accept connections.
 * (Probing the socket would use up qemu-nbd's single connection.)
 */
export async function startPeer(cmd: string, args: string[], sock: string, pidFile: string, exportName = ''): Promise<Peer> {
  const child = spawn(cmd, args, { env: peerEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited early: ${stderr}`);
    try {
      await access(pidFile);
      await access(sock);
      break;
    } catch {
      if (i > 400) {
        child.kill('SIGKILL');
        throw new Error(`${cmd} did not create ${sock}: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  return {
    child,
    uri: `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(sock)}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}
