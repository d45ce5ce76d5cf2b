export type { CommandEntry, Context, DefineCommand } from './context.js';
export { type CliIo, MemoryIo, processIo, type Sink } from './io.js';
export { createProgram, main } from './main.js';
export { formatBytes, parseBytes, parseOffset, parseSize } from './units.js';
