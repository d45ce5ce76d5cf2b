export { type ApiAddress, ApiServer, type ApiServerOptions } from './api.js';
export {
  type BitmapChangesOptions,
  bitmapChanges,
  type CallOptions,
  type ChangesOptions,
  HostClient,
  type HostClientOptions,
} from './client.js';
export { checkDiskName, Datastore, HOST_DIR } from './datastore.js';
export {
  type ChangesQuery,
  DiskHost,
  type DiskHostOptions,
  type DiskSummary,
  exportNameOf,
  type SkippedDisk,
  type SnapshotInfo,
  type SnapshotOptions,
} from './host.js';
export { FrozenSource, LiveSource } from './live-source.js';
export { openApiDocument } from './openapi.js';
export { Overlay } from './overlay.js';
export type { DiskRecord, HostState, SnapshotRecord } from './state.js';
