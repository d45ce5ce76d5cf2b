import { type Peer, startPeer as start } from '@vd/conformance/peers';

export type { Peer };

/**
 * Starts nbdkit or qemu-nbd on the unix socket `sock` and resolves once it listens (its pid file
 * `pidFile`, which `args` already ask for, and the socket exist): `@vd/conformance/peers`.
 */
export function startPeer(cmd: string, args: string[], sock: string, pidFile: string, exportName = ''): Promise<Peer> {
  return start(cmd, args, { socket: sock, pidFile, exportName });
}
