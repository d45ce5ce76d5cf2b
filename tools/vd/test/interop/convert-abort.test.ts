import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers, startPeer } from '@vd/conformance/peers';
import { describe, expect, it, onTestFinished } from 'vitest';
import { MemoryIo } from '../../src/io.js';
import { main } from '../../src/main.js';
import { withTempDir } from '../run.js';

/** Ctrl-C during `vd convert` from an NBD server whose reads take a minute each. */
describe.skipIf(skipWithoutPeers('nbdkit'))('vd convert, interrupted while reads wait at a slow NBD server', () => {
  it('stops at once with ERR_VD_ABORTED and removes the half-made target', async () => {
    await withTempDir(async (dir) => {
      const socket = join(dir, 'slow.sock');
      const kit = await startPeer('nbdkit', ['-f', '--exit-with-parent', '--filter=delay', '-U', socket, 'pattern', '16M', 'rdelay=60'], {
        socket,
        teardown: onTestFinished,
      });
      const target = join(dir, 'copy.raw');
      const stop = new AbortController();
      const io = Object.assign(new MemoryIo(), { signal: stop.signal });
      // Every read is at the server, sleeping, when the interrupt comes.
      const interrupt = setTimeout(() => stop.abort(new Error('interrupted by SIGINT')), 1000);
      const run = main(['convert', kit.uri, target], io);
      // A convert that waited for its reads would take a minute: fail rather than wait for it.
      let hang: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<string>((resolve) => {
        hang = setTimeout(() => resolve('vd convert waited for the stalled reads'), 30_000);
      });
      const code = await Promise.race([run, stalled]);
      clearTimeout(hang);
      clearTimeout(interrupt);
      expect(code, io.stderrText).toBe(1);
      expect(io.stderrText).toMatch(/^vd: .*aborted.* \[ERR_VD_ABORTED\]$/m);
      await expect(access(target)).rejects.toThrow();
    });
  });
});
