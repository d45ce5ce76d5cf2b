export { type BitmapAreasOptions, changedAreasFromBitmap } from './bitmap-areas.js';
export { ALL_AREAS, formatChangeId, parseChangeId } from './change-id.js';
export { fileFingerprint } from './fingerprint.js';
export {
  type BitmapViewOptions,
  bitmapView,
  changedExtents,
  DEFAULT_BITMAP,
  DIRTY_BITMAP_PREFIX,
  mark,
  queryChangedAreas,
  track,
  trackerOf,
} from './track.js';
export {
  type ChangedArea,
  type ChangedAreas,
  DEFAULT_GRANULARITY,
  DEFAULT_MAX_AREAS,
  type Durability,
  type QueryOptions,
  type ResetReason,
  resetChannel,
  Tracker,
  type TrackerReset,
  type TrackOptions,
} from './tracker.js';
export { type BlockDigests, type DigestOptions, digestBlocks, type VerifyOptions, type VerifyReport, verifyUnchanged } from './verify.js';
