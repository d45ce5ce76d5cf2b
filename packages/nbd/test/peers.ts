import { join } from 'node:path';
import { type Peer, startPeer as start } from '@vd/conformance/peers';
import { afterAll, beforeAll } from 'vitest';
import { tempDir } from './helpers.js';

export type { Peer };

/**
 * Starts nbdkit or qemu-nbd on the unix socket `sock` and resolves once it listens (its pid file
 * `pidFile`, which `args` already ask for, and the socket exist): `@vd/conformance/peers`.
 */
export function startPeer(cmd: string, args: string[], sock: string, pidFile: string, exportName = ''): Promise<Peer> {
  return start(cmd, args, { socket: sock, pidFile, exportName });
}

/**
 * For a describe block: a temp dir, made before its tests and removed after them, and `nbdkit
 * file` exports of files in it on unix sockets, stopped after them too.
 */
export function nbdkitScratch(): { dir: () => string; fileExport: (path: string) => Promise<Peer> } {
  let tmp: { dir: string; cleanup: () => Promise<void> } | undefined;
  const peers: Peer[] = [];
  beforeAll(async () => {
    tmp = await tempDir();
  });
  afterAll(async () => {
    for (const p of peers.splice(0)) p.stop();
    await tmp?.cleanup();
  });
  const dir = () => tmp!.dir;
  return {
    dir,
    async fileExport(path) {
      const n = peers.length;
      const sock = join(dir(), `nbdkit${n}.sock`);
      const pid = join(dir(), `nbdkit${n}.pid`);
      const peer = await startPeer('nbdkit', ['-f', '-U', sock, '-P', pid, 'file', path], sock, pid);
      peers.push(peer);
      return peer;
    },
  };
}
