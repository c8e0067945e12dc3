/*
 * sr_internal.h — helpers shared by every module of libsparsering (not installed).
 *
 * Error handling has two tiers: library code returns sr_status and records a
 * one-line message with sr__seterr(); only main() turns a failure into a collective exit.
 * SR_TRY propagates a failing status unchanged, so the first message set wins.
 */
#ifndef SR_INTERNAL_H
#define SR_INTERNAL_H

#include "sparsering.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Records "message" as the last error of this thread and returns s (for `return sr__seterr(...)`). */
sr_status sr__seterr(sr_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears the last error of this thread. */
void sr__clearerr(void);
/* s as shown in a message, in buf (n bytes): whole when it fits, else its first and last
 * parts around "..." (a path keeps its top directories and its file name). Returns buf. A
 * message longer than about 900 bytes is shortened this way by sr__seterr itself, word by word,
 * so that the reason at its end survives; control characters in a message become '?'. */
const char *sr__short(char *buf, size_t n, const char *s);
/* "a FIFO", "a directory", ... for a struct stat st_mode (messages about non-regular files). */
const char *sr__file_kind(unsigned mode);

/* Propagate a failing status. */
#define SR_TRY(expr)                                                                               \
  do {                                                                                             \
    sr_status sr__s = (expr);                                                                      \
    if (sr__s != SR_OK) return sr__s;                                                              \
  } while (0)

/* st = expr; on failure jump to the cleanup label. */
#define SR_TRY_GOTO(st, expr, label)                                                                    \
  do {                                                                                             \
    (st) = (expr);                                                                                 \
    if ((st) != SR_OK) goto label;                                                                 \
  } while (0)

/* Programmer-error check: never has side effects, prints file:line, returns SR_ERR_INTERNAL. */
#define SR_ASSERT(cond)                                                                            \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      return sr__seterr(SR_ERR_INTERNAL, "%s:%d: internal check failed: %s", __FILE__, __LINE__,   \
                        #cond);                                                                    \
  } while (0)

/* Aligned (64-byte) allocation; returns NULL on failure. Free with sr__free. */
void *sr__alloc(size_t bytes);
void *sr__calloc(size_t count, size_t size);
void sr__free(void *p);
/* Allocates or sets SR_ERR_NOMEM naming `what`. */
#define SR_ALLOC(ptr, bytes, what)                                                                 \
  do {                                                                                             \
    (ptr) = sr__alloc(bytes);                                                                      \
    if ((ptr) == NULL && (bytes) > 0)                                                              \
      return sr__seterr(SR_ERR_NOMEM, "out of memory allocating %zu bytes for %s",                 \
                        (size_t)(bytes), (what));                                                  \
  } while (0)

/* Wall clock in seconds (monotonic). */
double sr__now(void);
/* SR_PROFILE=1 in the environment: rank-local sub-phase times on stderr ("# profile what: s"),
 * for finding where a phase's time goes. Costs one getenv per call. */
void sr__prof(const char *what, double t0);
/* CPUs in this process's affinity mask (0 if unknown). */
int sr__affinity_cpus(void);

/* Fills n floats with a poison value (NaN) so that unwritten outputs are detectable. */
void sr__poison_f32(float *x, size_t n);

/* Writes text and a newline to "<path>.partial", then renames it to path: a failure (a full
 * disk) leaves what was there, never half a file. what names the file in messages ("JSON
 * report"). */
sr_status sr__write_text_atomic(const char *path, const char *text, const char *what);

/* strdup that returns NULL on NULL input. */
char *sr__strdup(const char *s);

#endif
