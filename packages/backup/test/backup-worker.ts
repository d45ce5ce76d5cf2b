// Runs one backup of a file into a repository, printing a line per progress event, for the kill test.
import { file, openDisk } from '@vd/core';
import { backup, diskSource } from '../src/index.js';

const [image, repo] = process.argv.slice(2) as [string, string];
const disk = await openDisk(image, { readOnly: true, transports: [file()] });
const r = await backup(repo, diskSource(disk), {
  inFlight: 1,
  progressInterval: 0,
  onProgress: (p) => process.stdout.write(`progress ${p.bytesDone}\n`),
});
process.stdout.write(`done ${r.point}\n`);
