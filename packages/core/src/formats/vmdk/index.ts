export { type Descriptor, type DescriptorExtent, parseDescriptor, serializeDescriptor } from './descriptor.js';
export { encodeSparseHeader, parseSparseHeader, type SparseHeader } from './header.js';
export { type ChainEntry, diskParent, type ParentLink, subformatOf, VmdkSource } from './link.js';
export { detectVmdk, openVmdk, openVmdkStore, readDescriptor, type VmdkOpenOptions, vmdkFormat } from './open.js';
