import { createRequire } from 'node:module';

/** The CLI's version, read from its package.json (one place for that fact). */
export const VERSION: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;
