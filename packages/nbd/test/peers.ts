import { join } from 'node:path';
import { type Peer, startPeer as start } from '@vd/conformance/peers';
import { afterAll, beforeAll } from 'vitest';
import type { NbdServer } from '../src/index.js';
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

/**
 * For a describe block: `server` listening on a unix socket in a temp dir and on TCP loopback
 * before its tests (after the block's own set-up registered earlier), then closed, `after` run
 * and the dir removed. The returned fields are filled in by then.
 */
export function listenOnBoth(server: NbdServer, after?: () => Promise<void>): { dir: string; unix: string; tcp: string } {
  const out = { dir: '', unix: '', tcp: '' };
  let tmp: { dir: string; cleanup: () => Promise<void> } | undefined;
  beforeAll(async () => {
    tmp = await tempDir();
    out.dir = tmp.dir;
    out.unix = (await server.listen({ path: join(tmp.dir, 's.sock') })).uri;
    out.tcp = (await server.listen({ host: '127.0.0.1', port: 0 })).uri;
  });
  afterAll(async () => {
    await server.close();
    await after?.();
    await tmp?.cleanup();
  });
  return out;
}
