/*
 * cpu_estimate.c — the Vertical-Slash / FlexPrefill estimate ops of the CPU backend
 * (kernels.h, docs/METHODS.md §2.1-2.2): scores of the W window queries against this rank's
 * keys, row max, fixed-point row sums, and the fixed-point vertical and slash sums.
 *
 * Determinism is the point of these ops: a value depends only on its own inputs, never on nk
 * or on how the work is split, so the sums the runtime reduces over ranks come out
 * bit-identical for any rank count. Every score is one 16-lane loop over the head dim in
 * ascending order (the same instructions for every element, no remainder path); the sums are
 * integers.
 */
#include "cpu_internal.h"

#include <omp.h>
#include <stdlib.h>

#define LN SR_CPU_LANES

static inline int64_t fix32(float x) {
  return (int64_t)((double)x * 4294967296.0 + 0.5); /* 2^SR_EST_FIX_BITS */
}

/* fp32 -> bf16 -> fp32, round to nearest even (values here are finite and >= 0). */
static inline float to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

static inline int64_t key_pos(const int64_t *run_start, int64_t run_len, int64_t j) {
  return run_start[j / run_len] + j % run_len;
}

static sr_status est_check(const char *op, int W, int64_t nk, int64_t run_len) {
  if (W <= 0 || nk < 0 || run_len <= 0)
    return sr__seterr(SR_ERR_SHAPE, "%s: bad shape W=%d nk=%lld run_len=%lld", op, W,
                      (long long)nk, (long long)run_len);
  return SR_OK;
}

sr_status sr__cpu_est_scores(const float *qw, int W, int64_t qpos0, const void *kv, int64_t nk,
                             const int64_t *run_start, int64_t run_len, int d, float scale,
                             float *L) {
  SR_TRY(est_check("est_scores", W, nk, run_len));
  if (d <= 0) return sr__seterr(SR_ERR_SHAPE, "est_scores: head dim %d", d);
  if (nk == 0) return SR_OK;
  const float *k = kv;
  const int64_t Wp = sr__cpu_lanes_up(W), ngroups = Wp / LN;
  /* Window queries transposed, scaled, padded with zero lanes: qt[c][i]. */
  float *qt = sr__alloc((size_t)d * (size_t)Wp * sizeof(float));
  if (!qt) return sr__seterr(SR_ERR_NOMEM, "est_scores: out of memory");
  sr__cpu_transpose(qw, W, d, d, qt, Wp, Wp, scale, NULL);
  const int64_t kchunk = 256, nchunks = (nk + kchunk - 1) / kchunk;
  const int64_t tasks = nchunks * ngroups;
#pragma omp parallel for schedule(dynamic, 1) num_threads(sr__cpu_threads())
  for (int64_t t = 0; t < tasks; t++) {
    const int64_t g = t % ngroups, j0 = (t / ngroups) * kchunk;
    const int64_t j1 = j0 + kchunk < nk ? j0 + kchunk : nk;
    const float *qg = qt + g * LN;
    for (int64_t j = j0; j < j1; j++) {
      const float *kj = k + (size_t)j * (size_t)d;
      float acc[LN];
#pragma omp simd
      for (int i = 0; i < LN; i++) acc[i] = 0.0f;
      for (int c = 0; c < d; c++) {
        const float kc = kj[c];
        const float *qc = qg + (size_t)c * (size_t)Wp;
#pragma omp simd
        for (int i = 0; i < LN; i++) acc[i] += qc[i] * kc;
      }
      const int64_t pos = key_pos(run_start, run_len, j);
      for (int i = 0; i < LN; i++) {
        const int64_t qi = g * LN + i;
        if (qi < W) L[(size_t)qi * (size_t)nk + (size_t)j] = pos > qpos0 + qi ? -INFINITY : acc[i];
      }
    }
  }
  sr__free(qt);
  return SR_OK;
}

sr_status sr__cpu_est_rowmax(const float *L, int W, int64_t nk, float *mx) {
  SR_TRY(est_check("est_rowmax", W, nk, 1));
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int i = 0; i < W; i++) {
    const float *r = L + (size_t)i * (size_t)nk;
    float m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) m = r[j] > m ? r[j] : m;
    mx[i] = m;
  }
  return SR_OK;
}

sr_status sr__cpu_est_rowsum(const float *L, int W, int64_t nk, const float *gmax, int64_t *sum) {
  SR_TRY(est_check("est_rowsum", W, nk, 1));
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int i = 0; i < W; i++) {
    const float *r = L + (size_t)i * (size_t)nk;
    int64_t s = 0;
    if (gmax[i] != -INFINITY)
      for (int64_t j = 0; j < nk; j++)
        if (r[j] != -INFINITY) s += fix32(expf(r[j] - gmax[i]));
    sum[i] = s;
  }
  return SR_OK;
}

sr_status sr__cpu_est_accum(const float *L, int W, int64_t nk, int64_t qpos0,
                            const int64_t *run_start, int64_t run_len, const float *gmax,
                            const float *inv, int round_bf16, int64_t n, int64_t *vert,
                            int64_t *slash) {
  SR_TRY(est_check("est_accum", W, nk, run_len));
  if (nk == 0) return SR_OK;
  /* Tasks are chunks of consecutive keys inside one run: their offsets o = qpos0 + i - pos
   * form one range of kchunk + W - 1 values, summed in a task-local buffer and added to
   * slash[] afterwards (integer adds: the order does not matter). */
  const int64_t kchunk = 2048, per_run = (run_len + kchunk - 1) / kchunk;
  const int64_t nruns = (nk + run_len - 1) / run_len, tasks = nruns * per_run;
  int nomem = 0;
#pragma omp parallel num_threads(sr__cpu_threads())
  {
    int64_t *loc = sr__alloc((size_t)(kchunk + W) * sizeof(int64_t));
    if (!loc) {
#pragma omp atomic write
      nomem = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
      if (!loc) continue;
      const int64_t run = t / per_run, j0 = run * run_len + (t % per_run) * kchunk;
      int64_t j1 = j0 + kchunk;
      if (j1 > (run + 1) * run_len) j1 = (run + 1) * run_len;
      if (j1 > nk) j1 = nk;
      if (j0 >= j1) continue;
      const int64_t p0 = key_pos(run_start, run_len, j0), p1 = p0 + (j1 - j0) - 1;
      /* o ranges over [qpos0 - p1, qpos0 + W - 1 - p0]; loc[x] is o = qpos0 - p1 + x. */
      const int64_t obase = qpos0 - p1, nloc = (j1 - j0) + W - 1;
      memset(loc, 0, (size_t)nloc * sizeof(int64_t));
      for (int64_t j = j0; j < j1; j++) {
        const int64_t pos = p0 + (j - j0);
        int64_t vs = 0;
        for (int i = 0; i < W; i++) {
          const float x = L[(size_t)i * (size_t)nk + (size_t)j];
          if (x == -INFINITY || gmax[i] == -INFINITY) continue;
          float a = expf(x - gmax[i]) * inv[i];
          if (round_bf16) a = to_bf16(a);
          const int64_t f = fix32(a);
          vs += f;
          loc[qpos0 + i - pos - obase] += f;
        }
        vert[j] += vs;
      }
      for (int64_t x = 0; x < nloc; x++) {
        const int64_t o = obase + x;
        if (loc[x] != 0 && o >= 0 && o < n) {
#pragma omp atomic
          slash[o] += loc[x];
        }
      }
    }
    sr__free(loc);
  }
  if (nomem) return sr__seterr(SR_ERR_NOMEM, "est_accum: out of memory for scratch");
  return SR_OK;
}
