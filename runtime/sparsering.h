/*
 * sparsering.h — public API of libsparsering.
 *
 * sparsering computes causal attention over very long contexts with the sequence sharded
 * across MPI ranks, applies a training-free sparse attention method (The Sparse Frontier,
 * arXiv 2504.17768) on every rank and moves only the KV blocks the selection needs.
 *
 * Conventions (libuv style): every function returns sr_status; 0 is success, negative
 * values are errors; sr_strerror() names the class and sr_last_error() holds the one-line
 * message of the most recent failure on the calling thread. The caller owns what it passes
 * in; handles are opaque and freed by their own *_free function.
 */
#ifndef SPARSERING_H
#define SPARSERING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SR_VERSION_MAJOR 0
#define SR_VERSION_MINOR 1
#define SR_VERSION_PATCH 0
#define SR_VERSION_STRING "0.1.0"

/* Status codes. Each user-visible class maps to one process exit code (sr_exit_code). */
typedef enum sr_status {
  SR_OK = 0,
  SR_ERR_CONFIG = -1,   /* malformed YAML, unknown key, bad value, out of range       */
  SR_ERR_SHAPE = -2,    /* impossible N / rank count / block geometry / input shapes   */
  SR_ERR_IO = -3,       /* missing or unreadable file, HDF5 failure                   */
  SR_ERR_EXISTS = -4,   /* output exists and overwrite was not asked                  */
  SR_ERR_NOMEM = -5,    /* allocation failed                                          */
  SR_ERR_MPI = -6,      /* an MPI call failed                                         */
  SR_ERR_BACKEND = -7,  /* backend not available or failed                            */
  SR_ERR_INTERNAL = -8, /* a bug: an invariant did not hold                           */
  SR_ERR_USAGE = -9,    /* bad command line                                           */
  SR_ERR_VERIFY = -10,  /* the result failed its own verification (verify.max_relerr)  */
} sr_status;

const char *sr_strerror(sr_status s);
/* The one-line message of the last error set on this thread ("" if none). */
const char *sr_last_error(void);
/* Process exit code for a status: 0 ok, 2 usage/config, 3 shape, 4 io, 5 exists,
 * 6 verification failed, 1 other. */
int sr_exit_code(sr_status s);
const char *sr_version(void);

#ifdef __cplusplus
}
#endif
#endif
