/** First byte at or after `position` that holds data, or -1 when none does (ENXIO). */
export declare function seekData(fd: number, position: number): number;
/** First byte at or after `position` in a hole (end of file counts as one), or -1 past the end. */
export declare function seekHole(fd: number, position: number): number;
/**
 * Deallocates `length` bytes at `position`, keeping the file size; the range reads as zeroes.
 * Resolves false where the file system cannot punch holes (EOPNOTSUPP).
 */
export declare function punchHole(fd: number, position: number, length: number): Promise<boolean>;
