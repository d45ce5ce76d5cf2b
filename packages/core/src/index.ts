export { BufferPool } from './buffer-pool.js';
export { defaultCapabilities, effectiveCapabilities, readOnlyCapabilities } from './capabilities.js';
export { type CopyChecksum, type CopyOptions, type CopyProgress, type CopyRange, type CopyResult, copyDisk } from './copy/index.js';
export { type CreateDiskOptions, createDisk } from './create.js';
export { channels, debug } from './diagnostics.js';
export { Disk, type DiskOptions, type ExtentsOptions, type SelectionAttempt } from './disk.js';
export {
  abortError,
  errorCodes,
  fromSystemError,
  isVdError,
  throwIfAborted,
  VdError,
  type VdErrorCode,
  type VdErrorOptions,
} from './errors.js';
export { renderErrorTable } from './errors-doc.js';
export { RawSource, rawFormat, readFully } from './formats/raw.js';
export * from './formats/vmdk/index.js';
export { Limiter } from './limiter.js';
export { MemorySource, type MemorySourceOptions, memoryDisk } from './memory.js';
export { type OpenDiskOptions, openDisk, toLocation } from './open-disk.js';
export { processAlive } from './process-alive.js';
export * from './spec.js';
export { fileResolver } from './stores/file-resolver.js';
export { FileStore, type FileStoreOptions } from './stores/file-store.js';
export { loadSparseAddon, type SparseAddon } from './stores/sparse.js';
export { defaultFormats, type FileTransportOptions, file } from './transports/file.js';
