import { afterEach, describe, expect, it } from 'vitest';
import { hasPeer, peerRequired, skipWithoutPeers } from './peers.js';

describe('peers', () => {
  const saved = process.env.VD_REQUIRE_PEERS;
  afterEach(() => {
    if (saved === undefined) delete process.env.VD_REQUIRE_PEERS;
    else process.env.VD_REQUIRE_PEERS = saved;
  });

  it('finds a command that exists and not one that does not', () => {
    expect(hasPeer('sh')).toBe(true);
    expect(hasPeer('vd-no-such-peer-7f3a')).toBe(false);
  });

  it('does not let a peer name reach the shell as code', () => {
    expect(hasPeer('sh; exit 0')).toBe(false);
    expect(hasPeer('$(true)')).toBe(false);
  });

  it('turns a missing peer into a failure only when VD_REQUIRE_PEERS=1', () => {
    process.env.VD_REQUIRE_PEERS = '1';
    expect(peerRequired()).toBe(true);
    expect(skipWithoutPeers('vd-no-such-peer-7f3a')).toBe(false);
    process.env.VD_REQUIRE_PEERS = '0';
    expect(peerRequired()).toBe(false);
    expect(skipWithoutPeers('vd-no-such-peer-7f3a')).toBe(true);
    expect(skipWithoutPeers('sh')).toBe(false);
  });
});
