/*
 * test_decode.c — the decode path's rules (runtime/decode/sr_decode.h) and the CPU backend's
 * decode ops (kernels/kernels.h "Decode"), each against a naive float64 (or integer) reference
 * written here, on fresh random inputs (SR_TEST_SEED replays a run) with every output poisoned
 * (NaN / sentinel) before the call:
 *
 *  1. sr_decode_topk_merge: brute-force sort (score desc, id asc) on scores full of ties and
 *     -INFINITY candidates, k from 0 to beyond the candidates;
 *  2. sr_snapkv_choose: window sums of 21 by brute force, forced sinks / recent, sort-based top
 *     min(C, n); planted ties, C near / at / above n, a single huge spike;
 *  3. sr_ada_choose: pooled / 21 in float, per-head floor, global rest over (head, position);
 *     exact sets, totals, floors, float quotient ties (sums one float apart, equal / 21), a
 *     head that takes all of the rest;
 *  4. budgets: sr_decode_quest_budget / sr_decode_capacity, explicit and from sparsity;
 *  5. decode_fwd: own / shared / tail / padding entries, per_qhead 0 and 1, GQA group 4,
 *     d 64 and 128, an empty list, K/V rows outside every list NaN, a 2000-entry list (split-KV
 *     merge) against float64 softmax attention over exactly the union of rows;
 *  6. page_minmax / page_scores / page_topk: exact min/max, float64 page scores (group sum and
 *     per q-head), top-k with ties (ascending page order) and padding; entries outside the written range poisoned
 *     and checked untouched;
 *  7. est_colmax: expf(L - gmax) * inv, bf16 round-to-nearest-even (planted exact halfway
 *     cases), skipped rows / entries, max with the initial values;
 *  8. merge math: decode_fwd over two disjoint halves merged with the log-sum-exp rule here
 *     equals decode_fwd over the whole list (what the cross-rank merge relies on).
 */
#include "kernels.h"
#include "sr_config.h"
#include "sr_decode.h"
#include "sr_test.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

static uint64_t g_seed;

#define SENT 0x7eadbeef /* int32 sentinel of poisoned index outputs */

static int64_t rnd(uint64_t *s, int64_t lo, int64_t hi) { /* uniform in [lo, hi] */
  return lo + (int64_t)(sr_test_next(s) % (uint64_t)(hi - lo + 1));
}
static void poison_f(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = NAN;
}
static void poison_i(int32_t *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = SENT;
}
static void shuffle_i32(int32_t *x, int64_t n, uint64_t *s) {
  for (int64_t i = n - 1; i > 0; i--) {
    const int64_t j = rnd(s, 0, i);
    const int32_t t = x[i];
    x[i] = x[j];
    x[j] = t;
  }
}
static int i32_asc(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* ==== 1. sr_decode_topk_merge =============================================================== */

typedef struct fcand {
  float s;
  int32_t id;
} fcand;
static int fcand_cmp(const void *a, const void *b) {
  const fcand *x = a, *y = b;
  if (x->s != y->s) return x->s > y->s ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}
/* Every finite (or +inf) candidate, sorted by (score desc, id asc), the first k. */
static int64_t naive_merge(const float *score, const int32_t *id, int64_t n, int64_t k,
                           int32_t *ids) {
  fcand *c = malloc((size_t)(n + 1) * sizeof *c);
  int64_t m = 0;
  for (int64_t i = 0; i < n; i++)
    if (score[i] != -INFINITY) c[m++] = (fcand){score[i], id[i]};
  qsort(c, (size_t)m, sizeof *c, fcand_cmp);
  const int64_t got = m < k ? m : k;
  for (int64_t i = 0; i < got; i++) ids[i] = c[i].id;
  free(c);
  return got;
}

static void test_topk_merge(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x701;
  for (int trial = 0; trial < 300; trial++) {
    const int64_t n = trial < 3 ? trial : rnd(&s, 1, 400);
    float *score = malloc((size_t)(n + 1) * sizeof *score);
    int32_t *id = malloc((size_t)(n + 1) * sizeof *id);
    /* distinct ids (candidates of different pages / ranks), in random order, with gaps */
    for (int64_t i = 0; i < n; i++) id[i] = (int32_t)(i * 3 + rnd(&s, 0, 2));
    shuffle_i32(id, n, &s);
    int64_t ninf = 0;
    for (int64_t i = 0; i < n; i++) {
      const int64_t r = rnd(&s, 0, 9);
      if (r < 2) {
        score[i] = -INFINITY;
        ninf++;
      } else if (r < 7) {
        score[i] = (float)rnd(&s, -3, 3); /* small integer set: many ties */
      } else {
        score[i] = 4.0f * sr_test_uniform(&s);
      }
    }
    if (n > 5 && trial % 7 == 0) score[rnd(&s, 0, n - 1)] = INFINITY;
    ninf = 0;
    for (int64_t i = 0; i < n; i++) ninf += score[i] == -INFINITY;
    const int64_t finite = n - ninf;
    int64_t ks[4] = {rnd(&s, 0, n + 20), finite, finite + rnd(&s, 1, 30), n > 0 ? rnd(&s, 1, n) : 1};
    for (int ki = 0; ki < 4; ki++) {
      const int64_t k = ks[ki];
      int32_t *got = malloc((size_t)(k + 8) * sizeof *got), *want = malloc((size_t)(k + 1) * sizeof *want);
      poison_i(got, (size_t)k + 8);
      const int64_t wn = naive_merge(score, id, n, k, want);
      const int64_t gn = sr_decode_topk_merge(score, id, n, k, got);
      if (gn != wn)
        fail_msg("topk_merge trial %d: n %lld (%lld -inf), k %lld: returned %lld, want %lld", trial,
                 (long long)n, (long long)ninf, (long long)k, (long long)gn, (long long)wn);
      if (k > finite) assert_int_equal(gn, finite); /* k larger than the candidates */
      for (int64_t i = 0; i < wn; i++)
        if (got[i] != want[i])
          fail_msg("topk_merge trial %d: n %lld k %lld: ids[%lld] = %d, want %d", trial,
                   (long long)n, (long long)k, (long long)i, got[i], want[i]);
      for (int64_t i = k; i < k + 8; i++) assert_int_equal(got[i], SENT); /* nothing past k */
      free(got);
      free(want);
    }
    free(score);
    free(id);
  }
}

/* ==== 2. sr_snapkv_choose =================================================================== */

typedef struct pcand {
  int forced;
  int64_t v;
  double f; /* float key (ada) */
  int64_t idx;
} pcand;
static int pcand_cmp_i(const void *a, const void *b) {
  const pcand *x = a, *y = b;
  if (x->forced != y->forced) return x->forced ? -1 : 1;
  if (!x->forced && x->v != y->v) return x->v > y->v ? -1 : 1; /* forced: all +inf */
  return (x->idx > y->idx) - (x->idx < y->idx);
}
static int pcand_cmp_f(const void *a, const void *b) {
  const pcand *x = a, *y = b;
  if (x->forced != y->forced) return x->forced ? -1 : 1;
  if (!x->forced && x->f != y->f) return x->f > y->f ? -1 : 1; /* forced: all +inf */
  return (x->idx > y->idx) - (x->idx < y->idx);
}
static int is_forced(int64_t t, int64_t n) { return t < 4 || t >= n - 128; }

static int64_t naive_snapkv(const int64_t *imp, int64_t n, int64_t C, int32_t *keep) {
  const int64_t Cp = C < n ? C : n;
  if (Cp <= 0) return 0;
  pcand *c = malloc((size_t)n * sizeof *c);
  for (int64_t t = 0; t < n; t++) {
    int64_t sum = 0;
    for (int64_t u = t - 10; u <= t + 10; u++)
      if (u >= 0 && u < n) sum += imp[u];
    c[t] = (pcand){is_forced(t, n), sum, 0.0, t};
  }
  qsort(c, (size_t)n, sizeof *c, pcand_cmp_i);
  for (int64_t i = 0; i < Cp; i++) keep[i] = (int32_t)c[i].idx;
  qsort(keep, (size_t)Cp, sizeof *keep, i32_asc);
  free(c);
  return Cp;
}

/* Runs sr_snapkv_choose and the reference; returns the kept positions (caller frees). */
static int32_t *check_snapkv(const int64_t *imp, int64_t n, int64_t C, const char *what,
                             int64_t *count) {
  const int64_t cap = (C > 0 ? C : 0) + 8;
  int32_t *got = malloc((size_t)cap * sizeof *got), *want = malloc((size_t)cap * sizeof *want);
  poison_i(got, (size_t)cap);
  const int64_t wn = naive_snapkv(imp, n, C, want);
  const int64_t gn = sr_snapkv_choose(imp, n, C, got);
  if (gn != wn)
    fail_msg("snapkv %s: n %lld C %lld: returned %lld, want %lld", what, (long long)n,
             (long long)C, (long long)gn, (long long)wn);
  for (int64_t i = 0; i < wn; i++)
    if (got[i] != want[i])
      fail_msg("snapkv %s: n %lld C %lld: keep[%lld] = %d, want %d", what, (long long)n,
               (long long)C, (long long)i, got[i], want[i]);
  for (int64_t i = wn; i < cap && i < wn + 8; i++)
    if (got[i] != SENT) fail_msg("snapkv %s: keep[%lld] written past the count", what, (long long)i);
  free(want);
  *count = gn;
  return got;
}

static void test_snapkv(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x5a9;
  int64_t cnt;
  /* random importance from a small integer set (planted ties) and general values */
  for (int trial = 0; trial < 120; trial++) {
    const int64_t n = trial < 10 ? rnd(&s, 1, 140) : rnd(&s, 1, 3000);
    int64_t *imp = malloc((size_t)n * sizeof *imp);
    const int mode = trial % 3;
    for (int64_t t = 0; t < n; t++)
      imp[t] = mode == 0 ? rnd(&s, 0, 3) : mode == 1 ? rnd(&s, 0, 1000000) : rnd(&s, 0, 1) << 40;
    if (mode != 0) imp[rnd(&s, 0, n - 1)] += 1; /* never all zeros */
    const int64_t Cs[7] = {rnd(&s, 0, n), n - 1, n - 2, n, n + rnd(&s, 1, 50), rnd(&s, 133, 300),
                           rnd(&s, 1, 140)};
    for (int ci = 0; ci < 7; ci++) {
      if (Cs[ci] < 0) continue;
      int32_t *k = check_snapkv(imp, n, Cs[ci], "random", &cnt);
      for (int64_t i = 1; i < cnt; i++) assert_true(k[i - 1] < k[i]); /* ascending, distinct */
      if (Cs[ci] >= n) /* keep all */
        for (int64_t i = 0; i < n; i++) assert_int_equal(k[i], i);
      /* forced positions are always kept when C covers them */
      int64_t nforced = 0;
      for (int64_t t = 0; t < n; t++) nforced += is_forced(t, n);
      if (Cs[ci] >= nforced) {
        int64_t seen = 0;
        for (int64_t i = 0; i < cnt; i++) seen += is_forced(k[i], n);
        assert_int_equal(seen, nforced);
      }
      free(k);
    }
    free(imp);
  }
  /* a single huge spike: its neighbours within 10 come along through pooling */
  for (int trial = 0; trial < 20; trial++) {
    const int64_t n = rnd(&s, 400, 2500);
    int64_t *imp = malloc((size_t)n * sizeof *imp);
    for (int64_t t = 0; t < n; t++) imp[t] = rnd(&s, 0, 5);
    const int64_t p = rnd(&s, 4 + 11, n - 128 - 12);
    imp[p] = (int64_t)1 << 40;
    const int64_t C = 4 + 128 + 21;
    int32_t *k = check_snapkv(imp, n, C, "spike", &cnt);
    assert_int_equal(cnt, C);
    /* exactly the forced positions and the window around the spike */
    int64_t i = 0;
    for (int64_t t = 0; t < n; t++)
      if (is_forced(t, n) || (t >= p - 10 && t <= p + 10)) {
        if (i >= cnt || k[i] != t)
          fail_msg("snapkv spike at %lld (n %lld): position %lld missing", (long long)p,
                   (long long)n, (long long)t);
        i++;
      }
    assert_int_equal(i, cnt);
    free(k);
    /* a larger C keeps the window too */
    k = check_snapkv(imp, n, C + 40, "spike+40", &cnt);
    int64_t win = 0;
    for (int64_t j = 0; j < cnt; j++) win += k[j] >= p - 10 && k[j] <= p + 10;
    assert_int_equal(win, 21);
    free(k);
    free(imp);
  }
}

/* ==== 3. sr_ada_choose ====================================================================== */

/* Written from the description: pooled (float, ascending u, / 21), forced, per-head top m, then
 * the best H*C' - H*m of the rest over (head, position). keep [H][n], cnt [H]. */
static void naive_ada(const float *imp, int H, int64_t n, int64_t C, int32_t *keep, int64_t *cnt,
                      int64_t *m_out) {
  const int64_t Cp = C < n ? C : n;
  int64_t m = Cp / 5 > 132 ? Cp / 5 : 132;
  if (m > Cp) m = Cp;
  *m_out = m;
  pcand *all = malloc((size_t)(H * n + 1) * sizeof *all);
  pcand *one = malloc((size_t)(n + 1) * sizeof *one);
  uint8_t *chosen = calloc((size_t)(H * n + 1), 1);
  for (int g = 0; g < H; g++) {
    for (int64_t t = 0; t < n; t++) {
      float sum = 0.0f;
      for (int64_t u = t - 10; u <= t + 10; u++)
        if (u >= 0 && u < n) sum += imp[(size_t)g * n + u];
      const float pooled = sum / 21.0f;
      one[t] = (pcand){is_forced(t, n), 0, (double)pooled, t};
      all[g * n + t] = (pcand){is_forced(t, n), 0, (double)pooled, g * n + t};
    }
    qsort(one, (size_t)n, sizeof *one, pcand_cmp_f);
    cnt[g] = 0;
    for (int64_t i = 0; i < m; i++) chosen[g * n + one[i].idx] = 1;
  }
  int64_t nrest = 0;
  for (int64_t f = 0; f < H * n; f++)
    if (!chosen[f]) all[nrest++] = all[f];
  qsort(all, (size_t)nrest, sizeof *all, pcand_cmp_f);
  const int64_t extra = (int64_t)H * Cp - (int64_t)H * m;
  for (int64_t i = 0; i < extra && i < nrest; i++) chosen[all[i].idx] = 1;
  for (int g = 0; g < H; g++)
    for (int64_t t = 0; t < n; t++)
      if (chosen[g * n + t]) keep[(size_t)g * n + cnt[g]++] = (int32_t)t;
  free(all);
  free(one);
  free(chosen);
}

static void check_ada(const float *imp, int H, int64_t n, int64_t C, const char *what) {
  int32_t *keep = malloc((size_t)(H * n + 1) * sizeof *keep);
  int32_t *want = malloc((size_t)(H * n + 1) * sizeof *want);
  int64_t *cnt = malloc((size_t)H * sizeof *cnt), *wcnt = malloc((size_t)H * sizeof *wcnt);
  poison_i(keep, (size_t)(H * n + 1));
  for (int g = 0; g < H; g++) cnt[g] = -12345;
  int64_t m;
  naive_ada(imp, H, n, C, want, wcnt, &m);
  const sr_status st = sr_ada_choose(imp, H, n, C, keep, cnt);
  if (st != SR_OK) fail_msg("ada %s: status %d: %s", what, (int)st, sr_last_error());
  const int64_t Cp = C < n ? C : n;
  int64_t total = 0;
  for (int g = 0; g < H; g++) {
    total += cnt[g];
    if (cnt[g] != wcnt[g])
      fail_msg("ada %s: H %d n %lld C %lld: head %d keeps %lld, want %lld", what, H, (long long)n,
               (long long)C, g, (long long)cnt[g], (long long)wcnt[g]);
    if (cnt[g] < m)
      fail_msg("ada %s: head %d keeps %lld < floor %lld", what, g, (long long)cnt[g], (long long)m);
    for (int64_t i = 0; i < cnt[g]; i++) {
      if (i > 0 && keep[(size_t)g * n + i - 1] >= keep[(size_t)g * n + i])
        fail_msg("ada %s: head %d not ascending at %lld", what, g, (long long)i);
      if (keep[(size_t)g * n + i] != want[(size_t)g * n + i])
        fail_msg("ada %s: H %d n %lld C %lld: head %d keep[%lld] = %d, want %d", what, H,
                 (long long)n, (long long)C, g, (long long)i, keep[(size_t)g * n + i],
                 want[(size_t)g * n + i]);
    }
  }
  if (total != (int64_t)H * (Cp > 0 ? Cp : 0))
    fail_msg("ada %s: total kept %lld, want H*C' = %lld", what, (long long)total,
             (long long)H * Cp);
  free(keep);
  free(want);
  free(cnt);
  free(wcnt);
}

static void test_ada(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xada;
  const int Hs[4] = {1, 2, 4, 8};
  for (int trial = 0; trial < 40; trial++) {
    const int H = Hs[trial % 4];
    const int64_t n = trial < 4 ? rnd(&s, 1, 140) : rnd(&s, 141, 2500);
    float *imp = malloc((size_t)H * n * sizeof *imp);
    const int ints = trial % 2 == 0;
    for (int64_t i = 0; i < H * n; i++)
      imp[i] = ints ? (float)rnd(&s, 0, 3) : (sr_test_uniform(&s) + 1.0f) * 0.5f;
    imp[rnd(&s, 0, H * n - 1)] += 1.0f; /* never all zeros */
    const int64_t Cs[8] = {rnd(&s, 1, 131), 132, rnd(&s, 133, 700), rnd(&s, 661, 2000),
                           n - 1, n, n + 17, rnd(&s, 0, n)};
    for (int ci = 0; ci < 8; ci++)
      if (Cs[ci] >= 0) check_ada(imp, H, n, Cs[ci], ints ? "ints" : "floats");
    free(imp);
  }
  /* the pooled value is the float quotient sum / 21: two window sums one float apart whose
   * quotients round to the same float are a tie (lower position / head wins), although the
   * larger sum would win without the division */
  for (int trial = 0; trial < 8; trial++) {
    float X = 1000.0f + (float)rnd(&s, 0, 100000) * 0.01f, Y;
    for (;;) {
      Y = nextafterf(X, INFINITY);
      if (X / 21.0f == Y / 21.0f) break;
      X = Y;
    }
    const int H = trial % 2 ? 2 : 1;
    const int64_t n = 300; /* forced 0..3 and 172..299; free 4..171 */
    float *imp = calloc((size_t)H * n, sizeof *imp);
    const int64_t a = rnd(&s, 15, 60), b = rnd(&s, 100, 160);
    if (H == 1) {
      imp[a] = X; /* lower position, smaller sum */
      imp[b] = Y;
    } else {
      imp[b] = X;     /* head 0: smaller sum */
      imp[n + a] = Y; /* head 1: larger sum, lower position */
    }
    const int64_t C = H == 1 ? 132 + 21 : 132 + 11; /* the rest: 21 of 42 tied, or 22 */
    check_ada(imp, H, n, C, "quotient ties");
    int32_t *keep = malloc((size_t)H * n * sizeof *keep);
    int64_t cnt[2];
    assert_int_equal(sr_ada_choose(imp, H, n, C, keep, cnt), SR_OK);
    /* the X window wins the tie: head 0 (H 2) or the lower position a (H 1) */
    assert_int_equal(cnt[0], 132 + 21);
    if (H == 2) assert_int_equal(cnt[1], 133);
    const int64_t wc = H == 1 ? a : b;
    int64_t in = 0;
    for (int64_t i = 0; i < cnt[0]; i++) in += keep[i] >= wc - 10 && keep[i] <= wc + 10;
    assert_int_equal(in, 21);
    free(keep);
    free(imp);
  }
  /* one head far more important than the others takes (almost) all of the rest; the others
   * keep their floor: the allocation is global, not per head */
  for (int trial = 0; trial < 6; trial++) {
    const int H = 4;
    const int64_t n = rnd(&s, 4000, 6000), C = rnd(&s, 700, 1000);
    float *imp = malloc((size_t)H * n * sizeof *imp);
    const int hot = (int)rnd(&s, 0, H - 1);
    for (int g = 0; g < H; g++)
      for (int64_t t = 0; t < n; t++) imp[(size_t)g * n + t] = (float)rnd(&s, 0, 3) + (g == hot ? 100.0f : 0.0f);
    check_ada(imp, H, n, C, "hot head");
    int32_t *keep = malloc((size_t)H * n * sizeof *keep);
    int64_t cnt[4];
    assert_int_equal(sr_ada_choose(imp, H, n, C, keep, cnt), SR_OK);
    const int64_t m = C / 5 > 132 ? C / 5 : 132;
    for (int g = 0; g < H; g++) {
      if (g == hot) assert_int_equal(cnt[g], C + (H - 1) * (C - m));
      else assert_int_equal(cnt[g], m);
    }
    free(keep);
    free(imp);
  }
}

/* ==== 4. budgets ============================================================================ */

static void test_budgets(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xb06;
  sr_config c;
  sr_config_defaults(&c);
  c.phase = SR_PHASE_DECODE;
  c.seq_len = 16384;
  c.sparsity = 0.95;
  c.token_budget = 0;
  c.token_capacity = 0;
  assert_int_equal(sr_decode_quest_budget(&c), 816);
  assert_int_equal(sr_decode_capacity(&c), 819);
  c.sparsity = 0.9;
  c.seq_len = 4096; /* 409.6: 25.6 pages -> 26 */
  assert_int_equal(sr_decode_quest_budget(&c), 416);
  assert_int_equal(sr_decode_capacity(&c), 409);
  c.sparsity = 0.75;
  c.seq_len = 8192; /* exactly 2048 */
  assert_int_equal(sr_decode_quest_budget(&c), 2048);
  assert_int_equal(sr_decode_capacity(&c), 2048);
  c.sparsity = 0.999;
  c.seq_len = 1024; /* 1.024: at least one page */
  assert_int_equal(sr_decode_quest_budget(&c), 16);
  /* explicit keys win over sparsity */
  c.seq_len = 16384;
  c.sparsity = 0.95;
  c.token_budget = 256;
  c.token_capacity = 1000;
  assert_int_equal(sr_decode_quest_budget(&c), 256);
  assert_int_equal(sr_decode_capacity(&c), 1000);
  /* a capacity beyond the prompt keeps the prompt */
  c.seq_len = 512;
  c.token_capacity = 4096;
  assert_int_equal(sr_decode_capacity(&c), 512);
  /* the paper's Table 3: SnapKV capacities and Quest budgets at 16K and 128000 from its grid of
   * kept fractions (as the paper writes them, 4 decimals) */
  {
    const double keep[10] = {0.05, 0.0667, 0.1, 0.1333, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7};
    const int64_t cap16[10] = {819, 1092, 1638, 2183, 3276, 4915, 6553, 8192, 9830, 11468};
    const int64_t q16[10] = {816, 1088, 1632, 2176, 3280, 4912, 6560, 8192, 9824, 11472};
    const int64_t q128[10] = {6400,  8544,  12800, 17056, 25600,
                              38400, 51200, 64000, 76800, 89600};
    for (int i = 0; i < 10; i++) {
      c.token_budget = 0;
      c.token_capacity = 0;
      c.sparsity = 1.0 - keep[i];
      c.seq_len = 16384;
      assert_int_equal(sr_decode_capacity(&c), cap16[i]);
      assert_int_equal(sr_decode_quest_budget(&c), q16[i]);
      c.seq_len = 128000;
      assert_int_equal(sr_decode_quest_budget(&c), q128[i]);
    }
    /* exact products stay whole: 16000 x 0.1 is 1599.9999999999995 in float64 */
    c.seq_len = 16000;
    c.sparsity = 0.9;
    assert_int_equal(sr_decode_capacity(&c), 1600);
    assert_int_equal(sr_decode_quest_budget(&c), 1600);
  }
  /* random grid: floor((1 - sp) n) in float64, quest the nearest whole page (>= 16) */
  for (int i = 0; i < 500; i++) {
    sr_config r;
    sr_config_defaults(&r);
    r.phase = SR_PHASE_DECODE;
    r.seq_len = 16 * rnd(&s, 16, 8192);
    r.sparsity = (double)rnd(&s, 1, 999) / 1000.0 + 1e-7; /* off exact products */
    r.token_budget = 0;
    r.token_capacity = 0;
    const double keepf = (1.0 - r.sparsity) * (double)r.seq_len;
    const int64_t cap = (int64_t)floor(keepf);
    int64_t q = (int64_t)floor((double)cap / 16 + 0.5) * 16;
    if (q < 16) q = 16;
    if (sr_decode_quest_budget(&r) != q || sr_decode_capacity(&r) != (cap < r.seq_len ? cap : r.seq_len))
      fail_msg("budgets at n %lld sparsity %.7f: quest %lld (want %lld), capacity %lld (want %lld)",
               (long long)r.seq_len, r.sparsity, (long long)sr_decode_quest_budget(&r),
               (long long)q, (long long)sr_decode_capacity(&r), (long long)cap);
    const int explicit_b = 16 * (int)rnd(&s, 1, 64), explicit_c = (int)rnd(&s, 1, 20000);
    r.token_budget = explicit_b;
    r.token_capacity = explicit_c;
    assert_int_equal(sr_decode_quest_budget(&r), explicit_b);
    assert_int_equal(sr_decode_capacity(&r), explicit_c < r.seq_len ? explicit_c : r.seq_len);
  }
}

/* ==== 5. decode_fwd ========================================================================= */

typedef struct dcase {
  int nseq, qh, kvh, d, per_qhead;
  int64_t seg_rows, own_stride, nshared;
  float *q, *k, *v;              /* [nseq][qh][d], [nseq*kvh][seg_rows][d] x 2        */
  int32_t *own_row, *own_len;    /* [nlists][own_stride]                              */
  int32_t *shared_row, *shared_len;
  int32_t tail_row, tail_len;
  float scale;
} dcase;

static int64_t dc_nlists(const dcase *c) { return (int64_t)c->nseq * (c->per_qhead ? c->qh : c->kvh); }

static void dcase_free(dcase *c) {
  free(c->q);
  free(c->k);
  free(c->v);
  free(c->own_row);
  free(c->own_len);
  free(c->shared_row);
  free(c->shared_len);
  memset(c, 0, sizeof *c);
}

/* Own entries of one list: random sub-ranges of distinct 16-row slots in [lo, hi), in random
 * order, interleaved with len-0 padding (row 0); nreal real entries at most. */
static void fill_own(int32_t *row, int32_t *len, int64_t stride, int64_t lo, int64_t hi,
                     int64_t nreal, uint64_t *s) {
  const int64_t nslot = (hi - lo) / 16;
  int32_t *slots = malloc((size_t)(nslot + 1) * sizeof *slots);
  for (int64_t i = 0; i < nslot; i++) slots[i] = (int32_t)i;
  shuffle_i32(slots, nslot, s);
  if (nreal > nslot) nreal = nslot;
  if (nreal > stride) nreal = stride;
  for (int64_t e = 0; e < stride; e++) {
    row[e] = 0;
    len[e] = 0;
  }
  /* positions of the real entries among the stride */
  int32_t *pos = malloc((size_t)(stride + 1) * sizeof *pos);
  for (int64_t e = 0; e < stride; e++) pos[e] = (int32_t)e;
  shuffle_i32(pos, stride, s);
  for (int64_t i = 0; i < nreal; i++) {
    const int32_t l = (int32_t)rnd(s, 0, 16), off = (int32_t)rnd(s, 0, 16 - l);
    row[pos[i]] = (int32_t)(lo + 16 * slots[i] + off);
    len[pos[i]] = l;
  }
  free(slots);
  free(pos);
}

/* The rows list l attends (marks in mark[seg_rows]); returns the count. */
static int64_t list_rows(const dcase *c, int64_t l, uint8_t *mark) {
  memset(mark, 0, (size_t)c->seg_rows);
  int64_t cnt = 0;
  for (int64_t e = 0; e < c->own_stride; e++)
    for (int32_t r = 0; r < c->own_len[l * c->own_stride + e]; r++) {
      assert_false(mark[c->own_row[l * c->own_stride + e] + r]); /* test builds no duplicates */
      mark[c->own_row[l * c->own_stride + e] + r] = 1;
      cnt++;
    }
  for (int64_t e = 0; e < c->nshared; e++)
    for (int32_t r = 0; r < c->shared_len[e]; r++) {
      assert_false(mark[c->shared_row[e] + r]);
      mark[c->shared_row[e] + r] = 1;
      cnt++;
    }
  for (int32_t r = 0; r < c->tail_len; r++) {
    assert_false(mark[c->tail_row + r]);
    mark[c->tail_row + r] = 1;
    cnt++;
  }
  return cnt;
}

/* K/V rows that no list of their segment attends become NaN: reading them fails the test. */
static void nan_unused(dcase *c) {
  uint8_t *mark = malloc((size_t)c->seg_rows), *any = malloc((size_t)c->seg_rows);
  const int lpb = c->per_qhead ? c->qh : c->kvh, group = c->qh / c->kvh;
  for (int b = 0; b < c->nseq; b++)
    for (int g = 0; g < c->kvh; g++) {
      memset(any, 0, (size_t)c->seg_rows);
      for (int li = 0; li < lpb; li++) {
        if ((c->per_qhead ? li / group : li) != g) continue;
        list_rows(c, (int64_t)b * lpb + li, mark);
        for (int64_t r = 0; r < c->seg_rows; r++) any[r] |= mark[r];
      }
      const size_t seg = (size_t)b * c->kvh + (size_t)g;
      for (int64_t r = 0; r < c->seg_rows; r++)
        if (!any[r])
          for (int x = 0; x < c->d; x++) {
            c->k[(seg * c->seg_rows + (size_t)r) * c->d + x] = NAN;
            c->v[(seg * c->seg_rows + (size_t)r) * c->d + x] = NAN;
          }
    }
  free(mark);
  free(any);
}

/* float64 softmax attention of (b, h) over the union of the list's rows. */
static void naive_decode(const dcase *c, double *rout, double *rlse) {
  const int group = c->qh / c->kvh;
  uint8_t *mark = malloc((size_t)c->seg_rows);
  double *z = malloc((size_t)c->seg_rows * sizeof *z);
  for (int b = 0; b < c->nseq; b++)
    for (int h = 0; h < c->qh; h++) {
      const int64_t l = c->per_qhead ? (int64_t)b * c->qh + h : (int64_t)b * c->kvh + h / group;
      const size_t seg = (size_t)b * c->kvh + (size_t)(h / group);
      const float *q = c->q + ((size_t)b * c->qh + h) * c->d;
      double *o = rout + ((size_t)b * c->qh + h) * c->d;
      for (int x = 0; x < c->d; x++) o[x] = 0.0;
      const int64_t cnt = list_rows(c, l, mark);
      if (cnt == 0) {
        rlse[(size_t)b * c->qh + h] = -INFINITY;
        continue;
      }
      double mx = -INFINITY;
      for (int64_t r = 0; r < c->seg_rows; r++) {
        if (!mark[r]) continue;
        const float *kr = c->k + (seg * c->seg_rows + (size_t)r) * c->d;
        double dot = 0;
        for (int x = 0; x < c->d; x++) dot += (double)q[x] * (double)kr[x];
        z[r] = dot * (double)c->scale;
        if (z[r] > mx) mx = z[r];
      }
      double sum = 0;
      for (int64_t r = 0; r < c->seg_rows; r++) {
        if (!mark[r]) continue;
        const double p = exp(z[r] - mx);
        sum += p;
        const float *vr = c->v + (seg * c->seg_rows + (size_t)r) * c->d;
        for (int x = 0; x < c->d; x++) o[x] += p * (double)vr[x];
      }
      for (int x = 0; x < c->d; x++) o[x] /= sum;
      rlse[(size_t)b * c->qh + h] = mx + log(sum);
    }
  free(mark);
  free(z);
}

static sr_status run_decode(const dcase *c, float *out, float *lse) {
  const sr_backend *be = sr_backend_cpu();
  sr_decode_args a = {.nseq = c->nseq, .q_heads = c->qh, .kv_heads = c->kvh, .d = c->d,
                      .per_qhead = c->per_qhead, .q = c->q, .k = c->k, .v = c->v,
                      .seg_rows = c->seg_rows, .own_stride = c->own_stride,
                      .own_row = c->own_row, .own_len = c->own_len, .nshared = c->nshared,
                      .shared_row = c->shared_row, .shared_len = c->shared_len,
                      .tail_row = c->tail_row, .tail_len = c->tail_len, .scale = c->scale,
                      .out = out, .lse = lse};
  return be->decode_fwd(&a);
}

/* Runs decode_fwd on c and compares every (b, h) with the float64 reference. */
static void check_decode(const dcase *c, const char *what, int64_t empty_list) {
  const size_t nrow = (size_t)c->nseq * c->qh;
  float *out = malloc((nrow * c->d + 16) * sizeof *out), *lse = malloc((nrow + 16) * sizeof *lse);
  poison_f(out, nrow * c->d + 16);
  poison_f(lse, nrow + 16);
  for (int i = 0; i < 16; i++) out[nrow * c->d + i] = lse[nrow + i] = 4321.0f; /* guards */
  double *rout = malloc(nrow * c->d * sizeof *rout), *rlse = malloc(nrow * sizeof *rlse);
  naive_decode(c, rout, rlse);
  const sr_status st = run_decode(c, out, lse);
  if (st != SR_OK) fail_msg("decode_fwd %s: status %d: %s", what, (int)st, sr_last_error());
  double vmax = 0;
  for (size_t i = 0; i < (size_t)c->nseq * c->kvh * c->seg_rows * c->d; i++)
    if (!isnan(c->v[i]) && fabs(c->v[i]) > vmax) vmax = fabs(c->v[i]);
  const int group = c->qh / c->kvh;
  int nempty = 0;
  for (size_t r = 0; r < nrow; r++) {
    const int b = (int)(r / c->qh), h = (int)(r % c->qh);
    const int64_t l = c->per_qhead ? (int64_t)b * c->qh + h : (int64_t)b * c->kvh + h / group;
    if (rlse[r] == -INFINITY) {
      nempty++;
      if (!(lse[r] == -INFINITY))
        fail_msg("decode_fwd %s: (b %d, h %d) list %lld has no keys: lse %g, want -inf", what, b,
                 h, (long long)l, lse[r]);
      for (int x = 0; x < c->d; x++)
        if (out[r * c->d + x] != 0.0f)
          fail_msg("decode_fwd %s: (b %d, h %d) empty list: out[%d] = %g, want 0", what, b, h, x,
                   out[r * c->d + x]);
      continue;
    }
    if (!(fabs((double)lse[r] - rlse[r]) <= 1e-5))
      fail_msg("decode_fwd %s: (b %d, h %d) lse %.9g, want %.9g", what, b, h, lse[r], rlse[r]);
    for (int x = 0; x < c->d; x++)
      if (!(fabs((double)out[r * c->d + x] - rout[r * c->d + x]) <= 1e-5 * vmax))
        fail_msg("decode_fwd %s: (b %d, h %d) out[%d] %.9g, want %.9g", what, b, h, x,
                 out[r * c->d + x], rout[r * c->d + x]);
  }
  if (empty_list >= 0) assert_true(nempty > 0);
  for (int i = 0; i < 16; i++) {
    assert_true(out[nrow * c->d + i] == 4321.0f);
    assert_true(lse[nrow + i] == 4321.0f);
  }
  free(out);
  free(lse);
  free(rout);
  free(rlse);
}

/* A case: shared rows [0, 48) (3 entries and a padding one) and a tail at the segment's end
 * when `with_common`; own entries in between. empty_list >= 0: that list has no own keys (and
 * there are no common keys). */
static void make_dcase(dcase *c, int d, int per_qhead, int64_t own_stride, int64_t nreal,
                       int with_common, int64_t empty_list, uint64_t *s) {
  memset(c, 0, sizeof *c);
  c->nseq = 2;
  c->qh = 8;
  c->kvh = 2;
  c->d = d;
  c->per_qhead = per_qhead;
  c->own_stride = own_stride;
  const int64_t own_lo = 48, own_hi = own_lo + 16 * (nreal + 4);
  c->seg_rows = own_hi + 16 + 5;
  const size_t kvn = (size_t)c->nseq * c->kvh * c->seg_rows * d;
  c->q = malloc((size_t)c->nseq * c->qh * d * sizeof(float));
  c->k = malloc(kvn * sizeof(float));
  c->v = malloc(kvn * sizeof(float));
  sr_test_fill(c->q, (size_t)c->nseq * c->qh * d, 1.0f, s);
  sr_test_fill(c->k, kvn, 1.0f, s);
  sr_test_fill(c->v, kvn, 1.0f, s);
  /* a few keys aligned with the queries so the softmax is not flat */
  for (int i = 0; i < 20; i++) {
    const int b = (int)rnd(s, 0, c->nseq - 1), h = (int)rnd(s, 0, c->qh - 1);
    const size_t seg = (size_t)b * c->kvh + (size_t)(h / (c->qh / c->kvh));
    const int64_t r = rnd(s, 0, c->seg_rows - 1);
    for (int x = 0; x < d; x++)
      c->k[(seg * c->seg_rows + (size_t)r) * d + x] = c->q[((size_t)b * c->qh + h) * d + x];
  }
  c->scale = 1.0f / sqrtf((float)d);
  const int64_t nl = dc_nlists(c);
  c->own_row = malloc((size_t)(nl * own_stride + 1) * sizeof(int32_t));
  c->own_len = malloc((size_t)(nl * own_stride + 1) * sizeof(int32_t));
  for (int64_t l = 0; l < nl; l++) {
    const int64_t real = (l == empty_list || nreal == 0) ? 0 : rnd(s, nreal / 2 + 1, nreal);
    fill_own(c->own_row + l * own_stride, c->own_len + l * own_stride, own_stride, own_lo, own_hi,
             real, s);
  }
  c->nshared = 4;
  c->shared_row = malloc(4 * sizeof(int32_t));
  c->shared_len = malloc(4 * sizeof(int32_t));
  const int32_t srow[4] = {16, 0, 0, 32}, slen[4] = {16, 13, 0, 10};
  for (int i = 0; i < 4; i++) {
    c->shared_row[i] = srow[i];
    c->shared_len[i] = with_common ? slen[i] : 0;
  }
  c->tail_row = (int32_t)(own_hi + 3);
  c->tail_len = with_common ? (int32_t)rnd(s, 1, 16) : 0;
  if (c->tail_row + c->tail_len > c->seg_rows) c->tail_len = (int32_t)(c->seg_rows - c->tail_row);
  nan_unused(c);
}

static void test_decode_fwd(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xdec;
  char what[96];
  const int ds[2] = {64, 128};
  for (int di = 0; di < 2; di++)
    for (int pq = 0; pq < 2; pq++) {
      dcase c;
      /* own + shared + tail + padding */
      make_dcase(&c, ds[di], pq, 12, 9, 1, -1, &s);
      snprintf(what, sizeof what, "d %d per_qhead %d common", ds[di], pq);
      check_decode(&c, what, -1);
      dcase_free(&c);
      /* no common keys, one list with no keys at all */
      const int64_t nl = 2 * (pq ? 8 : 2);
      const int64_t el = rnd(&s, 0, nl - 1);
      make_dcase(&c, ds[di], pq, 10, 7, 0, el, &s);
      snprintf(what, sizeof what, "d %d per_qhead %d empty list %lld", ds[di], pq, (long long)el);
      check_decode(&c, what, el);
      dcase_free(&c);
      /* own_stride 0: only shared + tail */
      make_dcase(&c, ds[di], pq, 0, 0, 1, -1, &s);
      snprintf(what, sizeof what, "d %d per_qhead %d no own entries", ds[di], pq);
      check_decode(&c, what, -1);
      dcase_free(&c);
    }
  /* large: 2000 entries per list (many split-KV pieces), some padding */
  for (int pq = 0; pq < 2; pq++) {
    dcase c;
    make_dcase(&c, 64, pq, 2000, 1900, 1, -1, &s);
    snprintf(what, sizeof what, "large per_qhead %d", pq);
    check_decode(&c, what, -1);
    dcase_free(&c);
  }
}

/* ==== 6. page ops =========================================================================== */

static void test_page_minmax(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x9a6e;
  const sr_backend *be = sr_backend_cpu();
  for (int trial = 0; trial < 20; trial++) {
    const int d = trial % 2 ? 128 : 64;
    const int64_t nseg = rnd(&s, 1, 5), lp = rnd(&s, 2, 12);
    const int64_t p0 = rnd(&s, 0, lp - 1), np = rnd(&s, 1, lp - p0);
    const int len = trial % 3 == 0 ? 16 : (int)rnd(&s, 1, 16);
    const int64_t seg_rows = 16 * (p0 + np - 1) + len + rnd(&s, 0, 20);
    float *k = malloc((size_t)nseg * seg_rows * d * sizeof *k);
    sr_test_fill(k, (size_t)nseg * seg_rows * d, 3.0f, &s);
    const size_t pn = (size_t)nseg * lp * d;
    float *pmin = malloc(pn * sizeof *pmin), *pmax = malloc(pn * sizeof *pmax);
    poison_f(pmin, pn);
    poison_f(pmax, pn);
    const sr_status rc = be->page_minmax(k, nseg, seg_rows, d, lp, p0, np, len, pmin, pmax);
    if (rc != SR_OK) fail_msg("page_minmax: %s", sr_last_error());
    for (int64_t sg = 0; sg < nseg; sg++)
      for (int64_t p = 0; p < lp; p++)
        for (int x = 0; x < d; x++) {
          const size_t o = ((size_t)sg * lp + (size_t)p) * d + x;
          if (p < p0 || p >= p0 + np) {
            if (!isnan(pmin[o]) || !isnan(pmax[o]))
              fail_msg("page_minmax: page %lld outside [%lld, %lld) written", (long long)p,
                       (long long)p0, (long long)(p0 + np));
            continue;
          }
          double mn = INFINITY, mx = -INFINITY;
          for (int r = 0; r < len; r++) {
            const double v = k[((size_t)sg * seg_rows + (size_t)(16 * p + r)) * d + x];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
          }
          if ((double)pmin[o] != mn || (double)pmax[o] != mx)
            fail_msg("page_minmax: seg %lld page %lld dim %d (len %d): min %g max %g, want %g %g",
                     (long long)sg, (long long)p, x, len, pmin[o], pmax[o], mn, mx);
        }
    free(k);
    free(pmin);
    free(pmax);
  }
}

static void test_page_scores(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x5c0e;
  const sr_backend *be = sr_backend_cpu();
  for (int trial = 0; trial < 16; trial++) {
    const int nseq = 2, qh = 8, kvh = 2, group = 4, d = trial % 2 ? 128 : 64, pq = (trial / 2) % 2;
    const int64_t lp = rnd(&s, 3, 40), nvalid = trial < 2 ? lp : rnd(&s, 1, lp - 1);
    float *q = malloc((size_t)nseq * qh * d * sizeof *q);
    sr_test_fill(q, (size_t)nseq * qh * d, 1.5f, &s);
    const size_t pn = (size_t)nseq * kvh * lp * d;
    float *pmin = malloc(pn * sizeof *pmin), *pmax = malloc(pn * sizeof *pmax);
    for (size_t i = 0; i < pn; i++) {
      const float a = sr_test_uniform(&s), b = sr_test_uniform(&s);
      pmin[i] = a < b ? a : b;
      pmax[i] = a < b ? b : a;
    }
    const int64_t nl = (int64_t)nseq * (pq ? qh : kvh);
    float *sc = malloc((size_t)(nl * lp + 8) * sizeof *sc);
    poison_f(sc, (size_t)(nl * lp + 8));
    const sr_status rc = be->page_scores(q, nseq, qh, kvh, pq, pmin, pmax, lp, nvalid, d, sc);
    if (rc != SR_OK) fail_msg("page_scores: %s", sr_last_error());
    for (int64_t l = 0; l < nl; l++) {
      const int b = (int)(l / (pq ? qh : kvh)), li = (int)(l % (pq ? qh : kvh));
      const int g = pq ? li / group : li, h0 = pq ? li : li * group, G = pq ? 1 : group;
      for (int64_t p = 0; p < lp; p++) {
        const float got = sc[l * lp + p];
        if (p >= nvalid) {
          if (!isnan(got))
            fail_msg("page_scores: list %lld page %lld >= nvalid %lld written", (long long)l,
                     (long long)p, (long long)nvalid);
          continue;
        }
        double ref = 0, mag = 0;
        const float *mn = pmin + (((size_t)b * kvh + g) * lp + (size_t)p) * d;
        const float *mx = pmax + (((size_t)b * kvh + g) * lp + (size_t)p) * d;
        for (int j = 0; j < G; j++) {
          const float *qq = q + ((size_t)b * qh + (size_t)(h0 + j)) * d;
          for (int x = 0; x < d; x++) {
            const double u = (double)qq[x] * mn[x], v = (double)qq[x] * mx[x];
            ref += u > v ? u : v;
            mag += fabs(u > v ? u : v);
          }
        }
        if (!(fabs((double)got - ref) <= 1e-5 * mag + 1e-6))
          fail_msg("page_scores per_qhead %d: list %lld page %lld: %.9g, want %.9g", pq,
                   (long long)l, (long long)p, got, ref);
      }
    }
    for (int i = 0; i < 8; i++) assert_true(isnan(sc[nl * lp + i]));
    free(q);
    free(pmin);
    free(pmax);
    free(sc);
  }
}

static void test_page_topk(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x70b;
  const sr_backend *be = sr_backend_cpu();
  for (int trial = 0; trial < 60; trial++) {
    const int64_t nl = rnd(&s, 1, 6), lp = rnd(&s, 1, 300);
    const int64_t nvalid = trial % 5 == 0 ? lp : rnd(&s, 0, lp);
    const int ks[5] = {(int)rnd(&s, 1, 8), 16, (int)nvalid, (int)(nvalid + rnd(&s, 1, 9)), 0};
    float *sc = malloc((size_t)(nl * lp) * sizeof *sc);
    for (int64_t l = 0; l < nl; l++)
      for (int64_t p = 0; p < lp; p++)
        sc[l * lp + p] = p >= nvalid ? 1e30f /* must not be looked at */
                         : trial % 2 ? (float)rnd(&s, -4, 4)
                                     : 10.0f * sr_test_uniform(&s);
    for (int ki = 0; ki < 5; ki++) {
      const int k = ks[ki];
      const size_t n = (size_t)(nl * k) + 8;
      int32_t *row = malloc(n * sizeof *row), *len = malloc(n * sizeof *len);
      float *cand = malloc(n * sizeof *cand);
      poison_i(row, n);
      poison_i(len, n);
      poison_f(cand, n);
      const sr_status rc = be->page_topk(sc, nl, lp, nvalid, k, row, len, cand);
      if (rc != SR_OK) fail_msg("page_topk: %s", sr_last_error());
      fcand *ref = malloc((size_t)(nvalid + 1) * sizeof *ref);
      for (int64_t l = 0; l < nl; l++) {
        for (int64_t p = 0; p < nvalid; p++) ref[p] = (fcand){sc[l * lp + p], (int32_t)p};
        qsort(ref, (size_t)nvalid, sizeof *ref, fcand_cmp);
        /* the chosen k (ranked), then in ascending page order as the op writes them */
        const int64_t kk = k < nvalid ? k : nvalid;
        for (int64_t a = 1; a < kk; a++) {
          const fcand v = ref[a];
          int64_t z = a - 1;
          for (; z >= 0 && ref[z].id > v.id; z--) ref[z + 1] = ref[z];
          ref[z + 1] = v;
        }
        for (int64_t i = 0; i < k; i++) {
          const size_t o = (size_t)(l * k + i);
          if (i < nvalid) {
            if (row[o] != 16 * ref[i].id || len[o] != 16 || cand[o] != ref[i].s)
              fail_msg("page_topk trial %d list %lld k %d nvalid %lld: slot %lld = (row %d, len %d, "
                       "%g), want (row %d, 16, %g)", trial, (long long)l, k, (long long)nvalid,
                       (long long)i, row[o], len[o], cand[o], 16 * ref[i].id, ref[i].s);
          } else if (len[o] != 0 || cand[o] != -INFINITY) {
            fail_msg("page_topk: list %lld padding slot %lld: len %d cand %g, want 0 -inf",
                     (long long)l, (long long)i, len[o], cand[o]);
          }
        }
      }
      for (size_t i = (size_t)(nl * k); i < n; i++)
        assert_true(row[i] == SENT && len[i] == SENT && isnan(cand[i]));
      free(ref);
      free(row);
      free(len);
      free(cand);
    }
    free(sc);
  }
}

/* ==== 7. est_colmax ========================================================================= */

/* bf16 round to nearest, ties to even, of a finite float x >= 0: the two bf16 neighbours and
 * their distances in float64. */
static float bf16_rne(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  const uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
  float flo, fhi;
  memcpy(&flo, &lo, sizeof flo);
  memcpy(&fhi, &hi, sizeof fhi);
  const double dl = (double)x - (double)flo, dh = (double)fhi - (double)x;
  if (dl < dh) return flo;
  if (dh < dl) return fhi;
  return (lo >> 16) & 1u ? fhi : flo;
}

static void test_est_colmax(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xc01;
  const sr_backend *be = sr_backend_cpu();
  /* the reference's rounding on known values */
  assert_true(bf16_rne(1.0f + 0x1p-8f) == 1.0f);                  /* tie -> even (down) */
  assert_true(bf16_rne(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);    /* tie -> even (up)   */
  assert_true(bf16_rne(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);
  for (int trial = 0; trial < 30; trial++) {
    const int W = (int)rnd(&s, 1, 40), rb = trial % 2;
    const int64_t nk = rnd(&s, 1, 400);
    float *L = malloc((size_t)W * nk * sizeof *L), *gmax = malloc((size_t)W * sizeof *gmax);
    float *inv = malloc((size_t)W * sizeof *inv);
    for (int i = 0; i < W; i++) {
      float mx = -INFINITY;
      for (int64_t j = 0; j < nk; j++) {
        float v = rnd(&s, 0, 9) == 0 ? -INFINITY : 6.0f * sr_test_uniform(&s);
        L[(size_t)i * nk + j] = v;
        if (v > mx) mx = v;
      }
      gmax[i] = rnd(&s, 0, 3) == 0 ? mx + 0.5f * (sr_test_uniform(&s) + 1.0f) : mx;
      inv[i] = 1.0f / (1.0f + 50.0f * (sr_test_uniform(&s) + 1.0f));
      if (rnd(&s, 0, 7) == 0) gmax[i] = -INFINITY; /* skipped row (its L may be anything) */
      if (rnd(&s, 0, 5) == 0 && gmax[i] != -INFINITY) {
        /* exact bf16 halfway values: L == gmax gives expf(0) * inv = inv */
        const float ties[4] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 0.5f + 0x1p-9f,
                               0.5f + 3 * 0x1p-9f};
        inv[i] = ties[rnd(&s, 0, 3)];
        for (int t = 0; t < 3; t++) L[(size_t)i * nk + rnd(&s, 0, nk - 1)] = gmax[i];
      }
      if (gmax[i] == -INFINITY && rnd(&s, 0, 1)) L[(size_t)i * nk] = 100.0f; /* would win */
    }
    float *col = malloc((size_t)(nk + 8) * sizeof *col), *ref = malloc((size_t)nk * sizeof *ref);
    for (int64_t j = 0; j < nk; j++) {
      const int64_t r = rnd(&s, 0, 5);
      col[j] = r == 0 ? 5.0f /* above every A */ : r == 1 ? 0.0f : 0.02f * (sr_test_uniform(&s) + 1.0f);
      if (rnd(&s, 0, 9) == 0) { /* a column with no visible key keeps a -inf / negative start */
        for (int i = 0; i < W; i++) L[(size_t)i * nk + j] = -INFINITY;
        col[j] = rnd(&s, 0, 1) ? -INFINITY : -1.0f;
      } else if (rnd(&s, 0, 9) == 0) {
        col[j] = -INFINITY;
      }
    }
    for (int i = 0; i < 8; i++) col[nk + i] = 777.0f;
    for (int64_t j = 0; j < nk; j++) {
      double best = col[j];
      for (int i = 0; i < W; i++) {
        const float l = L[(size_t)i * nk + j];
        if (gmax[i] == -INFINITY || l == -INFINITY) continue;
        float p = expf(l - gmax[i]) * inv[i];
        if (rb) p = bf16_rne(p);
        if ((double)p > best) best = p;
      }
      ref[j] = (float)best;
    }
    const sr_status rc = be->est_colmax(L, W, nk, gmax, inv, rb, col);
    if (rc != SR_OK) fail_msg("est_colmax: %s", sr_last_error());
    for (int64_t j = 0; j < nk; j++)
      if (col[j] != ref[j])
        fail_msg("est_colmax trial %d (bf16 %d): column %lld = %.9g, want %.9g", trial, rb,
                 (long long)j, col[j], ref[j]);
    for (int i = 0; i < 8; i++) assert_true(col[nk + i] == 777.0f);
    free(L);
    free(gmax);
    free(inv);
    free(col);
    free(ref);
  }
}

/* ==== 8. merge math ========================================================================= */

static void test_merge_halves(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x3e6;
  for (int trial = 0; trial < 8; trial++) {
    const int d = trial % 2 ? 128 : 64, pq = (trial / 2) % 2;
    dcase c;
    make_dcase(&c, d, pq, 150, 100, trial < 4, -1, &s);
    const int64_t nl = dc_nlists(&c), stride = c.own_stride;
    /* halves: own entries split at random; shared and tail go to half A */
    dcase A = c, B = c;
    A.own_len = malloc((size_t)(nl * stride) * sizeof(int32_t));
    B.own_len = malloc((size_t)(nl * stride) * sizeof(int32_t));
    const int64_t allb = rnd(&s, 0, nl - 1), alla = trial >= 4 ? rnd(&s, 0, nl - 1) : -1;
    for (int64_t e = 0; e < nl * stride; e++) {
      const int64_t l = e / stride;
      const int toA = l == allb ? 0 : l == alla ? 1 : (int)rnd(&s, 0, 1);
      A.own_len[e] = toA ? c.own_len[e] : 0;
      B.own_len[e] = toA ? 0 : c.own_len[e];
    }
    int32_t zero[4] = {0, 0, 0, 0};
    B.shared_len = zero;
    B.tail_len = 0;
    const size_t nrow = (size_t)c.nseq * c.qh;
    float *ow = malloc(nrow * d * sizeof *ow), *lw = malloc(nrow * sizeof *lw);
    float *oa = malloc(nrow * d * sizeof *oa), *la = malloc(nrow * sizeof *la);
    float *ob = malloc(nrow * d * sizeof *ob), *lb = malloc(nrow * sizeof *lb);
    poison_f(ow, nrow * d);
    poison_f(oa, nrow * d);
    poison_f(ob, nrow * d);
    poison_f(lw, nrow);
    poison_f(la, nrow);
    poison_f(lb, nrow);
    assert_int_equal(run_decode(&c, ow, lw), SR_OK);
    assert_int_equal(run_decode(&A, oa, la), SR_OK);
    assert_int_equal(run_decode(&B, ob, lb), SR_OK);
    int finite = 0;
    for (size_t r = 0; r < nrow; r++) {
      const double a = la[r], b = lb[r];
      const double M = a > b ? a : b;
      double mo[128], ml;
      if (M == -INFINITY) {
        for (int x = 0; x < d; x++) mo[x] = 0.0;
        ml = -INFINITY;
      } else {
        const double wa = a == -INFINITY ? 0.0 : exp(a - M), wb = b == -INFINITY ? 0.0 : exp(b - M);
        for (int x = 0; x < d; x++) mo[x] = (wa * oa[r * d + x] + wb * ob[r * d + x]) / (wa + wb);
        ml = M + log(wa + wb);
        finite += a != -INFINITY && b != -INFINITY;
      }
      if (!(ml == lw[r] || fabs(ml - (double)lw[r]) <= 1e-6))
        fail_msg("merge trial %d row %zu: merged lse %.9g, whole %.9g (halves %.9g %.9g)", trial, r,
                 ml, lw[r], a, b);
      for (int x = 0; x < d; x++)
        if (!(fabs(mo[x] - (double)ow[r * d + x]) <= 1e-6))
          fail_msg("merge trial %d row %zu dim %d: merged %.9g, whole %.9g", trial, r, x, mo[x],
                   ow[r * d + x]);
    }
    assert_true(finite > 0); /* some rows really had two non-empty halves */
    free(ow);
    free(lw);
    free(oa);
    free(la);
    free(ob);
    free(lb);
    free(A.own_len);
    free(B.own_len);
    dcase_free(&c);
  }
}

int main(void) {
  g_seed = sr_test_seed("test_decode");
  sr_cpu_set_threads(2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_topk_merge),  cmocka_unit_test(test_snapkv),
      cmocka_unit_test(test_ada),         cmocka_unit_test(test_budgets),
      cmocka_unit_test(test_decode_fwd),  cmocka_unit_test(test_page_minmax),
      cmocka_unit_test(test_page_scores), cmocka_unit_test(test_page_topk),
      cmocka_unit_test(test_est_colmax),  cmocka_unit_test(test_merge_halves),
  };
  return cmocka_run_group_tests_name("test_decode", tests, NULL, NULL);
}
