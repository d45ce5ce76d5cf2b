export { type CheckOptions, type CheckProblem, type CheckReport, checkVmdk } from './check.js';
export {
  createChild,
  createOptionsFrom,
  createVmdk,
  createVmdkIn,
  VMDK_ADAPTERS,
  VMDK_SUBFORMATS,
  type VmdkAdapter,
  type VmdkCreateOptions,
  type VmdkSubformat,
} from './create.js';
export { type Descriptor, type DescriptorExtent, parseDescriptor, serializeDescriptor } from './descriptor.js';
export { encodeSparseHeader, parseSparseHeader, type SparseHeader } from './header.js';
export { type ChainEntry, diskParent, type ParentLink, subformatOf, VmdkSource } from './link.js';
export { readVmdkMetadata, writeVmdkMetadata } from './metadata.js';
export { detectVmdk, openVmdk, openVmdkStore, readDescriptor, type VmdkOpenOptions, vmdkFormat } from './open.js';
export { type StreamSink, type StreamWriteOptions, type StreamWriteResult, storeSink, writeStreamOptimized } from './stream-writer.js';
