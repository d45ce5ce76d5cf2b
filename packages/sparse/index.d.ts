/** First byte at or after `position` that holds data, or -1 when none does (ENXIO). */
export declare function seekData(fd: number, position: number): number;
/** First byte at or after `position` in a hole (end of file counts as one), or -1 past the end. */
export declare function seekHole(fd: number, position: number): number;
/**
 * Deallocates `length` bytes at `position`, keeping the file size; the range reads as zeroes.
 * Resolves false where the file system cannot punch holes (EOPNOTSUPP).
 */
export declare function punchHole(fd: number, position: number, length: number): Promise<boolean>;

export interface SendFileOptions {
  /** Bytes sent first, before the file range (at most 64; a protocol's reply header). */
  header?: Uint8Array | null;
  /**
   * Milliseconds the send may make no progress (the peer reads nothing) before it fails with
   * ETIMEDOUT (default 30 000), so a stalled peer holds a pool thread for a bounded time.
   */
  stallTimeout?: number;
  /** Aborting stops the send within about 100 ms (ECANCELED); what was sent stays sent. */
  signal?: AbortSignal;
}

/**
 * Writes `header`, then `length` bytes of `fileFd` from `position`, to the socket `sockFd`, on
 * libuv's thread pool with sendfile(2): page cache to socket, no copy through user space. Loops
 * over partial writes; where the socket's buffer is full (a non-blocking socket answers EAGAIN)
 * it waits for room in 100 ms slices. Bytes past the end of a file that shrank are sent as
 * zeroes. A file sendfile refuses (EINVAL, as /proc files and some FUSE and network file systems
 * answer) is read with pread into a buffer and sent from there instead, so the bytes still go out
 * whole. Resolves, when everything was handed to the kernel, with the number of bytes sent that
 * way (0 normally); rejects with a system error (`code`, `errno`, `syscall`, and `bytesSent`):
 * ETIMEDOUT after `stallTimeout`, ECANCELED on abort, EPIPE/ECONNRESET when the peer left. A failed
 * send may have sent part of the bytes (`bytesSent`): the stream is then unusable.
 *
 * The caller keeps both descriptors open until the promise settles, and nothing else may write to
 * the socket meanwhile.
 */
export declare function sendFile(sockFd: number, fileFd: number, position: number, length: number, opts?: SendFileOptions): Promise<number>;

/** One piece of a `sendFiles` batch: a header, then a file range. */
export interface SendPiece {
  /** Bytes sent before the range (at most 64; a protocol's reply header). */
  header?: Uint8Array | null;
  fileFd: number;
  position: number;
  length: number;
}

/**
 * `sendFile` for several pieces in order, in one job on the pool: replies queued on a connection
 * go out back to back, without a round trip through the event loop between them. At most 1024
 * pieces. Same options, guarantees and failure modes as `sendFile`; a failure leaves the pieces
 * before it sent and the one it stopped in partly sent.
 */
export declare function sendFiles(sockFd: number, pieces: readonly SendPiece[], opts?: Omit<SendFileOptions, 'header'>): Promise<number>;

/** A new descriptor (close-on-exec) for the same open file as `fd`, which stays valid after `fd` is closed. */
export declare function dup(fd: number): number;
/**
 * Asks for a send buffer of `bytes` on the socket `fd` (SO_SNDBUF, which Node offers only for UDP);
 * returns the size the socket got: the kernel doubles the request for its bookkeeping and caps it
 * at `net.core.wmem_max`. On TCP this turns the kernel's buffer autotuning off.
 */
export declare function setSendBuffer(fd: number, bytes: number): number;
/** Closes a descriptor (one from `dup`). */
export declare function close(fd: number): void;
