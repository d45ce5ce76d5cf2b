export { copyDisk } from './copy.js';
export type { CopyChecksum, CopyOptions, CopyProgress, CopyRange, CopyResult } from './options.js';
