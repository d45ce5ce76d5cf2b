/*
 * File-system and zero-copy calls Node has no API for: lseek(SEEK_DATA), lseek(SEEK_HOLE),
 * fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), and sendfile(2) of file ranges to a
 * socket, each behind a small header. Seeks are answered synchronously (an in-memory extent lookup);
 * punching and sending may take a while, so they run on libuv's thread pool and return promises.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#ifdef __linux__
#include <sys/sendfile.h>
#endif

#define MAX_SAFE_INTEGER 9007199254740991LL

/* An Error carrying Node's usual `code` (EIO, EBADF, ...), `errno` and `syscall`. */
static napi_value errno_error(napi_env env, int err, const char *syscall) {
  napi_value code, msg, error, num, sys;
  char text[256];
  snprintf(text, sizeof text, "%s, %s", strerror(err), syscall);
  napi_create_string_utf8(env, uv_err_name(-err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, error, "errno", num);
  napi_set_named_property(env, error, "syscall", sys);
  return error;
}

static void throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, errno_error(env, err, syscall));
}

/* Reads one argument as a non-negative safe integer; throws a TypeError otherwise. */
static int get_offset(napi_env env, napi_value v, const char *what, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > (double)MAX_SAFE_INTEGER || d != (double)(int64_t)d) {
    char text[96];
    snprintf(text, sizeof text, "%s must be a non-negative safe integer", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", text);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, int64_t *vals) {
  static const char *names[] = {"fd", "position", "length"};
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
    return 0;
  }
  for (size_t i = 0; i < want; i++) {
    if (!get_offset(env, argv[i], names[i], &vals[i])) return 0;
  }
  if (vals[0] > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd is out of range");
    return 0;
  }
  return 1;
}

/* lseek with SEEK_DATA or SEEK_HOLE; ENXIO (nothing further, or past EOF) answers -1. */
static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *syscall) {
  int64_t a[2];
  napi_value result;
  if (!get_args(env, info, 2, a)) return NULL;
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  if (r < 0) {
    if (errno != ENXIO) {
      throw_errno(env, errno, syscall);
      return NULL;
    }
    r = -1;
  }
  napi_create_int64(env, (int64_t)r, &result);
#else
  (void)whence;
  throw_errno(env, ENOTSUP, syscall);
  return NULL;
#endif
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
#ifdef SEEK_DATA
  return seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
#else
  return seek(env, info, 0, "lseek(SEEK_DATA)");
#endif
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
#ifdef SEEK_HOLE
  return seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
#else
  return seek(env, info, 0, "lseek(SEEK_HOLE)");
#endif
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int64_t position, length;
  int err; /* 0: punched; EOPNOTSUPP/ENOSYS: cannot; anything else: failed */
} punch_req;

static void punch_execute(napi_env env, void *data) {
  (void)env;
  punch_req *req = data;
#ifdef __linux__
  int r;
  do {
    r = fallocate(req->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)req->position, (off_t)req->length);
  } while (r < 0 && errno == EINTR);
  req->err = r < 0 ? errno : 0;
#else
  req->err = EOPNOTSUPP;
#endif
}

static void punch_complete(napi_env env, napi_status status, void *data) {
  punch_req *req = data;
  napi_value result;
  int err = req->err;
  if (status != napi_ok) err = ECANCELED;
  if (err == 0 || err == EOPNOTSUPP || err == ENOSYS) {
    napi_get_boolean(env, err == 0, &result);
    napi_resolve_deferred(env, req->deferred, result);
  } else {
    napi_reject_deferred(env, req->deferred, errno_error(env, err, "fallocate"));
  }
  napi_delete_async_work(env, req->work);
  free(req);
}

/* punchHole(fd, position, length) -> Promise<boolean>: false where the file system cannot. */
static napi_value punch_hole(napi_env env, napi_callback_info info) {
  int64_t a[3];
  napi_value promise, name;
  if (!get_args(env, info, 3, a)) return NULL;
  if (a[1] + a[2] > MAX_SAFE_INTEGER) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "position + length is out of range");
    return NULL;
  }
  punch_req *req = calloc(1, sizeof *req);
  if (req == NULL) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  req->fd = (int)a[0];
  req->position = a[1];
  req->length = a[2];
  napi_create_promise(env, &req->deferred, &promise);
  napi_create_string_utf8(env, "vd:punchHole", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, punch_execute, punch_complete, req, &req->work);
  napi_queue_async_work(env, req->work);
  return promise;
}

/* ---- sendFiles: a batch of (header, file range) pieces to a socket, zero-copy */

#define HEADER_MAX 64
/* Pieces in one batch: bounds the allocation a call can ask for. */
#define PIECES_MAX 1024
/* How long one poll() waits for room before looking at the cancel flag again. */
#define POLL_SLICE_MS 100

typedef struct {
  int file;
  int64_t position, length;
  size_t header_len;
  unsigned char header[HEADER_MAX];
} send_piece;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref cancel_ref; /* keeps the cancel flag's SharedArrayBuffer alive */
  volatile int32_t *cancel;
  int sock;
  int64_t stall_ms;
  size_t count;
  int64_t sent;   /* bytes handed to the socket, all pieces */
  int64_t copied; /* of those, bytes read and sent through a buffer (sendfile refused the file) */
  int err;
  const char *syscall;
  send_piece pieces[];
} send_req;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Bytes past the end of a file that shrank under us are sent as zeroes, as a read would give. */
static const unsigned char zeroes[65536];
/* The buffer of the copying fallback. */
#define BOUNCE_SIZE (256 * 1024)

/*
 * Runs on the pool, piece after piece: one pool round trip for the whole batch instead of one per
 * reply. The socket is non-blocking (node's), so a full send buffer answers EAGAIN: then poll for
 * room in short slices, so a cancel is seen within one slice and a peer that stops reading costs
 * the thread at most `stall_ms` (ETIMEDOUT) instead of forever.
 */
static void send_execute(napi_env env, void *data) {
  (void)env;
  send_req *r = data;
  int64_t last = now_ms();
  /* Some files cannot be sendfile()d (EINVAL: /proc files, some FUSE and network file systems):
   * then this job reads them into `bounce` and sends that, so the replies still go out whole. */
  unsigned char *bounce = NULL;
  /* The descriptor sendfile refused last: its later pieces are copied at once; other files in
   * the batch still go zero-copy. */
  int refused = -1;
  r->err = 0;
  for (size_t i = 0; i < r->count && r->err == 0; i++) {
    send_piece *p = &r->pieces[i];
    size_t hdone = 0;
    int64_t done = 0;
    off_t off = (off_t)p->position;
    int eof = 0;
    size_t bpos = 0, blen = 0; /* what of `bounce` is read and not yet sent */
    int copying = p->file == refused;
    /* Later pieces follow: keep TCP from pushing a partial segment between them. */
    int later = i + 1 < r->count ? MSG_MORE : 0;
    while (hdone < p->header_len || done < p->length) {
      if (r->cancel && __atomic_load_n(r->cancel, __ATOMIC_ACQUIRE) != 0) {
        r->err = ECANCELED;
        r->syscall = "sendfile";
        break;
      }
      ssize_t n;
      int64_t left = p->length - done;
      if (hdone < p->header_len) {
        r->syscall = "send";
        n = send(r->sock, p->header + hdone, p->header_len - hdone, MSG_NOSIGNAL | (left > 0 ? MSG_MORE : later));
        if (n > 0) hdone += (size_t)n;
      } else if (!eof && !copying) {
        r->syscall = "sendfile";
#ifdef __linux__
        n = sendfile(r->sock, p->file, &off, (size_t)(left > (1 << 30) ? (1 << 30) : left));
#else
        errno = EINVAL;
        n = -1;
#endif
        if (n == 0) {
          eof = 1;
          continue;
        }
        if (n > 0) done += n;
        else if (errno == EINVAL || errno == ENOSYS) {
          copying = 1;
          refused = p->file;
          continue;
        }
      } else if (!eof) {
        if (bpos == blen) {
          if (bounce == NULL && (bounce = malloc(BOUNCE_SIZE)) == NULL) {
            r->err = ENOMEM;
            r->syscall = "malloc";
            break;
          }
          ssize_t m = pread(p->file, bounce, (size_t)(left > BOUNCE_SIZE ? BOUNCE_SIZE : left), off);
          if (m < 0 && errno == EINTR) continue;
          if (m < 0) {
            r->err = errno;
            r->syscall = "pread";
            break;
          }
          if (m == 0) {
            eof = 1;
            continue;
          }
          off += m;
          bpos = 0;
          blen = (size_t)m;
        }
        r->syscall = "send";
        n = send(r->sock, bounce + bpos, blen - bpos, MSG_NOSIGNAL | ((int64_t)(blen - bpos) < left ? MSG_MORE : later));
        if (n > 0) {
          bpos += (size_t)n;
          done += n;
          r->copied += n;
        }
      } else {
        r->syscall = "send";
        size_t chunk = (size_t)(left > (int64_t)sizeof zeroes ? (int64_t)sizeof zeroes : left);
        /* The last piece goes without MSG_MORE, or TCP would hold it back. */
        n = send(r->sock, zeroes, chunk, MSG_NOSIGNAL | ((int64_t)chunk < left ? MSG_MORE : later));
        if (n > 0) done += n;
      }
      if (n > 0) {
        r->sent += n;
        last = now_ms();
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        r->err = errno;
        break;
      }
      int64_t wait = r->stall_ms - (now_ms() - last);
      if (wait <= 0) {
        r->err = ETIMEDOUT;
        break;
      }
      struct pollfd pfd = {.fd = r->sock, .events = POLLOUT, .revents = 0};
      if (poll(&pfd, 1, (int)(wait < POLL_SLICE_MS ? wait : POLL_SLICE_MS)) < 0 && errno != EINTR) {
        r->err = errno;
        r->syscall = "poll";
        break;
      }
    }
  }
  free(bounce);
}

static void send_complete(napi_env env, napi_status status, void *data) {
  send_req *r = data;
  int err = status != napi_ok ? ECANCELED : r->err;
  if (err == 0) {
    napi_value copied;
    napi_create_int64(env, r->copied, &copied);
    napi_resolve_deferred(env, r->deferred, copied);
  } else {
    /* How much went out tells the caller whether the stream is still whole (nothing sent). */
    napi_value error = errno_error(env, err, r->syscall ? r->syscall : "sendfile"), sent;
    napi_create_int64(env, r->sent, &sent);
    napi_set_named_property(env, error, "bytesSent", sent);
    napi_reject_deferred(env, r->deferred, error);
  }
  if (r->cancel_ref) napi_delete_reference(env, r->cancel_ref);
  napi_delete_async_work(env, r->work);
  free(r);
}

/* The typed array `v` of type `want`, or a TypeError naming `what`. */
static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, const char *what, void **data, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type t;
  napi_is_typedarray(env, v, &is_ta);
  if (is_ta) napi_get_typedarray_info(env, v, &t, len, data, NULL, NULL);
  if (!is_ta || t != want) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return 0;
  }
  return 1;
}

/*
 * sendFiles(sockFd, plan: Float64Array, headers: Uint8Array, stallMs, cancel | undefined)
 *   -> Promise<number>, the bytes that went through a buffer because sendfile refused the file. `plan` holds four numbers per piece: file fd, position, length and the
 * length of its header, whose bytes follow the previous pieces' in `headers`. `cancel` is an
 * Int32Array over a SharedArrayBuffer; non-zero element 0 stops the send (ECANCELED) within one
 * poll slice.
 */
static napi_value send_files(napi_env env, napi_callback_info info) {
  napi_value argv[5], promise, name;
  size_t argc = 5;
  int64_t sock, stall;
  double *plan;
  unsigned char *headers;
  size_t plan_len, headers_len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
    return NULL;
  }
  if (!get_offset(env, argv[0], "sockFd", &sock) || !get_offset(env, argv[3], "stallMs", &stall)) return NULL;
  if (!get_typed(env, argv[1], napi_float64_array, "plan must be a Float64Array", (void **)&plan, &plan_len)) return NULL;
  if (!get_typed(env, argv[2], napi_uint8_array, "headers must be a Uint8Array", (void **)&headers, &headers_len)) return NULL;
  if (sock > INT32_MAX || stall > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "sockFd or stallMs is out of range");
    return NULL;
  }
  size_t count = plan_len / 4;
  if (plan_len % 4 != 0 || count == 0 || count > PIECES_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "plan must hold 1 to 1024 pieces of four numbers");
    return NULL;
  }
  /* Every number is checked before anything is allocated from it. */
  size_t header_total = 0;
  for (size_t i = 0; i < count; i++) {
    const double *q = plan + 4 * i;
    for (int k = 0; k < 4; k++) {
      if (!(q[k] >= 0) || q[k] > (double)MAX_SAFE_INTEGER || q[k] != (double)(int64_t)q[k]) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "plan numbers must be non-negative safe integers");
        return NULL;
      }
    }
    if (q[0] > INT32_MAX || q[1] + q[2] > (double)MAX_SAFE_INTEGER || q[3] > HEADER_MAX) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "a piece's fd, range or header length (at most 64) is out of range");
      return NULL;
    }
    header_total += (size_t)q[3];
  }
  if (header_total != headers_len) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "headers does not hold the header bytes the plan names");
    return NULL;
  }
  send_req *r = calloc(1, sizeof *r + count * sizeof(send_piece));
  if (r == NULL) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    const double *q = plan + 4 * i;
    send_piece *p = &r->pieces[i];
    p->file = (int)q[0];
    p->position = (int64_t)q[1];
    p->length = (int64_t)q[2];
    p->header_len = (size_t)q[3];
    memcpy(p->header, headers + at, p->header_len);
    at += p->header_len;
  }
  if (argc >= 5) {
    napi_valuetype t;
    napi_typeof(env, argv[4], &t);
    if (t != napi_undefined && t != napi_null) {
      void *flag = NULL;
      size_t len = 0;
      /* Asking for the data moves a small on-heap array's bytes off the heap, where they stay put. */
      if (!get_typed(env, argv[4], napi_int32_array, "cancel must be an Int32Array", &flag, &len)) {
        free(r);
        return NULL;
      }
      if (len < 1) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "cancel must hold one element");
        free(r);
        return NULL;
      }
      r->cancel = (volatile int32_t *)flag;
      napi_create_reference(env, argv[4], 1, &r->cancel_ref);
    }
  }
  r->sock = (int)sock;
  r->stall_ms = stall;
  r->count = count;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, "vd:sendFiles", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, send_execute, send_complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return promise;
}

/* dup(fd) with close-on-exec: a descriptor of the same open file that outlives the original. */
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  int64_t a[1];
  napi_value result;
  if (!get_args(env, info, 1, a)) return NULL;
  int fd = fcntl((int)a[0], F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "dup");
    return NULL;
  }
  napi_create_int32(env, fd, &result);
  return result;
}

static napi_value close_fd(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  /* Linux closes the descriptor even when close() reports EINTR: never retry. */
  if (close((int)a[0]) < 0 && errno != EINTR) {
    throw_errno(env, errno, "close");
    return NULL;
  }
  return NULL;
}

/*
 * setSendBuffer(fd, bytes) -> number: asks for a socket send buffer of `bytes` (SO_SNDBUF; the
 * kernel caps it at net.core.wmem_max) and answers what the socket got. Node has no such call
 * for stream sockets.
 */
static napi_value set_send_buffer(napi_env env, napi_callback_info info) {
  int64_t a[2];
  napi_value argv[2], result;
  size_t argc = 2;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
    return NULL;
  }
  /* Not get_args: its messages name a file position, not a buffer size. */
  if (!get_offset(env, argv[0], "fd", &a[0]) || !get_offset(env, argv[1], "bytes", &a[1])) return NULL;
  if (a[0] > INT32_MAX || a[1] > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd or bytes is out of range");
    return NULL;
  }
  int want = (int)a[1], got = 0;
  socklen_t len = sizeof got;
  if (setsockopt((int)a[0], SOL_SOCKET, SO_SNDBUF, &want, sizeof want) < 0) {
    throw_errno(env, errno, "setsockopt");
    return NULL;
  }
  if (getsockopt((int)a[0], SOL_SOCKET, SO_SNDBUF, &got, &len) < 0) {
    throw_errno(env, errno, "getsockopt");
    return NULL;
  }
  napi_create_int32(env, got, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sendFiles", NULL, send_files, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dup", NULL, dup_fd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setSendBuffer", NULL, set_send_buffer, NULL, NULL, NULL, napi_enumerable, NULL},
      {"close", NULL, close_fd, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
