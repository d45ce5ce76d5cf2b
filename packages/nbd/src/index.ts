export { DEFAULT_BUSY_POLL } from './client/busy-poll.js';
export {
  connectionLost,
  type ExportInfo,
  type HandshakeOptions,
  listExports,
  type NbdClientTls,
  NbdConnection,
} from './client/connection.js';
export { type NbdClientConnection, type NbdClientOptions, NbdClientSource } from './client/source.js';
export { type NbdTransportOptions, nbd } from './client/transport.js';
export { formatNbdUri, NBD_PORT, type NbdTarget, parseFlag, parseNbdUri, queryFlag } from './client/uri.js';
export { WorkerConnection, workerConnector } from './client/worker-connection.js';
export type { WorkerUpgrade, WorkerUpgradeFn } from './client/worker-protocol.js';
export { builtModule, setWorkerIdleTime, workersAvailable, workersWanted, workerThreadStats } from './client/worker-threads.js';
export { extentFlags, extentType } from './contexts.js';
export { fromErrno, toErrno } from './errno.js';
export * as protocol from './protocol.js';
export { DEFAULT_CLIENT_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT } from './protocol.js';
export { type ReadInto, readInto } from './read-into.js';
export type { NbdExport, NbdServerLimits, NbdServerOptions, NbdServerStats, NbdServerTls } from './server/options.js';
export { type ListenOptions, NbdServer, type NbdServerAddress } from './server/server.js';
