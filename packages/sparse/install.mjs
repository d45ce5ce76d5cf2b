// Builds the addon with node-gyp. The package is optional: when no compiler or Node headers are
// at hand, say so and succeed, and @vd/core serves files without hole support.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

const args = ['rebuild'];
// A distribution's Node ships its headers beside the binary (/usr/include/node); use them rather
// than downloading a tarball, which fails offline.
const prefix = dirname(dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'common.gypi'))) args.push(`--nodedir=${prefix}`);

const gyp = process.env.npm_config_node_gyp;
const [cmd, argv] = gyp ? [process.execPath, [gyp, ...args]] : ['node-gyp', args];
const run = spawnSync(cmd, argv, { stdio: 'inherit', shell: !gyp && process.platform === 'win32' });
if (run.status !== 0) {
  const why = run.error ? run.error.message : `exit ${run.status ?? run.signal}`;
  console.warn(`@vd/sparse: native build failed (${why}); vd will work without sparse-file support`);
}
