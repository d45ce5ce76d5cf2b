import type { RegisterCommand } from '../context.js';
import { registerDump } from './dump.js';
import { registerInfo } from './info.js';
import { registerMap } from './map.js';

/**
 * Every `vd` command, in the order `vd --help` lists them. A new command is one file in this
 * directory exporting a `register<Name>(program, ctx)` function, plus one line here.
 */
export const commands: readonly RegisterCommand[] = [registerInfo, registerMap, registerDump];
