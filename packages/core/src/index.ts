export * from './spec.js';
export { VdError, errorCodes, isVdError, abortError, throwIfAborted, fromSystemError, type VdErrorCode, type VdErrorOptions } from './errors.js';
export { defaultCapabilities, effectiveCapabilities } from './capabilities.js';
export { Disk, type DiskOptions, type ExtentsOptions, type SelectionAttempt } from './disk.js';
export { openDisk, toLocation, type OpenDiskOptions } from './open-disk.js';
export { MemorySource, memoryDisk, type MemorySourceOptions } from './memory.js';
export { RawSource, rawFormat, readFully } from './formats/raw.js';
export { channels, debug } from './diagnostics.js';
export { Limiter } from './limiter.js';
