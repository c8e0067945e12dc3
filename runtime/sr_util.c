/*
 * sr_util.c — error strings, thread-local last-error message, aligned allocation, clock.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char sr__errbuf[1024];

/* A message longer than this has its long words shortened: it must fit, whole, in the 1000
 * bytes sr_comm_agree broadcasts, with room for a "rank N: " prefix. */
#define SR__MSG_FIT 900
/* Longest word (run of non-blank bytes, in practice a path) kept whole in a shortened message. */
#define SR__WORD_FIT 120

/* Start of the UTF-8 character that holds byte i of s (never cut a character in two). */
static size_t char_start(const char *s, size_t i) {
  while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
  return i;
}

const char *sr__short(char *buf, size_t n, const char *s) {
  size_t len = s ? strlen(s) : 0;
  if (!n) return buf;
  if (!s) s = "";
  if (len < n) {
    memcpy(buf, s, len + 1);
    return buf;
  }
  if (n < 8) {
    snprintf(buf, n, "%s", s);
    return buf;
  }
  /* head ... tail: the head says where (the directory), the tail what (the file name). */
  size_t keep = n - 4, head = char_start(s, keep / 2), tail = len - keep + keep / 2;
  while (tail < len && ((unsigned char)s[tail] & 0xC0) == 0x80) tail++;
  memcpy(buf, s, head);
  memcpy(buf + head, "...", 3);
  memcpy(buf + head + 3, s + tail, len - tail + 1);
  return buf;
}

/* Writes msg into out (n bytes) with every word longer than SR__WORD_FIT shown as head...tail,
 * so that a message about a 4000-byte path still ends with its reason. */
static void shorten_words(const char *msg, char *out, size_t n) {
  size_t at = 0;
  for (const char *p = msg; *p && at + 1 < n;) {
    size_t w = strcspn(p, " ");
    if (w == 0) w = 1; /* a blank */
    char word[SR__WORD_FIT + 1], *one = NULL;
    const char *piece = p;
    size_t plen = w;
    if (w > SR__WORD_FIT && (one = malloc(w + 1)) != NULL) {
      memcpy(one, p, w);
      one[w] = '\0';
      piece = sr__short(word, sizeof word, one);
      plen = strlen(piece);
    }
    if (plen > n - 1 - at) plen = n - 1 - at;
    memcpy(out + at, piece, plen);
    at += plen;
    free(one);
    p += w;
  }
  out[at] = '\0';
}

sr_status sr__seterr(sr_status s, const char *fmt, ...) {
  /* Formatted in a local buffer first: an argument may be sr_last_error() itself. */
  char tmp[sizeof sr__errbuf];
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  int len = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (len >= SR__MSG_FIT) {
    /* Too long to travel whole: a long path would push the reason off the end. Shorten the
     * long words (paths) rather than cut the tail. */
    char *full = malloc((size_t)len + 1);
    if (full) {
      vsnprintf(full, (size_t)len + 1, fmt, again);
      shorten_words(full, tmp, SR__MSG_FIT);
      free(full);
    }
  }
  va_end(again);
  /* One line, whatever a path or value contained. */
  for (char *c = tmp; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
  memcpy(sr__errbuf, tmp, strlen(tmp) + 1);
  return s;
}

const char *sr__file_kind(unsigned mode) {
  mode_t m = (mode_t)mode;
  if (S_ISREG(m)) return "a regular file";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symbolic link";
  return "of an unknown kind";
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
  case SR_ERR_VERIFY: return "verification failed";
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
  case SR_ERR_VERIFY: return 6;
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

void sr__prof(const char *what, double t0) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("SR_PROFILE");
    on = e && *e && strcmp(e, "0") != 0;
  }
  if (on) fprintf(stderr, "# profile %s: %.4f s\n", what, sr__now() - t0);
}

sr_status sr__write_text_atomic(const char *path, const char *text, const char *what) {
  char sp[200];
  sr__short(sp, sizeof sp, path);
  size_t n = strlen(path) + sizeof ".partial";
  char *tmp = malloc(n);
  if (!text || !tmp) {
    free(tmp);
    return sr__seterr(SR_ERR_NOMEM, "out of memory writing the %s", what);
  }
  snprintf(tmp, n, "%s.partial", path);
  sr_status st = SR_OK;
  FILE *f = fopen(tmp, "w");
  if (!f) {
    st = sr__seterr(SR_ERR_IO, "%s: cannot write the %s: %s", sp, what, strerror(errno));
  } else {
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = fflush(f) == 0 && ok;
    int e = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok)
      st = sr__seterr(SR_ERR_IO, "%s: writing the %s failed: %s", sp, what,
                      strerror(e ? e : errno));
    else if (rename(tmp, path) != 0)
      st = sr__seterr(SR_ERR_IO, "%s: cannot rename the %s into place: %s", sp, what,
                      strerror(errno));
    if (st != SR_OK) unlink(tmp);
  }
  free(tmp);
  return st;
}
