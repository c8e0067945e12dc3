/*
 * sr_test.h — shared helpers for the cmocka tests: fresh random inputs (seeded from the clock
 * unless SR_TEST_SEED is set, and printed so a failure can be replayed), float64 comparisons.
 */
#ifndef SR_TEST_H
#define SR_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* splitmix64: small, good enough for test inputs. */
static inline uint64_t sr_test_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static inline float sr_test_uniform(uint64_t *s) {
  return (float)((double)(sr_test_next(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}
static inline void sr_test_fill(float *x, size_t n, float amp, uint64_t *s) {
  for (size_t i = 0; i < n; i++) x[i] = amp * sr_test_uniform(s);
}
/* A fresh seed per run (printed), or SR_TEST_SEED from the environment. */
static inline uint64_t sr_test_seed(const char *who) {
  const char *e = getenv("SR_TEST_SEED");
  uint64_t s = e ? strtoull(e, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
  fprintf(stderr, "# %s: SR_TEST_SEED=%llu\n", who, (unsigned long long)s);
  return s;
}
/* ||a - b|| / ||b|| over n values (b in double). */
static inline double sr_test_relerr(const float *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double diff = (double)a[i] - b[i];
    num += diff * diff;
    den += b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}
#endif
