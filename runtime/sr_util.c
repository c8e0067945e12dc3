/*
 * sr_util.c — error strings, thread-local last-error message, aligned allocation, clock.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char sr__errbuf[1024];

sr_status sr__seterr(sr_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sr__errbuf, sizeof sr__errbuf, fmt, ap);
  va_end(ap);
  return s;
}

void sr__clearerr(void) { sr__errbuf[0] = '\0'; }

const char *sr_last_error(void) { return sr__errbuf; }

const char *sr_strerror(sr_status s) {
  switch (s) {
  case SR_OK: return "ok";
  case SR_ERR_CONFIG: return "configuration error";
  case SR_ERR_SHAPE: return "shape error";
  case SR_ERR_IO: return "I/O error";
  case SR_ERR_EXISTS: return "output exists";
  case SR_ERR_NOMEM: return "out of memory";
  case SR_ERR_MPI: return "MPI error";
  case SR_ERR_BACKEND: return "backend error";
  case SR_ERR_INTERNAL: return "internal error";
  case SR_ERR_USAGE: return "usage error";
  }
  return "unknown error";
}

int sr_exit_code(sr_status s) {
  switch (s) {
  case SR_OK: return 0;
  case SR_ERR_USAGE:
  case SR_ERR_CONFIG: return 2;
  case SR_ERR_SHAPE: return 3;
  case SR_ERR_IO: return 4;
  case SR_ERR_EXISTS: return 5;
  default: return 1;
  }
}

const char *sr_version(void) { return SR_VERSION_STRING; }

void *sr__alloc(size_t bytes) {
  if (bytes == 0) return NULL;
  size_t rounded = (bytes + 63) & ~(size_t)63;
  return aligned_alloc(64, rounded);
}

void *sr__calloc(size_t count, size_t size) {
  if (count == 0 || size == 0) return NULL;
  if (count > SIZE_MAX / size) return NULL;
  void *p = sr__alloc(count * size);
  if (p) memset(p, 0, count * size);
  return p;
}

void sr__free(void *p) { free(p); }

double sr__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void sr__poison_f32(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = NAN;
}

char *sr__strdup(const char *s) { return s ? strdup(s) : NULL; }
