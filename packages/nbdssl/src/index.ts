// The worker threads are @vd/nbd's; re-exported so a TLS user need not import both packages.
export { setWorkerIdleTime, WorkerConnection, workerThreadStats } from '@vd/nbd';
export {
  type CertificateOptions,
  type CertificatePair,
  type CertificateSummary,
  defaultServerHosts,
  describeCertificate,
  generateCa,
  generateClientCertificate,
  generateServerCertificate,
  type ServerCertificateOptions,
} from './certs.js';
export { type ClientTlsOptions, type ClientTlsResult, clientUpgrade, startTlsClient } from './client-tls.js';
export { type CreatePkiOptions, caPair, createPki, loadPki, type Pki, pkiFiles, type WritePkiOptions, writePki } from './pki.js';
export { loadPskFile, type PskKey, type PskTable, parsePskFile, pickPsk } from './psk.js';
export {
  defaultPkiDir,
  describeServerPki,
  type EnsuredPki,
  ensureServerPki,
  type NbdTlsServerOptions,
  nbdServerTls,
  tlsUri,
  wrap,
} from './server.js';
export { type ClientIdentity, ServerTls, type ServerTlsOptions, serverTlsFromPki, type TlsMode } from './server-tls.js';
export {
  formatThumbprint,
  parseThumbprint,
  sameThumbprint,
  type Thumbprint,
  type ThumbprintAlgorithm,
  thumbprintOf,
} from './thumbprint.js';
export { handshakeError, type TlsFailure, tlsError } from './tls-error.js';
export { workerConnector, workersAvailable } from './tls-workers.js';
export { clientTlsFor, type NbdsslOptions, nbdssl } from './transport.js';
export { checkThumbprintOption, type PeerIdentity, type PeerVerification, verifyServer } from './verify.js';
