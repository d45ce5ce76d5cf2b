/** On-disk constants of VMDK and ESXi redo logs (see shared/reference/formats.md §1). */

export const SECTOR = 512;

/** 'KDMV' on disk: the hosted sparse extent header, read as a little-endian u32. */
export const SPARSE_MAGIC = 0x564d444b;
/** 'COWD' on disk: the ESX vmfsSparse redo-log header. */
export const COWD_MAGIC = 0x44574f43;
/** seSparse constant header magic (u64, top half zero). */
export const SESPARSE_MAGIC = 0xcafebabe;
export const SESPARSE_VOLATILE_MAGIC = 0xcafecafe;

export const FLAG_NEWLINE_TEST = 0x1;
export const FLAG_REDUNDANT_GD = 0x2;
export const FLAG_ZEROED_GTE = 0x4;
export const FLAG_COMPRESSED = 0x10000;
export const FLAG_MARKERS = 0x20000;
/** The high 16 flag bits are incompatible features: one we do not know means we cannot read the file. */
export const INCOMPATIBLE_MASK = 0xffff0000;
export const KNOWN_INCOMPATIBLE = FLAG_COMPRESSED | FLAG_MARKERS;

export const COMPRESS_NONE = 0;
export const COMPRESS_DEFLATE = 1;

/** The only grain-table size the spec, VMware and qemu use; anything else is refused. */
export const GTES_PER_GT = 512;
/** Grain table entry 1 in a v2+ extent with FLAG_ZEROED_GTE: reads as zeroes, hides the parent. */
export const GTE_ZEROED = 1;

/** Sectors reserved for an embedded descriptor, as VMware and qemu write it. */
export const EMBEDDED_DESCRIPTOR_SECTORS = 20;
/** Default grain: 128 sectors = 64 KiB. */
export const DEFAULT_GRAIN_SECTORS = 128;
/** Largest grain accepted (32 MiB): bounds the buffer one grain read may need. */
export const MAX_GRAIN_SECTORS = 65536;
/** Hosted sparse pointers are u32 sectors: an extent file cannot exceed 2 TiB. */
export const MAX_SPARSE_SECTORS = 2 ** 32;
/** Largest descriptor read (embedded or separate): real ones are a few hundred bytes. */
export const MAX_DESCRIPTOR_BYTES = 1 << 20;
/** VMware's split size for twoGbMaxExtent* (2047 MiB); qemu uses 2 GiB, both legal. */
export const SPLIT_EXTENT_SECTORS = 4192256;

export const CID_NOPARENT = 0xffffffff;
/** ESXi stamps base disks with this; it is "no particular content", never a parent link. */
export const CID_UNSET = 0xfffffffe;

export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

/** Sector value meaning "grain directory is in the footer" (streamOptimized). */
export const GD_AT_END = 0xffffffffffffffffn;

/** Longest chain followed before it is declared a loop. */
export const MAX_CHAIN_DEPTH = 255;
