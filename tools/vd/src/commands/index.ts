import type { RegisterCommand } from '../context.js';
import { registerBackup } from './backup.js';
import { registerCert } from './cert.js';
import { registerChanges } from './changes.js';
import { registerCheck } from './check.js';
import { registerCmp } from './cmp.js';
import { registerConvert } from './convert.js';
import { registerCreate } from './create.js';
import { registerCreateChild } from './create-child.js';
import { registerDemo } from './demo.js';
import { registerDump } from './dump.js';
import { registerInfo } from './info.js';
import { registerMap } from './map.js';
import { registerMeta } from './meta.js';
import { registerRestore } from './restore.js';
import { registerServe } from './serve.js';
import { registerSnapshot } from './snapshot.js';
import { registerVerify } from './verify.js';

/**
 * Every `vd` command, in the order `vd --help` lists them. A new command is one file in this
 * directory exporting a `register<Name>(program, ctx)` function, plus one line here.
 */
// biome-ignore format: one command per line, so adding one is a one-line change that merges cleanly
export const commands: readonly RegisterCommand[] = [
  registerInfo,
  registerCreate,
  registerCreateChild,
  registerConvert,
  registerMeta,
  registerCheck,
  registerMap,
  registerDump,
  registerCmp,
  registerDemo,
  registerCert,
  registerServe,
  registerSnapshot,
  registerChanges,
  registerBackup,
  registerRestore,
  registerVerify,
];
