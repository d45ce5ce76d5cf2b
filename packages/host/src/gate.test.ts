import { readSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { file, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers.js';
import { GateSource } from './gate.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

const turns = async (n: number) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('GateSource', () => {
  it('counts a zero-copy send as in flight: pause() waits until its callback settles', async () => {
    const path = join(dir, 'd.img');
    const data = new Uint8Array(65536).map((_, i) => (i * 13) & 0xff);
    await writeFile(path, data);
    const disk = await openDisk(path, { transports: [file()], format: 'raw' });
    const gate = new GateSource(disk);
    let release!: () => void;
    const sending = new Promise<void>((r) => {
      release = r;
    });
    try {
      let got: Uint8Array | undefined;
      const send = gate._withFileSpans(
        0,
        4096,
        async (spans) => {
          got = new Uint8Array(4096);
          readSync(spans[0]!.fd, got, 0, 4096, spans[0]!.position);
          await sending;
          return true;
        },
        {},
      );
      let paused = false;
      const pause = gate.pause().then((resume) => {
        paused = true;
        return resume;
      });
      await turns(20);
      expect(got).toBeDefined();
      expect(paused).toBe(false);
      release();
      expect(await send).toBe(true);
      (await pause)();
      expect(paused).toBe(true);
      expect(Buffer.from(got!).equals(data.subarray(0, 4096))).toBe(true);
    } finally {
      release();
      await disk.close();
    }
  });
});
