/*
 * The three sparse-file calls Node has no API for: lseek(SEEK_DATA), lseek(SEEK_HOLE) and
 * fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Seeks are answered synchronously (an
 * in-memory extent lookup); punching frees blocks and may take a while, so it runs on libuv's
 * thread pool and returns a promise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

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

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
