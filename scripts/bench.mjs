#!/usr/bin/env node
// `pnpm bench [name...]`: runs bench/<name>.mjs (all of them without a name), one after another so
// they do not compete for the two cores. Each prints ours, the peer's, and the ratio.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'bench');
const all = readdirSync(dir)
  .filter((f) => f.endsWith('.mjs') && !f.startsWith('_'))
  .map((f) => f.slice(0, -4))
  .sort();
const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const unknown = wanted.filter((w) => !all.includes(w));
if (unknown.length > 0) {
  console.error(`vd bench: no benchmark named ${unknown.join(', ')}; have: ${all.join(', ')}`);
  process.exit(2);
}
let status = 0;
for (const name of wanted.length > 0 ? wanted : all) {
  console.log(`\n## bench ${name}`);
  const r = spawnSync(process.execPath, [join(dir, `${name}.mjs`)], {
    stdio: 'inherit',
    env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` },
  });
  if (r.status !== 0) status = 1;
}
process.exit(status);
