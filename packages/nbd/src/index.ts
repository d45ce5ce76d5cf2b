export { extentFlags, extentType } from './contexts.js';
export { fromErrno, toErrno } from './errno.js';
export * as protocol from './protocol.js';
export type { NbdExport, NbdServerLimits, NbdServerOptions, NbdServerTls } from './server/options.js';
export { type ListenOptions, NbdServer, type NbdServerAddress } from './server/server.js';
