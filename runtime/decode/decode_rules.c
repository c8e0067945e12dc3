/*
 * decode_rules.c — the selection rules of the decode methods as pure functions (docs/METHODS.md
 * §2.4-2.6): SnapKV's and Ada-SnapKV's choice of kept tokens from the importance of every
 * prompt token, the global top-k merge of candidates (Quest's pages), and the budgets of the
 * paper's formulas. Every rank calls them on identical inputs and gets identical answers.
 */
#include "sr_decode.h"
#include "sr_internal.h"
#include "sr_vs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* (1 - sparsity) x n in float64 lands just below a whole number for many exact settings
 * (16000 x 0.1 = 1599.9999999999995): a tolerance far below one token keeps those whole. */
static double keep_tokens(const sr_config *cfg) {
  return (1.0 - cfg->sparsity) * (double)cfg->seq_len + 1e-6;
}

int64_t sr_decode_quest_budget(const sr_config *cfg) {
  if (cfg->token_budget > 0) return cfg->token_budget;
  /* The nearest whole page to the kept token count floor((1 - sparsity) n): this gives the
   * paper's Table 3 Quest budgets from its SnapKV capacities (16K and 128000 rows) exactly. */
  const int64_t keep = (int64_t)floor(keep_tokens(cfg));
  int64_t b = (int64_t)floor((double)keep / SR_PAGE + 0.5) * SR_PAGE;
  return b < SR_PAGE ? SR_PAGE : b;
}

int64_t sr_decode_capacity(const sr_config *cfg) {
  int64_t c = cfg->token_capacity > 0 ? cfg->token_capacity : (int64_t)floor(keep_tokens(cfg));
  return c < cfg->seq_len ? c : cfg->seq_len;
}

static int cmp_i32(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Pooled (window SR_SNAP_POOL, zero padding counted: the sum of the window; the divisor is a
 * constant and does not change the order) with the forced positions at INT64_MAX. */
static void pool_force_i64(const int64_t *imp, int64_t n, int64_t *out) {
  const int64_t r = SR_SNAP_POOL / 2;
  int64_t run = 0;
  for (int64_t t = 0; t < r && t < n; t++) run += imp[t];
  for (int64_t t = 0; t < n; t++) {
    if (t + r < n) run += imp[t + r];
    out[t] = run;
    if (t - r >= 0) run -= imp[t - r];
  }
  for (int64_t t = 0; t < n; t++)
    if (t < SR_SNAP_SINKS || t >= n - SR_SNAP_LOCAL) out[t] = INT64_MAX;
}

int64_t sr_snapkv_choose(const int64_t *imp, int64_t n, int64_t C, int32_t *keep) {
  if (C > n) C = n;
  if (C <= 0) return 0;
  int64_t *pooled = malloc((size_t)n * sizeof *pooled);
  if (!pooled) return -1;
  pool_force_i64(imp, n, pooled);
  sr_vs_topk(pooled, n, C, keep);
  qsort(keep, (size_t)C, sizeof *keep, cmp_i32);
  free(pooled);
  return C;
}

/* Order-preserving int64 key of a float >= 0 (its bits). Averages are formed in a fixed order
 * (the window, ascending), so every rank computes the same key. */
static int64_t fkey(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return (int64_t)u;
}

sr_status sr_ada_choose(const float *imp, int H, int64_t n, int64_t C, int32_t *keep,
                        int64_t *cnt) {
  if (C > n) C = n;
  int64_t m = C / 5 > 132 ? C / 5 : 132;
  if (m > C) m = C;
  const int64_t total = (int64_t)H * n;
  int64_t *key = calloc((size_t)(total > 0 ? total : 1), sizeof *key);
  int32_t *idx = malloc((size_t)(total > 0 ? total : 1) * sizeof *idx);
  if (!key || !idx) {
    free(key);
    free(idx);
    return sr__seterr(SR_ERR_NOMEM, "ada_snapkv: out of memory for %lld scores", (long long)total);
  }
  const int64_t r = SR_SNAP_POOL / 2;
  for (int g = 0; g < H; g++) {
    const float *x = imp + (size_t)g * n;
    int64_t *k = key + (size_t)g * n;
    for (int64_t t = 0; t < n; t++) {
      float s = 0.0f;
      for (int64_t u = t - r; u <= t + r; u++)
        if (u >= 0 && u < n) s += x[u];
      k[t] = (t < SR_SNAP_SINKS || t >= n - SR_SNAP_LOCAL) ? INT64_MAX
                                                           : fkey(s / (float)SR_SNAP_POOL);
    }
  }
  /* Floor: the best m of every head, marked by -1 in the flat array. */
  for (int g = 0; g < H; g++) {
    int64_t *k = key + (size_t)g * n;
    sr_vs_topk(k, n, m, idx);
    for (int64_t i = 0; i < m; i++) keep[(size_t)g * n + (size_t)i] = idx[i];
    cnt[g] = m;
  }
  for (int g = 0; g < H; g++)
    for (int64_t i = 0; i < m; i++) key[(size_t)g * n + keep[(size_t)g * n + i]] = -1;
  /* The rest over all heads at once (flat index: head, then position). */
  const int64_t rest = (int64_t)H * C - (int64_t)H * m;
  if (rest > 0) {
    sr_vs_topk(key, total, rest, idx);
    for (int64_t i = 0; i < rest; i++) {
      const int64_t g = idx[i] / n, t = idx[i] % n;
      keep[(size_t)g * n + (size_t)cnt[g]++] = (int32_t)t;
    }
  }
  for (int g = 0; g < H; g++) qsort(keep + (size_t)g * n, (size_t)cnt[g], sizeof *keep, cmp_i32);
  free(key);
  free(idx);
  return SR_OK;
}

typedef struct cand {
  float s;
  int32_t id;
} cand;

static int cmp_cand(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (x->s > y->s) return -1;
  if (x->s < y->s) return 1;
  return (x->id > y->id) - (x->id < y->id);
}

int64_t sr_decode_topk_merge(const float *score, const int32_t *id, int64_t ncand, int64_t k,
                             int32_t *ids) {
  cand *c = malloc((size_t)(ncand > 0 ? ncand : 1) * sizeof *c);
  if (!c) return -1;
  int64_t m = 0;
  for (int64_t i = 0; i < ncand; i++)
    if (score[i] != -INFINITY && !isnan(score[i])) c[m++] = (cand){score[i], id[i]};
  qsort(c, (size_t)m, sizeof *c, cmp_cand);
  const int64_t got = m < k ? m : k;
  for (int64_t i = 0; i < got; i++) ids[i] = c[i].id;
  free(c);
  return got;
}
