import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hasPeer, peerEnv, peerRequired, skipWithoutPeers, startPeer } from './peers.js';

const exec = promisify(execFile);

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

describe('startPeer', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vd-peers-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs peers with /usr/bin first on PATH', () => {
    expect(peerEnv.PATH?.split(':')[0]).toBe('/usr/bin');
  });

  it.skipIf(skipWithoutPeers('nbdkit', 'nbdinfo'))('starts nbdkit, which answers at its URI at once, and stops it', async () => {
    const socket = join(dir, 'kit.sock');
    const stops: (() => Promise<void>)[] = [];
    const peer = await startPeer('nbdkit', ['-f', '--exit-with-parent', '-U', socket, '-e', 'disk', 'memory', '1M'], {
      socket,
      exportName: 'disk',
      teardown: (stop) => stops.push(stop),
    });
    expect(peer.uri).toBe(`nbd+unix:///disk?socket=${encodeURIComponent(socket)}`);
    expect(stops).toHaveLength(1);
    // Listening as soon as startPeer resolves: the pid file it waited for comes after listen().
    const { stdout } = await exec('nbdinfo', ['--size', peer.uri], { env: peerEnv });
    expect(Number(stdout)).toBe(1 << 20);
    await peer.stop();
    expect(peer.child.exitCode !== null || peer.child.signalCode !== null).toBe(true);
    await stops[0]!(); // a second stop is harmless
  });

  it.skipIf(skipWithoutPeers('qemu-nbd', 'qemu-img', 'nbdinfo'))(
    'starts qemu-nbd, whose only connection is left for the test',
    async () => {
      const image = join(dir, 'q.raw');
      await exec('qemu-img', ['create', '-f', 'raw', image, '2M'], { env: peerEnv });
      const socket = join(dir, 'q.sock');
      // Without --persistent qemu-nbd serves one client: a probe connection would leave none.
      const peer = await startPeer('qemu-nbd', ['-f', 'raw', '-k', socket, image], { socket });
      try {
        const { stdout } = await exec('nbdinfo', ['--size', peer.uri], { env: peerEnv });
        expect(Number(stdout)).toBe(2 << 20);
      } finally {
        await peer.stop();
      }
    },
  );

  it.skipIf(skipWithoutPeers('nbdkit'))('rejects with the stderr of a peer that exits before it listens', async () => {
    const socket = join(dir, 'bad.sock');
    const err = await startPeer('nbdkit', ['-f', '-U', socket, 'vd-no-such-plugin'], { socket }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^nbdkit exited \(exit code [1-9]\d*\) before listening on .*bad\.sock: .*vd-no-such-plugin/s);
  });

  it('rejects, and kills the process, when the peer does not listen in time', async () => {
    const socket = join(dir, 'never.sock');
    const pidOf = join(dir, 'never.pid-of-sleep');
    const script = `echo $$ > '${pidOf}'; echo starting >&2; exec sleep 60`;
    const err = await startPeer('sh', ['-c', script], { socket, timeout: 300 }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/^sh did not listen on .*never\.sock within 300 ms: starting/);
    const pid = Number(await readFile(pidOf, 'utf8'));
    expect(pid).toBeGreaterThan(0);
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
  });

  it('rejects when the command cannot be started', async () => {
    const socket = join(dir, 'none.sock');
    await expect(startPeer('vd-no-such-peer-7f3a', [], { socket })).rejects.toThrow(/vd-no-such-peer-7f3a could not be started: .*ENOENT/);
  });
});
