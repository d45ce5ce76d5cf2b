import { execFileSync } from 'node:child_process';

/**
 * Helpers for interop tests against real peers (qemu-img, nbdkit, libnbd tools). A missing peer
 * skips the test on a developer machine; with `VD_REQUIRE_PEERS=1` (set in CI) the test runs and
 * fails loudly instead, so CI can never pass by skipping.
 */

const found = new Map<string, boolean>();

/** True when `cmd` is on PATH. The name is passed as an argument, never spliced into shell text. */
export function hasPeer(cmd: string): boolean {
  let ok = found.get(cmd);
  if (ok === undefined) {
    try {
      execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' });
      ok = true;
    } catch {
      ok = false;
    }
    found.set(cmd, ok);
  }
  return ok;
}

/** True when missing peers must fail tests rather than skip them (`VD_REQUIRE_PEERS=1`). */
export function peerRequired(): boolean {
  return process.env.VD_REQUIRE_PEERS === '1';
}

/**
 * For `describe.skipIf(skipWithoutPeers('qemu-img', 'qemu-nbd'))`: true when a peer is missing
 * and peers are not required.
 */
export function skipWithoutPeers(...cmds: string[]): boolean {
  return !peerRequired() && !cmds.every(hasPeer);
}
