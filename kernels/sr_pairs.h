/*
 * sr_pairs.h — visible causal (query, key) pairs of one (q-block, k-block) pair, shared by the
 * host code (runtime/sr_attend.c, kernels/cpu) and the CUDA list builder (device code).
 *
 * Row i of a q-block of bq rows starting at qpos sees min(max(a0 + i, 0), bk) keys of the
 * k-block of bk keys starting at kpos, a0 = qpos - kpos + 1: none for i < i_lo, a0 + i for
 * i_lo <= i < i_full, all bk from i_full on.
 */
#ifndef SR_PAIRS_H
#define SR_PAIRS_H

#include <stdint.h>

#ifdef __CUDACC__
#define SR_HOST_DEVICE __host__ __device__
#else
#define SR_HOST_DEVICE
#endif

static inline SR_HOST_DEVICE int64_t sr_pairs_of_blocks(int64_t qpos, int bq, int64_t kpos,
                                                        int bk) {
  const int64_t a0 = qpos - kpos + 1;
  int64_t i_lo = 1 - a0, i_full = bk - a0;
  i_lo = i_lo < 0 ? 0 : i_lo > bq ? bq : i_lo;
  i_full = i_full < i_lo ? i_lo : i_full > bq ? bq : i_full;
  const int64_t n = i_full - i_lo;
  return n * a0 + (i_lo + i_full - 1) * n / 2 + (int64_t)bk * (bq - i_full);
}

#endif
