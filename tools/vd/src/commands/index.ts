import type { RegisterCommand } from '../context.js';
import { registerCert } from './cert.js';
import { registerCmp } from './cmp.js';
import { registerConvert } from './convert.js';
import { registerCreate } from './create.js';
import { registerDemo } from './demo.js';
import { registerDump } from './dump.js';
import { registerInfo } from './info.js';
import { registerMap } from './map.js';

/**
 * Every `vd` command, in the order `vd --help` lists them. A new command is one file in this
 * directory exporting a `register<Name>(program, ctx)` function, plus one line here.
 */
// biome-ignore format: one command per line, so adding one is a one-line change that merges cleanly
export const commands: readonly RegisterCommand[] = [
  registerInfo,
  registerCreate,
  registerConvert,
  registerMap,
  registerDump,
  registerCmp,
  registerDemo,
  registerCert,
];
