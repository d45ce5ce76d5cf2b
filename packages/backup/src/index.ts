export { type BackupOptions, type BackupProgress, type BackupResult, backup, GRAIN_SIZE } from './backup.js';
export {
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  type Manifest,
  type ManifestBody,
  type PointSource,
  type PointStats,
  parseManifest,
  type Strategy,
  serializeManifest,
} from './manifest.js';
export { openPointDisk, repositoryTransports } from './point-disk.js';
export { alignRanges } from './ranges.js';
export {
  DISK_FILE,
  MANIFEST_FILE,
  PARTIAL_PREFIX,
  POINTS_DIR,
  type PointRef,
  REPOSITORY_FILE,
  Repository,
} from './repository.js';
export { openPoint, type RestoreOptions, type RestoreResult, restore } from './restore.js';
export {
  type BackupSource,
  type Changes,
  DEFAULT_SNAPSHOT_TTL,
  type DiskSourceOptions,
  diskSource,
  type HostSourceOptions,
  hostSource,
  type PreviousPoint,
  type SnapshotHost,
  type SourceFacts,
  type SourceState,
  trackedSource,
} from './sources.js';
export { type PointReport, type VerifyOptions, type VerifyProblem, type VerifyReport, verifyPoint } from './verify.js';
