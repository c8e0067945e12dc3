/*
 * test_vs.c — the rules of Vertical-Slash and FlexPrefill (runtime/methods/sr_vs.h,
 * docs/METHODS.md §2.1-2.2), each against a naive reference written here:
 *
 *  - topk: a sort-based reference on arrays full of ties (descending, ties to the lower index);
 *  - cover: alpha = 0 / 1, exact dyadic boundaries, a float64 sort-and-sum reference;
 *  - pick: forced keys 0..3 and offsets 0..63, clipping, order, inputs left alone;
 *  - convert: hand-derived cases (merging, aligned slashes, far and skipped offsets, columns in
 *    tiles / gaps / after qs, bq != bk) and a per-row bitmap reference on random patterns;
 *  - select: every row of every rank's plan (both shard schemes) against the bitmap reference;
 *  - the estimate: a float64 causal softmax of the last W queries (fp32 and bf16-rounded),
 *    summed per key and per diagonal, on inputs with a planted heavy key and diagonal; then the
 *    Vertical-Slash selection through the method table: structural rules, the planted
 *    features, and equality with a naive pick + conversion of the same sums;
 *  - FlexPrefill: alpha = 0 is Vertical-Slash with V = S = min_budget (fp32 sums), per-head
 *    budgets max(min_budget, cover) for alpha > 0, growing with alpha;
 *  - budgets: the paper's Table 3 at the grid, monotonicity, the FlexPrefill table;
 *  - (MPI, `test_vs mpi` on 1..4 ranks) the estimate and the selections are bit-identical to
 *    a single-rank run, for both shard schemes and both methods.
 */
#include "kernels.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_method.h"
#include "sr_plan.h"
#include "sr_select.h"
#include "sr_synth.h"
#include "sr_test.h"
#include "sr_vs.h"

#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <limits.h>
#include <string.h>

static uint64_t g_seed;
static sr_world g_world;

#define FIX 4294967296.0 /* 2^SR_EST_FIX_BITS */

static int64_t rnd(uint64_t *s, int64_t lo, int64_t hi) { /* uniform in [lo, hi] */
  return lo + (int64_t)(sr_test_next(s) % (uint64_t)(hi - lo + 1));
}

/* ---- naive references ------------------------------------------------------------------- */

typedef struct vi {
  int64_t v;
  int32_t i;
} vi;
static int vi_cmp(const void *a, const void *b) {
  const vi *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}
/* Sort everything by (value descending, index ascending), take the first k. */
static void naive_topk(const int64_t *x, int64_t n, int64_t k, int32_t *idx) {
  vi *t = malloc((size_t)(n > 0 ? n : 1) * sizeof *t);
  for (int64_t i = 0; i < n; i++) t[i] = (vi){x[i], (int32_t)i};
  qsort(t, (size_t)n, sizeof *t, vi_cmp);
  for (int64_t i = 0; i < k; i++) idx[i] = t[i].i;
  free(t);
}
static int i64_desc(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x < y) - (x > y);
}
static int i32_asc(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}
static int i32_desc(const void *a, const void *b) { return i32_asc(b, a); }

/* cover in float64: sort descending, exact integer prefix sums / total <= alpha, count + 1,
 * at most n. *margin: the closest any prefix up to the first one past alpha came to alpha (a
 * caller can move alpha off a rounding knife edge). */
static int64_t naive_cover(const int64_t *x, int64_t n, double total, double alpha,
                           double *margin) {
  int64_t *s = malloc((size_t)n * sizeof *s);
  memcpy(s, x, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, i64_desc);
  int64_t cnt = 0;
  long double cum = 0;
  double m = INFINITY;
  for (int64_t i = 0; i < n; i++) {
    cum += (long double)s[i];
    const double r = (double)(cum / (long double)total);
    if (fabs(r - alpha) < m) m = fabs(r - alpha);
    if (r <= alpha) cnt++;
    else break;
  }
  free(s);
  if (margin) *margin = m;
  return cnt + 1 < n ? cnt + 1 : n;
}

/* One q-head's pattern. */
typedef struct hpat {
  int64_t nv, ns;
  int32_t *v, *s;
} hpat;
static void hpat_free(hpat *h) {
  free(h->v);
  free(h->s);
  *h = (hpat){0};
}
/* Force keys 0..3 and offsets 0..63, naive top V / S, verticals ascending, offsets descending. */
static void naive_pick(const int64_t *vert, const int64_t *slash, int64_t n, int64_t V, int64_t S,
                       hpat *hp) {
  V = V < n ? V : n;
  S = S < n ? S : n;
  int64_t *x = malloc((size_t)n * sizeof *x);
  hp->v = malloc((size_t)(V > 0 ? V : 1) * sizeof(int32_t));
  hp->s = malloc((size_t)(S > 0 ? S : 1) * sizeof(int32_t));
  memcpy(x, vert, (size_t)n * sizeof *x);
  for (int64_t j = 0; j < 4 && j < n; j++) x[j] = INT64_MAX;
  naive_topk(x, n, V, hp->v);
  qsort(hp->v, (size_t)V, sizeof(int32_t), i32_asc);
  memcpy(x, slash, (size_t)n * sizeof *x);
  for (int64_t o = 0; o < 64 && o < n; o++) x[o] = INT64_MAX;
  naive_topk(x, n, S, hp->s);
  qsort(hp->s, (size_t)S, sizeof(int32_t), i32_desc);
  hp->nv = V;
  hp->ns = S;
  free(x);
}

/* Row by row: row i of [qs, qs+bq) sees key i - o on diagonal o (if >= 0). Tiles: the key
 * blocks holding a covered key; columns: verticals before qs whose block is not a tile, in the
 * order given. */
static void naive_convert(int64_t qs, int bq, int bk, const int32_t *s, int64_t ns,
                          const int32_t *v, int64_t nv, int32_t *tiles, int64_t *ntiles,
                          int32_t *cols, int64_t *ncols) {
  const int64_t qe = qs + bq, nkb = (qe + bk - 1) / bk;
  uint8_t *cov = calloc((size_t)qe, 1), *tile = calloc((size_t)nkb + 1, 1);
  for (int64_t t = 0; t < ns; t++)
    for (int64_t i = qs; i < qe; i++)
      if (i - s[t] >= 0) cov[i - s[t]] = 1;
  int64_t nt = 0, nc = 0;
  for (int64_t b = 0; b < nkb; b++) {
    for (int64_t key = b * bk; key < (b + 1) * bk && key < qe; key++)
      if (cov[key]) tile[b] = 1;
    if (tile[b]) tiles[nt++] = (int32_t)b;
  }
  for (int64_t i = 0; i < nv; i++)
    if (v[i] < qs && !tile[v[i] / bk]) cols[nc++] = v[i];
  *ntiles = nt;
  *ncols = nc;
  free(cov);
  free(tile);
}

/* fp32 -> bf16 -> fp32, round to nearest even (finite values). */
static float bf16r(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  const uint32_t lsb = (u >> 16) & 1u;
  u = (u + 0x7FFFu + lsb) & 0xFFFF0000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* Float64 estimate: the causal softmax of each of the last W queries over keys 0..pos, summed
 * per key (vert) and per offset pos - key (slash). q [H][n][d], k [KV][n][d] (global order). */
/* With bf16 and amb_v / amb_s non-NULL: per key / offset, the sum of one bf16 ulp over the terms
 * whose fp32 value lies within 1024 fp32 ulps (1.2e-4) of a bf16 rounding midpoint (the fp32 arithmetic
 * of the library may round those the other way). */
static void ref_estimate(const float *q, const float *k, int H, int group, int64_t n, int d,
                         int W, int bf16, double *vert, double *slash, double *amb_v,
                         double *amb_s) {
  double *sc = malloc((size_t)n * sizeof *sc);
  memset(vert, 0, (size_t)H * n * sizeof *vert);
  memset(slash, 0, (size_t)H * n * sizeof *slash);
  if (amb_v) memset(amb_v, 0, (size_t)H * n * sizeof *amb_v);
  if (amb_s) memset(amb_s, 0, (size_t)H * n * sizeof *amb_s);
  for (int h = 0; h < H; h++) {
    const float *kh = k + (size_t)(h / group) * n * d;
    for (int i = 0; i < W; i++) {
      const int64_t pos = n - W + i;
      const float *qi = q + ((size_t)h * n + pos) * d;
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j <= pos; j++) {
        double s = 0;
        for (int c = 0; c < d; c++) s += (double)qi[c] * kh[(size_t)j * d + c];
        sc[j] = s / sqrt((double)d);
        if (sc[j] > mx) mx = sc[j];
      }
      for (int64_t j = 0; j <= pos; j++) sum += (sc[j] = exp(sc[j] - mx));
      for (int64_t j = 0; j <= pos; j++) {
        double a = sc[j] / sum;
        if (bf16) {
          const float f = (float)a;
          uint32_t u;
          memcpy(&u, &f, sizeof u);
          const int32_t low = (int32_t)(u & 0xFFFFu);
          if (amb_v && abs(low - 0x8000) < 1024) {
            int ex;
            frexp(a, &ex);
            const double ulp = ldexp(1.0, ex - 8); /* one bf16 ulp of a */
            amb_v[(size_t)h * n + j] += ulp;
            amb_s[(size_t)h * n + (pos - j)] += ulp;
          }
          a = bf16r(f);
        }
        vert[(size_t)h * n + j] += a;
        slash[(size_t)h * n + (pos - j)] += a;
      }
    }
  }
  free(sc);
}

/* ---- 1. topk ---------------------------------------------------------------------------- */

static void test_topk(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x70b;
  int checked = 0;
  for (int trial = 0; trial < 400; trial++) {
    const int64_t n = trial < 8 ? trial + 1 : rnd(&s, 1, 700);
    const int64_t range = rnd(&s, 1, 6); /* values in [-range, range]: many ties */
    int64_t *x = malloc((size_t)n * sizeof *x), *x0 = malloc((size_t)n * sizeof *x0);
    for (int64_t i = 0; i < n; i++) x[i] = rnd(&s, -range, range);
    if (trial % 3 == 0) { /* extremes, as pick's forcing produces */
      x[rnd(&s, 0, n - 1)] = INT64_MAX;
      x[rnd(&s, 0, n - 1)] = INT64_MIN;
      x[rnd(&s, 0, n - 1)] = INT64_MAX;
    }
    memcpy(x0, x, (size_t)n * sizeof *x);
    const int64_t ks[5] = {0, 1, n, rnd(&s, 0, n), n > 1 ? n - 1 : 1};
    int32_t *got = malloc((size_t)(n + 1) * sizeof *got), *want = malloc((size_t)n * sizeof *want);
    for (int t = 0; t < 5; t++) {
      const int64_t k = ks[t];
      for (int64_t i = 0; i <= n; i++) got[i] = -7; /* poison */
      sr_vs_topk(x, n, k, got);
      naive_topk(x, n, k, want);
      for (int64_t i = 0; i < k; i++)
        if (got[i] != want[i])
          fail_msg("topk n=%lld k=%lld range=%lld: idx[%lld] = %d, want %d (value %lld vs %lld)",
                   (long long)n, (long long)k, (long long)range, (long long)i, got[i], want[i],
                   got[i] >= 0 && got[i] < n ? (long long)x[got[i]] : 0LL, (long long)x[want[i]]);
      for (int64_t i = k; i <= n; i++)
        if (got[i] != -7) fail_msg("topk n=%lld k=%lld wrote idx[%lld]", (long long)n, (long long)k, (long long)i);
      if (memcmp(x, x0, (size_t)n * sizeof *x)) fail_msg("topk modified its input");
      checked++;
    }
    free(x);
    free(x0);
    free(got);
    free(want);
  }
  /* A hand case: ties to the lower index, descending. */
  const int64_t h[8] = {5, 7, 5, 7, 1, 7, 5, 0};
  int32_t idx[8];
  sr_vs_topk(h, 8, 6, idx);
  const int32_t hw[6] = {1, 3, 5, 0, 2, 6};
  for (int i = 0; i < 6; i++) assert_int_equal(idx[i], hw[i]);
  fprintf(stderr, "# topk: %d cases vs the sort reference\n", checked);
}

/* ---- 2. cover --------------------------------------------------------------------------- */

static void test_cover(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xc0e;
  /* Dyadic hand cases (every running sum exact): x/total = {.5, .25, .125, .125}. */
  const int64_t d4[4] = {1, 4, 2, 1}; /* unsorted on purpose: sorted 4,2,1,1; total 8 */
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.0), 1);
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.49), 1);  /* .5 > .49: none, +1 */
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.5), 2);   /* .5 <= .5 counts (<=), +1 */
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.74), 2);
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.75), 3);
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.875), 4); /* 3 entries + 1 */
  assert_int_equal(sr_flex_cover(d4, 4, 8, 0.9), 4);
  assert_int_equal(sr_flex_cover(d4, 4, 8, 1.0), 4);   /* 4 + 1, capped at n */
  assert_int_equal(sr_flex_cover(d4, 4, 16, 0.5), 4);  /* total 16: .25 .375 .4375 .5: all 4 */
  assert_int_equal(sr_flex_cover(d4, 4, 16, 0.4), 3);  /* .25 .375 fit: 2 + 1 */
  assert_int_equal(sr_flex_cover(d4, 1, 8, 0.0), 1);   /* n = 1 */
  assert_int_equal(sr_flex_cover(d4, 1, 8, 1.0), 1);

  int checked = 0;
  for (int trial = 0; trial < 300; trial++) {
    const int64_t n = rnd(&s, 2, 3000);
    int64_t *x = malloc((size_t)n * sizeof *x), *x0 = malloc((size_t)n * sizeof *x0);
    int64_t sum = 0;
    /* Positive entries >= 2^20 (never zeros): skewed so that the cover varies. */
    const int skew = (int)rnd(&s, 0, 3);
    for (int64_t i = 0; i < n; i++) {
      double u = (double)(sr_test_next(&s) >> 11) * 0x1.0p-53;
      for (int e = 0; e < skew; e++) u *= u;
      x[i] = ((int64_t)1 << 20) + (int64_t)(u * 0x1.0p32);
      sum += x[i];
    }
    if (trial % 5 == 0) /* ties */
      for (int64_t i = 0; i < n; i++) x[i] = x[rnd(&s, 0, (n - 1) / 3)];
    sum = 0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    memcpy(x0, x, (size_t)n * sizeof *x);
    const double totals[2] = {(double)sum, (double)sum * 1.25};
    for (int ti = 0; ti < 2; ti++) {
      const double total = totals[ti];
      assert_int_equal(sr_flex_cover(x, n, total, 0.0), 1);
      if (ti == 0) assert_int_equal(sr_flex_cover(x, n, total, 1.0), n);
      else assert_int_equal(sr_flex_cover(x, n, total, 0.85), n); /* everything sums to .8 */
      for (int a = 0; a < 6; a++) {
        double alpha = (double)(sr_test_next(&s) >> 11) * 0x1.0p-53, margin;
        int64_t want = naive_cover(x, n, total, alpha, &margin);
        for (int tries = 0; margin < 1e-9 && tries < 20; tries++) { /* off a knife edge */
          alpha += 3e-9;
          want = naive_cover(x, n, total, alpha, &margin);
        }
        const int64_t got = sr_flex_cover(x, n, total, alpha);
        if (got != want)
          fail_msg("cover n=%lld total=%.17g alpha=%.17g: got %lld, want %lld", (long long)n,
                   total, alpha, (long long)got, (long long)want);
        checked++;
      }
    }
    if (memcmp(x, x0, (size_t)n * sizeof *x)) fail_msg("cover modified its input");
    free(x);
    free(x0);
  }
  fprintf(stderr, "# cover: %d random cases vs the float64 reference\n", checked);
}

/* ---- pick --------------------------------------------------------------------------------- */

static void test_pick(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x91c;
  for (int trial = 0; trial < 200; trial++) {
    const int64_t n = trial < 4 ? (int64_t[]){1, 3, 5, 63}[trial] : rnd(&s, 1, 600);
    int64_t *vert = malloc((size_t)n * 8), *slash = malloc((size_t)n * 8);
    int64_t *v0 = malloc((size_t)n * 8), *s0 = malloc((size_t)n * 8);
    const int64_t range = rnd(&s, 1, 1000);
    for (int64_t i = 0; i < n; i++) {
      vert[i] = rnd(&s, 1, range);
      slash[i] = rnd(&s, 1, range);
    }
    /* Make the forced entries the smallest, so that forcing is what keeps them. */
    for (int64_t i = 0; i < 4 && i < n; i++) vert[i] = 0;
    for (int64_t i = 0; i < 64 && i < n; i++) slash[i] = 0;
    memcpy(v0, vert, (size_t)n * 8);
    memcpy(s0, slash, (size_t)n * 8);
    const int64_t V = trial % 7 == 0 ? n + 5 : rnd(&s, 0, n), S = trial % 5 == 0 ? n + 9 : rnd(&s, 0, n);
    const int64_t Vc = V < n ? V : n, Sc = S < n ? S : n;
    int32_t *v = malloc((size_t)(Vc + 1) * 4), *sl = malloc((size_t)(Sc + 1) * 4);
    for (int64_t i = 0; i <= Vc; i++) v[i] = -3;
    for (int64_t i = 0; i <= Sc; i++) sl[i] = -3;
    int64_t nv = -1, ns = -1;
    assert_int_equal(sr_vs_pick(vert, slash, n, V, S, v, &nv, sl, &ns), SR_OK);
    assert_int_equal(nv, Vc);
    assert_int_equal(ns, Sc);
    hpat want;
    naive_pick(vert, slash, n, V, S, &want);
    for (int64_t i = 0; i < Vc; i++)
      if (v[i] != want.v[i]) fail_msg("pick n=%lld V=%lld: v[%lld] = %d, want %d", (long long)n, (long long)V, (long long)i, v[i], want.v[i]);
    for (int64_t i = 0; i < Sc; i++)
      if (sl[i] != want.s[i]) fail_msg("pick n=%lld S=%lld: s[%lld] = %d, want %d", (long long)n, (long long)S, (long long)i, sl[i], want.s[i]);
    assert_int_equal(v[Vc], -3);
    assert_int_equal(sl[Sc], -3);
    /* Forced: min(V, 4) of keys 0..3 and min(S, 64) of offsets 0..63 are in. */
    int64_t fv = 0, fs = 0;
    for (int64_t i = 0; i < Vc; i++) fv += v[i] < 4;
    for (int64_t i = 0; i < Sc; i++) fs += sl[i] < 64;
    assert_int_equal(fv, Vc < 4 ? Vc : (n < 4 ? n : 4));
    assert_int_equal(fs, Sc < 64 ? Sc : (n < 64 ? n : 64));
    for (int64_t i = 1; i < Vc; i++) assert_true(v[i - 1] < v[i]);
    for (int64_t i = 1; i < Sc; i++) assert_true(sl[i - 1] > sl[i]);
    if (memcmp(vert, v0, (size_t)n * 8) || memcmp(slash, s0, (size_t)n * 8))
      fail_msg("pick modified vert or slash");
    hpat_free(&want);
    free(vert), free(slash), free(v0), free(s0), free(v), free(sl);
  }
}

/* ---- 3. convert ------------------------------------------------------------------------- */

typedef struct conv_case {
  const char *what;
  int64_t qs;
  int bq, bk;
  int with_diag;         /* prepend offsets 0..63 (after the listed ones: descending order) */
  int32_t s[8];          /* extra offsets, descending, all >= 64 */
  int ns;
  int32_t v[16];
  int nv;
  int32_t tiles[16];
  int nt;
  int32_t cols[16];
  int nc;
} conv_case;

static void run_conv_case(const conv_case *c) {
  int32_t s[128], tiles[256], cols[64];
  int64_t ns = 0, nt = -1, nc = -1;
  for (int i = 0; i < c->ns; i++) s[ns++] = c->s[i];
  if (c->with_diag)
    for (int o = 63; o >= 0; o--) s[ns++] = o;
  for (int i = 0; i < 256; i++) tiles[i] = -9;
  for (int i = 0; i < 64; i++) cols[i] = -9;
  sr_vs_convert(c->qs, c->bq, c->bk, s, ns, c->v, c->nv, tiles, &nt, cols, &nc);
  int ok = nt == c->nt && nc == c->nc;
  for (int i = 0; ok && i < c->nt; i++) ok = tiles[i] == c->tiles[i];
  for (int i = 0; ok && i < c->nc; i++) ok = cols[i] == c->cols[i];
  if (!ok) {
    char buf[1024];
    int o = snprintf(buf, sizeof buf, "tiles {");
    for (int64_t i = 0; i < nt && i < 40; i++) o += snprintf(buf + o, sizeof buf - o, " %d", tiles[i]);
    o += snprintf(buf + o, sizeof buf - o, " } cols {");
    for (int64_t i = 0; i < nc && i < 40; i++) o += snprintf(buf + o, sizeof buf - o, " %d", cols[i]);
    snprintf(buf + o, sizeof buf - o, " }");
    fail_msg("convert case '%s' (qs=%lld bq=%d bk=%d): got %s", c->what, (long long)c->qs, c->bq,
             c->bk, buf);
  }
  /* The bitmap reference agrees with the hand derivation (a check of the reference). */
  int32_t rt[256], rc[64];
  int64_t rnt, rnc;
  naive_convert(c->qs, c->bq, c->bk, s, ns, c->v, c->nv, rt, &rnt, rc, &rnc);
  assert_int_equal(rnt, c->nt);
  assert_int_equal(rnc, c->nc);
  for (int i = 0; i < c->nt; i++) assert_int_equal(rt[i], c->tiles[i]);
  for (int i = 0; i < c->nc; i++) assert_int_equal(rc[i], c->cols[i]);
}

static void test_convert_cases(void **st) {
  (void)st;
  const conv_case cases[] = {
      /* Offsets 0..63 at qs=256, bq=bk=64: offset o covers [256-o, 319-o]; the union is
       * [193, 319] -> blocks 193/64 = 3 and 319/64 = 4. */
      {"diagonal only", 256, 64, 64, 1, {0}, 0, {0}, 0, {3, 4}, 2, {0}, 0},
      /* + o=200: keys [56, 119] -> blocks 0 (0..63) and 1 (64..127); gap at block 2. */
      {"far slash", 256, 64, 64, 1, {200}, 1, {0}, 0, {0, 1, 3, 4}, 4, {0}, 0},
      /* + o=128: keys [128, 191], exactly block 2 (aligned): the ranges [0,1], [2], [3,4]
       * touch and every block 0..4 is a tile, each once. */
      {"aligned slash, adjacent ranges", 256, 64, 64, 1, {200, 128}, 2, {0}, 0, {0, 1, 2, 3, 4}, 5, {0}, 0},
      /* o=150: keys [106, 169] -> blocks 1, 2; o=140: [116, 179] -> 1, 2 (overlapping, merged
       * once); o=100: [156, 219] -> 2, 3 (overlaps the diagonal's 3). */
      {"overlapping ranges", 256, 64, 64, 1, {150, 140, 100}, 3, {0}, 0, {1, 2, 3, 4}, 4, {0}, 0},
      /* Offsets >= qs+bq = 320 lie before key 0 for every row: 400 and 320 skipped; 319 covers
       * [max(256-319,0), 319-319] = [0, 0] -> block 0. */
      {"offsets past the block", 256, 64, 64, 1, {400, 320, 319}, 3, {0}, 0, {0, 3, 4}, 3, {0}, 0},
      {"only skipped offsets", 256, 64, 64, 0, {1000, 321, 320}, 3, {5, 100}, 2, {0}, 0, {5, 100}, 2},
      /* Columns with tiles {0,1,3,4} (o=200 + diagonal): 2 (block 0) and 70 (block 1) are in
       * tiles; 128, 130, 191 in block 2 (a gap) are kept; 192, 200, 255 in tile 3; 256, 300 are
       * not before qs. */
      {"columns", 256, 64, 64, 1, {200}, 1, {2, 70, 128, 130, 191, 192, 200, 255, 256, 300}, 10,
       {0, 1, 3, 4}, 4, {128, 130, 191}, 3},
      /* No slashes: columns before qs only (qs-1 = 255 kept, qs = 256 not). */
      {"columns without tiles", 256, 64, 64, 0, {0}, 0, {10, 255, 256, 400}, 4, {0}, 0, {10, 255}, 2},
      /* qs = 0: offsets 0..63 cover [0, 63] -> block 0; no key is before qs. */
      {"first block", 0, 64, 64, 1, {0}, 0, {0, 1, 2, 3}, 4, {0}, 1, {0}, 0},
      /* qs = 64: diagonal [1, 127] -> blocks 0, 1; forced keys 0..3 lie in tile 0. */
      {"second block", 64, 64, 64, 1, {70}, 1, {0, 1, 2, 3, 40}, 5, {0, 1}, 2, {0}, 0},
      /* bq=128, bk=64, qs=256 (rows 256..383): diagonal [193, 383] -> blocks 3, 4, 5;
       * o=300: [0, 83] -> 0, 1; o=383 (< 384): [0, 0] -> 0; o=384 skipped. Columns: 100 in
       * tile 1; 150, 190, 191 in block 2 (gap) kept; 192, 255 in tile 3; 300 after qs. */
      {"bq=128 bk=64", 256, 128, 64, 1, {384, 383, 300}, 3, {100, 150, 190, 191, 192, 255, 300}, 7,
       {0, 1, 3, 4, 5}, 5, {150, 190, 191}, 3},
      /* One slash, three tiles (bq = 2 bk): o=1 covers [255, 382] -> blocks 3, 4, 5. */
      {"one slash three tiles", 256, 128, 64, 0, {1}, 1, {10}, 1, {3, 4, 5}, 3, {10}, 1},
      /* bq=64, bk=128, qs=320: diagonal [257, 383] -> block 2; o=100: [220, 283] -> 1, 2.
       * Columns 5, 127 in block 0 kept; 128, 255 in tile 1; 256, 319 in tile 2. */
      {"bq=64 bk=128", 320, 64, 128, 1, {100}, 1, {5, 127, 128, 255, 256, 319}, 6, {1, 2}, 2,
       {5, 127}, 2},
      /* bq=16, bk=32, qs=48 (rows 48..63): diagonal [0, 63] -> 0, 1. */
      {"bq=16 bk=32", 48, 16, 32, 1, {0}, 0, {0, 47}, 2, {0, 1}, 2, {0}, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* The "with_diag" lists put 0..63 after the larger offsets: descending overall. */
    run_conv_case(&cases[i]);
  }
}

static void test_convert_random(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xc01;
  const int geo[6][2] = {{64, 64}, {128, 64}, {64, 128}, {16, 32}, {32, 16}, {16, 16}};
  int64_t cases = 0;
  for (int trial = 0; trial < 3000; trial++) {
    const int bq = geo[trial % 6][0], bk = geo[trial % 6][1];
    const int64_t n = (int64_t)bq * rnd(&s, 1, 48);
    const int64_t qs = bq * rnd(&s, 0, n / bq - 1);
    /* Random unique offsets in [0, n) (descending) and verticals (ascending). */
    uint8_t *mark = calloc((size_t)n, 1);
    int32_t *so = malloc((size_t)n * 4), *v = malloc((size_t)n * 4);
    int64_t ns = 0, nv = 0;
    const double ps = (double)rnd(&s, 0, 100) / 400.0, pv = (double)rnd(&s, 0, 100) / 200.0;
    for (int64_t o = 0; o < n; o++)
      if ((double)(sr_test_next(&s) >> 11) * 0x1.0p-53 < ps || (trial % 2 && o < 64)) mark[o] = 1;
    for (int64_t o = n - 1; o >= 0; o--)
      if (mark[o]) so[ns++] = (int32_t)o;
    for (int64_t j = 0; j < n; j++)
      if ((double)(sr_test_next(&s) >> 11) * 0x1.0p-53 < pv) v[nv++] = (int32_t)j;
    const int64_t room = n / bk + 2;
    int32_t *t1 = malloc((size_t)room * 4), *t2 = malloc((size_t)room * 4);
    int32_t *c1 = malloc((size_t)(nv + 1) * 4), *c2 = malloc((size_t)(nv + 1) * 4);
    for (int64_t i = 0; i < room; i++) t1[i] = -9;
    for (int64_t i = 0; i <= nv; i++) c1[i] = -9;
    int64_t nt1 = -1, nc1 = -1, nt2, nc2;
    sr_vs_convert(qs, bq, bk, so, ns, v, nv, t1, &nt1, c1, &nc1);
    naive_convert(qs, bq, bk, so, ns, v, nv, t2, &nt2, c2, &nc2);
    int ok = nt1 == nt2 && nc1 == nc2;
    for (int64_t i = 0; ok && i < nt2; i++) ok = t1[i] == t2[i];
    for (int64_t i = 0; ok && i < nc2; i++) ok = c1[i] == c2[i];
    if (!ok)
      fail_msg("convert (qs=%lld bq=%d bk=%d ns=%lld nv=%lld): %lld tiles %lld cols, the bitmap "
               "reference %lld tiles %lld cols (or different ids)", (long long)qs, bq, bk,
               (long long)ns, (long long)nv, (long long)nt1, (long long)nc1, (long long)nt2,
               (long long)nc2);
    cases++;
    free(mark), free(so), free(v), free(t1), free(t2), free(c1), free(c2);
  }
  fprintf(stderr, "# convert: %lld random q-blocks vs the bitmap reference\n", (long long)cases);
}

/* sr_vs.h: "tiles needs room for min(ns * (floor((bq - 1) / bk) + 2), blocks) ids". A buffer of
 * exactly that size with a guard after it; the guard must survive. */
static int64_t tile_room(int64_t ns, int bq, int bk, int64_t blocks) {
  const int64_t per = (bq - 1) / bk + 2;
  return ns * per < blocks ? ns * per : blocks;
}

static void test_convert_room(void **st) {
  (void)st;
  { /* By hand: qs=256, bq=128, bk=64, one slash o=1 covers keys [255, 382]: blocks 3, 4, 5 =
     * floor(127 / 64) + 2 = 3 tiles, exactly the room sr_vs.h asks for. */
    const int32_t one[1] = {1};
    int32_t tiles[8] = {-9, -9, -9, -9, -9, -9, -9, -9}, cols[1];
    int64_t nt, nc;
    sr_vs_convert(256, 128, 64, one, 1, NULL, 0, tiles, &nt, cols, &nc);
    assert_int_equal(nt, 3);
    assert_int_equal(tiles[0], 3);
    assert_int_equal(tiles[2], 5);
    assert_true(nt <= tile_room(1, 128, 64, 6));
  }
  uint64_t s = g_seed ^ 0x2003;
  const int geo[4][2] = {{64, 64}, {64, 128}, {16, 32}, {128, 64}};
  for (int g = 0; g < 4; g++)
    for (int trial = 0; trial < 300; trial++) {
      const int bq = geo[g][0], bk = geo[g][1];
      const int64_t n = 4096, qs = bq * rnd(&s, 0, n / bq - 1), qe = qs + bq;
      const int64_t blocks = (qe - 1) / bk + 1; /* the causal key blocks of the q-block */
      int32_t so[8];
      const int64_t ns = rnd(&s, 1, 6);
      for (int64_t i = 0; i < ns; i++) so[i] = (int32_t)rnd(&s, 0, qe - 1);
      qsort(so, (size_t)ns, 4, i32_desc);
      int64_t u = 1; /* unique */
      for (int64_t i = 1; i < ns; i++)
        if (so[i] != so[u - 1]) so[u++] = so[i];
      const int64_t room = tile_room(u, bq, bk, blocks);
      /* Allocated for every block (an overflow must not corrupt the heap), guarded at room. */
      int32_t *tiles = malloc((size_t)(blocks + 4) * 4), cols[1];
      for (int64_t i = 0; i < blocks + 4; i++) tiles[i] = -9;
      int64_t nt, nc;
      sr_vs_convert(qs, bq, bk, so, u, NULL, 0, tiles, &nt, cols, &nc);
      if (nt > room || tiles[room] != -9)
        fail_msg("convert qs=%lld bq=%d bk=%d, %lld slash(es) (first %d): %lld tiles, more than the "
                 "room sr_vs.h asks for = %lld", (long long)qs, bq, bk, (long long)u, so[0],
                 (long long)nt, (long long)room);
      free(tiles);
    }
}

/* ---- select over the rows of a plan (no communication) ---------------------------------- */

/* Every row of sel against the naive conversion of the per-head patterns. */
static void check_sel_rows(const sr_plan *p, const sr_selection *sel, const hpat *hp,
                           const char *what) {
  assert_int_equal(sel->q_heads, p->q_heads);
  assert_int_equal(sel->nqb, p->nqb_local);
  assert_non_null(sel->vrow_ptr);
  const int64_t rows = (int64_t)p->q_heads * p->nqb_local;
  int64_t maxv = 1;
  for (int h = 0; h < p->q_heads; h++) maxv = hp[h].nv > maxv ? hp[h].nv : maxv;
  int32_t *t = malloc((size_t)(p->nkb_global + 1) * 4), *c = malloc((size_t)maxv * 4);
  double pairs = 0;
  assert_int_equal(sel->row_ptr[0], 0);
  assert_int_equal(sel->vrow_ptr[0], 0);
  for (int64_t r = 0; r < rows; r++) {
    const int h = (int)(r / p->nqb_local);
    const int64_t qs = sr_plan_qblock_global(p, p->rank, r % p->nqb_local) * p->bq;
    int64_t nt, nc;
    naive_convert(qs, p->bq, p->bk, hp[h].s, hp[h].ns, hp[h].v, hp[h].nv, t, &nt, c, &nc);
    const int64_t gt = sel->row_ptr[r + 1] - sel->row_ptr[r], gc = sel->vrow_ptr[r + 1] - sel->vrow_ptr[r];
    int ok = gt == nt && gc == nc;
    for (int64_t i = 0; ok && i < nt; i++) ok = sel->col[sel->row_ptr[r] + i] == t[i];
    for (int64_t i = 0; ok && i < nc; i++) ok = sel->vcol[sel->vrow_ptr[r] + i] == c[i];
    if (!ok)
      fail_msg("%s: rank %d/%d row %lld (head %d, qs %lld): %lld tiles %lld columns, want %lld "
               "and %lld (or different ids)", what, p->rank, p->nranks, (long long)r, h,
               (long long)qs, (long long)gt, (long long)gc, (long long)nt, (long long)nc);
    pairs += (double)nt * p->bq * p->bk + (double)nc * p->bq;
  }
  assert_int_equal(sel->nnz, sel->row_ptr[rows]);
  assert_int_equal(sel->nv, sel->vrow_ptr[rows]);
  if (sel->paper_pairs != pairs) fail_msg("%s: paper_pairs %.17g, want %.17g", what, sel->paper_pairs, pairs);
  double sv = 0, ss = 0;
  for (int h = 0; h < p->q_heads; h++) sv += (double)hp[h].nv, ss += (double)hp[h].ns;
  if (fabs(sel->budget_v - sv / p->q_heads) > 1e-12 || fabs(sel->budget_s - ss / p->q_heads) > 1e-12)
    fail_msg("%s: budget_v %.6f budget_s %.6f, want %.6f %.6f", what, sel->budget_v, sel->budget_s,
             sv / p->q_heads, ss / p->q_heads);
  free(t);
  free(c);
}

static void test_select_rows(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x5e1;
  sr_config cfg;
  sr_config_defaults(&cfg);
  cfg.q_heads = 3;
  cfg.kv_heads = 1;
  cfg.head_dim = 8;
  cfg.seq_len = 3072;
  cfg.method = SR_METHOD_VERTICAL_SLASH;
  const int geo[3][2] = {{64, 64}, {128, 64}, {32, 64}};
  for (int g = 0; g < 3; g++) {
    cfg.block_q = geo[g][0];
    cfg.block_k = geo[g][1];
    const int64_t n = cfg.seq_len;
    /* Random patterns with different budgets per head (as FlexPrefill makes them). */
    hpat hp[3];
    sr_vs_pattern pt = {.q_heads = 3};
    pt.v = malloc(3 * sizeof *pt.v);
    pt.s = malloc(3 * sizeof *pt.s);
    pt.nv = malloc(3 * sizeof *pt.nv);
    pt.ns = malloc(3 * sizeof *pt.ns);
    for (int h = 0; h < 3; h++) {
      int64_t *vert = malloc((size_t)n * 8), *slash = malloc((size_t)n * 8);
      for (int64_t i = 0; i < n; i++) vert[i] = rnd(&s, 0, 50), slash[i] = rnd(&s, 0, 50);
      naive_pick(vert, slash, n, rnd(&s, 4, 400), rnd(&s, 64, 300), &hp[h]);
      pt.v[h] = malloc((size_t)hp[h].nv * 4);
      pt.s[h] = malloc((size_t)hp[h].ns * 4);
      memcpy(pt.v[h], hp[h].v, (size_t)hp[h].nv * 4);
      memcpy(pt.s[h], hp[h].s, (size_t)hp[h].ns * 4);
      pt.nv[h] = hp[h].nv;
      pt.ns[h] = hp[h].ns;
      free(vert), free(slash);
    }
    for (int P = 1; P <= 4; P++)
      for (int shard = 0; shard < 2; shard++) {
        cfg.shard = (sr_shard_scheme)shard;
        for (int r = 0; r < P; r++) {
          sr_plan p;
          assert_int_equal(sr_plan_init(&p, &cfg, P, r), SR_OK);
          sr_selection sel;
          memset(&sel, 0x5a, sizeof sel); /* poison */
          assert_int_equal(sr_vs_select(&p, &pt, &sel), SR_OK);
          char what[96];
          snprintf(what, sizeof what, "select bq=%d bk=%d %s", p.bq, p.bk, sr_shard_name(p.shard));
          check_sel_rows(&p, &sel, hp, what);
          sr_selection_free(&sel);
        }
      }
    for (int h = 0; h < 3; h++) hpat_free(&hp[h]);
    sr_vs_pattern_free(&pt);
  }
}

/* ---- 4. the estimate and the Vertical-Slash selection ----------------------------------- */

typedef struct planted {
  sr_config cfg;
  sr_plan p;
  int64_t n;
  int H, KV, d, W;
  float *q, *k;   /* [H][n][d], [KV][n][d]: the 1-rank plan's layout is global order */
  int64_t kc;     /* the planted heavy key (every window query of every head attends to it) */
  int64_t odiag;  /* the planted diagonal (head 0) */
} planted;

static void planted_free(planted *pl) {
  free(pl->q);
  free(pl->k);
  sr_config_free(&pl->cfg);
}

/* Random q, k in [-1, 1) in dims 1..d-1. Dim 0 carries the heavy key: 3 in every window query,
 * 8 in key kc. Head 0's diagonal: key p - odiag = 2 x (dims 1.. of) query p for every window
 * query p (the other heads see those keys as random ones). */
static void make_planted(planted *pl, int64_t n, int H, int KV, int d, int last_q, int plant,
                         uint64_t *s) {
  memset(pl, 0, sizeof *pl);
  sr_config_defaults(&pl->cfg);
  pl->cfg.q_heads = H;
  pl->cfg.kv_heads = KV;
  pl->cfg.head_dim = d;
  pl->cfg.seq_len = n;
  pl->cfg.block_q = pl->cfg.block_k = 64;
  pl->cfg.method = SR_METHOD_VERTICAL_SLASH;
  pl->cfg.last_q = last_q;
  assert_int_equal(sr_plan_init(&pl->p, &pl->cfg, 1, 0), SR_OK);
  pl->n = n, pl->H = H, pl->KV = KV, pl->d = d;
  pl->W = last_q < n ? last_q : (int)n;
  pl->q = malloc((size_t)H * n * d * 4);
  pl->k = malloc((size_t)KV * n * d * 4);
  sr_test_fill(pl->q, (size_t)H * n * d, 1.0f, s);
  sr_test_fill(pl->k, (size_t)KV * n * d, 1.0f, s);
  for (size_t i = 0; i < (size_t)H * n; i++) pl->q[i * d] = 0;
  for (size_t i = 0; i < (size_t)KV * n; i++) pl->k[i * d] = 0;
  const int64_t q0 = n - pl->W;
  pl->kc = pl->odiag = -1;
  if (!plant) return;
  pl->odiag = rnd(s, q0 / 3, q0 / 2 + 64);       /* ~600..1000 at n = 2048, W = 128 */
  pl->kc = rnd(s, 8, q0 - pl->odiag - 16);       /* before the planted diagonal's keys */
  for (int h = 0; h < H; h++)
    for (int64_t pos = q0; pos < n; pos++) pl->q[((size_t)h * n + pos) * d] = 3.0f;
  for (int kv = 0; kv < KV; kv++) pl->k[((size_t)kv * n + pl->kc) * d] = 8.0f;
  for (int64_t pos = q0; pos < n; pos++) {
    const int64_t key = pos - pl->odiag;
    for (int c = 1; c < d; c++) pl->k[(size_t)key * d + c] = 2.0f * pl->q[(size_t)pos * d + c];
  }
}

static void estimate_of(const planted *pl, int round_bf16, sr_vs_est *est) {
  sr_method_in in = {.cfg = &pl->cfg, .p = &pl->p, .be = sr_backend_cpu(), .comm = g_world.comm,
                     .q = pl->q, .k = pl->k};
  memset(est, 0x5a, sizeof *est);
  assert_int_equal(sr_vs_estimate(&in, pl->cfg.last_q, round_bf16, est), SR_OK);
  assert_int_equal(est->q_heads, pl->H);
  assert_int_equal(est->W, pl->W);
  assert_int_equal(est->n, pl->n);
}

/* est against the float64 reference: |got - want| <= rel * want + abs, per entry. */
static void compare_est(const char *what, const int64_t *got, const double *want, int64_t n,
                        int H, double rel, double abs_tol, const double *amb) {
  double worst = 0;
  int64_t wi = -1;
  for (int64_t i = 0; i < (int64_t)H * n; i++) {
    const double g = (double)got[i] / FIX,
                 excess = fabs(g - want[i]) - (rel * want[i] + abs_tol + (amb ? amb[i] : 0));
    if (got[i] < 0 || !(excess <= worst)) worst = excess > 0 ? excess : INFINITY, wi = i;
  }
  if (wi >= 0)
    fail_msg("%s: head %lld index %lld = %.9g, float64 reference %.9g", what, (long long)(wi / n),
             (long long)(wi % n), (double)got[wi] / FIX, want[wi]);
}

/* Significant bits of a positive integer. */
static int sigbits(int64_t x) {
  if (x <= 0) return 0;
  while (!(x & 1)) x >>= 1;
  int b = 0;
  while (x) x >>= 1, b++;
  return b;
}

static void check_estimate(int64_t n, int H, int KV, int last_q, int plant, uint64_t *s) {
  planted pl;
  make_planted(&pl, n, H, KV, 32, last_q, plant, s);
  const size_t cnt = (size_t)H * n;
  double *rv = malloc(cnt * 8), *rs = malloc(cnt * 8), *bv = malloc(cnt * 8), *bs = malloc(cnt * 8);
  double *av = malloc(cnt * 8), *as = malloc(cnt * 8);
  ref_estimate(pl.q, pl.k, H, H / KV, n, pl.d, pl.W, 0, rv, rs, NULL, NULL);
  ref_estimate(pl.q, pl.k, H, H / KV, n, pl.d, pl.W, 1, bv, bs, av, as);
  sr_vs_est e32, e16;
  estimate_of(&pl, 0, &e32);
  estimate_of(&pl, 1, &e16);
  char what[128];
  { /* the same bits with 2 threads */
    sr_vs_est t2;
    sr_cpu_set_threads(2);
    estimate_of(&pl, 1, &t2);
    sr_cpu_set_threads(1);
    if (memcmp(t2.vert, e16.vert, cnt * 8) || memcmp(t2.slash, e16.slash, cnt * 8))
      fail_msg("n=%lld: the estimate with 2 threads differs from 1 thread", (long long)n);
    sr_vs_est_free(&t2);
  }
  snprintf(what, sizeof what, "fp32 vert (n=%lld W=%d)", (long long)n, pl.W);
  compare_est(what, e32.vert, rv, n, H, 1e-4, 1e-7, NULL);
  snprintf(what, sizeof what, "fp32 slash (n=%lld W=%d)", (long long)n, pl.W);
  compare_est(what, e32.slash, rs, n, H, 1e-4, 1e-7, NULL);
  /* bf16: the rounded probabilities are exact in fixed point, so the sums match the rounded
   * reference up to the terms near a rounding midpoint (av, as) and fix-point rounding of tiny
   * terms; and they are within 2^-8 of the unrounded reference. */
  snprintf(what, sizeof what, "bf16 vert (n=%lld W=%d) vs rounded reference", (long long)n, pl.W);
  compare_est(what, e16.vert, bv, n, H, 1e-6, 1e-7, av);
  snprintf(what, sizeof what, "bf16 vert (n=%lld W=%d) vs unrounded reference", (long long)n, pl.W);
  compare_est(what, e16.vert, rv, n, H, 0x1.0p-8, 1e-6, NULL);
  snprintf(what, sizeof what, "bf16 slash (n=%lld W=%d) vs rounded reference", (long long)n, pl.W);
  compare_est(what, e16.slash, bs, n, H, 1e-6, 1e-7, as);
  snprintf(what, sizeof what, "bf16 slash (n=%lld W=%d) vs unrounded reference", (long long)n, pl.W);
  compare_est(what, e16.slash, rs, n, H, 0x1.0p-8, 1e-6, NULL);
  /* Key n-1 is seen by the last query only, offset n-1 (key 0) too: one term each, so the bf16
   * sum is exactly a bf16 value times 2^32 (<= 8 significant bits) and the fp32 one is not. */
  for (int h = 0; h < H; h++) {
    const size_t last = (size_t)h * n + (size_t)n - 1;
    if (sigbits(e16.vert[last]) > 8 || sigbits(e16.slash[last]) > 8)
      fail_msg("head %d: single-term sums %lld / %lld are not bf16 values (VS must round the "
               "probabilities to bf16)", h, (long long)e16.vert[last], (long long)e16.slash[last]);
    if (sigbits(e32.vert[last]) <= 8 && sigbits(e32.slash[last]) <= 8)
      fail_msg("head %d: fp32 single-term sums look bf16-rounded (FlexPrefill keeps fp32)", h);
  }
  /* Every window row sums to 1: the vertical sums add up to W, so do the slash sums. */
  for (int h = 0; h < H; h++) {
    double tv = 0, ts = 0;
    for (int64_t j = 0; j < n; j++) tv += e32.vert[(size_t)h * n + j], ts += e32.slash[(size_t)h * n + j];
    if (fabs(tv / FIX - pl.W) > 1e-4 * pl.W || fabs(ts / FIX - pl.W) > 1e-4 * pl.W)
      fail_msg("head %d: the sums add up to %.6f / %.6f, want W = %d", h, tv / FIX, ts / FIX, pl.W);
  }
  if (plant) /* the planted features dominate their sums */
    for (int h = 0; h < H; h++) {
      const int64_t *v = e32.vert + (size_t)h * n;
      int32_t top;
      int64_t *vx = malloc((size_t)n * 8);
      memcpy(vx, v, (size_t)n * 8);
      sr_vs_topk(vx, n, 1, &top);
      if (top != pl.kc) fail_msg("head %d: the heaviest key is %d, not the planted %lld", h, top, (long long)pl.kc);
      if (h == 0) {
        memcpy(vx, e32.slash, (size_t)n * 8);
        for (int o = 0; o < 64; o++) vx[o] = 0;
        sr_vs_topk(vx, n, 1, &top);
        if (top != pl.odiag) fail_msg("the heaviest diagonal past 63 is %d, not the planted %lld", top, (long long)pl.odiag);
      }
      free(vx);
    }
  fprintf(stderr, "# estimate n=%lld W=%d H=%d KV=%d%s: matches the float64 reference\n",
          (long long)n, pl.W, H, KV, plant ? " (planted)" : "");
  sr_vs_est_free(&e32);
  sr_vs_est_free(&e16);
  assert_null(e32.vert);
  free(rv), free(rs), free(bv), free(bs), free(av), free(as);
  planted_free(&pl);
}

static void test_estimate_reference(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xe57;
  check_estimate(2048, 2, 1, 128, 1, &s); /* GQA: both q-heads on kv-head 0 */
  check_estimate(640, 4, 2, 100, 0, &s);  /* W not a multiple of 16 */
  check_estimate(256, 2, 2, 512, 0, &s);  /* W > n: the whole sequence */
  check_estimate(4224, 1, 1, 64, 0, &s);  /* runs of 2112 keys: two accumulation chunks each */
}

/* The structural rules of a VS / FlexPrefill selection and the planted features. */
static void check_rules(const planted *pl, const sr_selection *sel, const char *what,
                        int planted_too) {
  const sr_plan *p = &pl->p;
  for (int h = 0; h < p->q_heads; h++)
    for (int64_t m = 0; m < p->nqb_local; m++) {
      const int64_t r = h * p->nqb_local + m, qs = sr_plan_qblock_global(p, p->rank, m) * p->bq;
      const int32_t *t = sel->col + sel->row_ptr[r], *c = sel->vcol + sel->vrow_ptr[r];
      const int64_t nt = sel->row_ptr[r + 1] - sel->row_ptr[r], nc = sel->vrow_ptr[r + 1] - sel->vrow_ptr[r];
      uint8_t *tile = calloc((size_t)p->nkb_global, 1);
      for (int64_t i = 0; i < nt; i++) {
        if (t[i] < 0 || (int64_t)t[i] * p->bk > qs + p->bq - 1)
          fail_msg("%s: head %d qs %lld: tile %d is not causal", what, h, (long long)qs, t[i]);
        if (i > 0 && t[i] <= t[i - 1]) fail_msg("%s: head %d qs %lld: tiles not ascending", what, h, (long long)qs);
        tile[t[i]] = 1;
      }
      for (int64_t i = 0; i < nc; i++) {
        if (c[i] < 0 || c[i] >= qs) fail_msg("%s: head %d qs %lld: column %d not before qs", what, h, (long long)qs, c[i]);
        if (tile[c[i] / p->bk]) fail_msg("%s: head %d qs %lld: column %d inside a tile", what, h, (long long)qs, c[i]);
        if (i > 0 && c[i] <= c[i - 1]) fail_msg("%s: head %d qs %lld: columns not ascending", what, h, (long long)qs);
      }
      /* The 64 most local diagonals: the diagonal block and the one before it. */
      const int64_t db = (qs + p->bq - 1) / p->bk;
      if (!tile[db] || (qs > 0 && !tile[(qs - 63 > 0 ? qs - 63 : 0) / p->bk]))
        fail_msg("%s: head %d qs %lld: the diagonal blocks are missing", what, h, (long long)qs);
      /* Keys 0..3: as columns or in a tile, in every row. */
      for (int32_t f = 0; f < 4; f++) {
        int in = tile[f / p->bk];
        for (int64_t i = 0; i < nc; i++) in |= c[i] == f;
        if (!in) fail_msg("%s: head %d qs %lld: forced key %d not covered", what, h, (long long)qs, f);
      }
      if (planted_too && pl->kc >= 0 && qs > pl->kc) {
        int in = tile[pl->kc / p->bk];
        for (int64_t i = 0; i < nc; i++) in |= c[i] == pl->kc;
        if (!in) fail_msg("%s: head %d qs %lld: the planted key %lld is not covered", what, h, (long long)qs, (long long)pl->kc);
      }
      if (planted_too && pl->odiag >= 0 && h == 0 && qs + p->bq > pl->odiag) {
        const int64_t klo = qs - pl->odiag > 0 ? qs - pl->odiag : 0, khi = qs + p->bq - 1 - pl->odiag;
        for (int64_t b = klo / p->bk; b <= khi / p->bk; b++)
          if (!tile[b]) fail_msg("%s: qs %lld: block %lld of the planted diagonal %lld missing", what, (long long)qs, (long long)b, (long long)pl->odiag);
      }
      free(tile);
    }
}

/* The selection the method table gives for cfg (summarise + select). */
static void select_via_table(const planted *pl, const sr_config *cfg, sr_selection *sel) {
  const sr_method_ops *m = sr_method_get(cfg->method);
  assert_non_null(m);
  assert_int_equal(m->id, cfg->method);
  sr_method_in in = {.cfg = cfg, .p = &pl->p, .be = sr_backend_cpu(), .comm = g_world.comm,
                     .q = pl->q, .k = pl->k};
  void *state = NULL;
  if (m->summarise) assert_int_equal(m->summarise(&in, &state), SR_OK);
  memset(sel, 0x5a, sizeof *sel);
  assert_int_equal(m->select(&in, state, sel), SR_OK);
  if (m->free_state) m->free_state(state);
}

/* The naive pipeline: per-head budgets -> naive pick of the given sums. */
static void naive_patterns(const sr_vs_est *e, const int64_t *V, const int64_t *S, hpat *hp) {
  for (int h = 0; h < e->q_heads; h++)
    naive_pick(e->vert + (size_t)h * e->n, e->slash + (size_t)h * e->n, e->n, V[h], S[h], &hp[h]);
}

static void test_vs_selection(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0x5e1ec7;
  planted pl;
  make_planted(&pl, 2048, 2, 1, 32, 128, 1, &s);
  fprintf(stderr, "# planted key %lld, planted diagonal %lld\n", (long long)pl.kc, (long long)pl.odiag);
  sr_vs_est e16;
  estimate_of(&pl, 1, &e16);
  const int64_t budgets[3][2] = {{100, 0}, {80, 120}, {300, 70}}; /* V, S (0: S = V) */
  for (int b = 0; b < 3; b++) {
    sr_config cfg = pl.cfg;
    cfg.verticals = (int)budgets[b][0];
    cfg.slashes = (int)budgets[b][1];
    sr_selection sel;
    select_via_table(&pl, &cfg, &sel);
    char what[64];
    snprintf(what, sizeof what, "vertical_slash V=%d S=%d", cfg.verticals, cfg.slashes);
    check_rules(&pl, &sel, what, 1);
    const int64_t V[2] = {cfg.verticals, cfg.verticals};
    const int64_t S[2] = {cfg.slashes ? cfg.slashes : cfg.verticals, cfg.slashes ? cfg.slashes : cfg.verticals};
    hpat hp[2];
    naive_patterns(&e16, V, S, hp);
    check_sel_rows(&pl.p, &sel, hp, what);
    if (sel.budget_v != (double)V[0] || sel.budget_s != (double)S[0])
      fail_msg("%s: budget_v %.1f budget_s %.1f", what, sel.budget_v, sel.budget_s);
    /* The paper's formula: 1 - (tiles bq bk + columns bq) / (q_heads n (n+1) / 2). */
    const double want_sp = 1.0 - sel.paper_pairs / (2.0 * pl.n * (pl.n + 1) / 2.0);
    const sr_method_ops *mo = sr_method_get(SR_METHOD_VERTICAL_SLASH);
    assert_string_equal(mo->name, "vertical_slash");
    if (fabs(sr_vs_sparsity(&pl.p, &sel, sel.paper_pairs) - want_sp) > 1e-12 ||
        fabs(mo->sparsity_paper(&pl.p, &sel, sel.paper_pairs) - want_sp) > 1e-12)
      fail_msg("%s: paper sparsity %.9f, want %.9f", what, sr_vs_sparsity(&pl.p, &sel, sel.paper_pairs), want_sp);
    /* Columns are actually used (a VS selection that never keeps a column misses the point). */
    if (sel.nv == 0) fail_msg("%s: no key column in any row", what);
    hpat_free(&hp[0]);
    hpat_free(&hp[1]);
    sr_selection_free(&sel);
  }
  /* Budgets from sparsity (verticals = 0): V = S = sr_vs_budget(n, sparsity). */
  {
    sr_config cfg = pl.cfg;
    cfg.verticals = cfg.slashes = 0;
    cfg.sparsity = 0.5;
    const int64_t vb = sr_vs_budget(pl.n, cfg.sparsity);
    sr_selection sel;
    select_via_table(&pl, &cfg, &sel);
    const int64_t V[2] = {vb, vb};
    hpat hp[2];
    naive_patterns(&e16, V, V, hp);
    check_sel_rows(&pl.p, &sel, hp, "vertical_slash from sparsity 0.5");
    check_rules(&pl, &sel, "vertical_slash from sparsity 0.5", 1);
    hpat_free(&hp[0]);
    hpat_free(&hp[1]);
    sr_selection_free(&sel);
  }
  sr_vs_est_free(&e16);
  planted_free(&pl);
}

/* ---- 5. FlexPrefill --------------------------------------------------------------------- */

static int picks_equal(const sr_vs_est *a, const sr_vs_est *b, int64_t M) {
  int eq = 1;
  for (int h = 0; h < a->q_heads && eq; h++) {
    hpat x, y;
    naive_pick(a->vert + (size_t)h * a->n, a->slash + (size_t)h * a->n, a->n, M, M, &x);
    naive_pick(b->vert + (size_t)h * b->n, b->slash + (size_t)h * b->n, b->n, M, M, &y);
    eq = !memcmp(x.v, y.v, (size_t)x.nv * 4) && !memcmp(x.s, y.s, (size_t)x.ns * 4);
    hpat_free(&x);
    hpat_free(&y);
  }
  return eq;
}

static int sel_equal(const sr_selection *a, const sr_selection *b) {
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  if (a->q_heads != b->q_heads || a->nqb != b->nqb || a->nnz != b->nnz || a->nv != b->nv) return 0;
  return !memcmp(a->row_ptr, b->row_ptr, (size_t)(rows + 1) * 8) &&
         !memcmp(a->vrow_ptr, b->vrow_ptr, (size_t)(rows + 1) * 8) &&
         !memcmp(a->col, b->col, (size_t)a->nnz * 4) && !memcmp(a->vcol, b->vcol, (size_t)a->nv * 4);
}

static void test_flex_alpha0(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xf1e;
  planted pl;
  make_planted(&pl, 2048, 2, 1, 32, 128, 1, &s);
  sr_vs_est e32, e16;
  estimate_of(&pl, 0, &e32);
  estimate_of(&pl, 1, &e16);
  /* M_diff: the bf16 and fp32 sums pick differently (so the rounding of each method shows);
   * M_eq: they pick the same (no near tie at the cut: there Flex(0, M) must equal VS(M)). */
  int64_t Mdiff = -1, Meq = -1;
  for (int64_t M = 65; M <= 400 && (Mdiff < 0 || Meq < 0); M++) {
    const int eq = picks_equal(&e32, &e16, M);
    if (eq && Meq < 0) Meq = M;
    if (!eq && Mdiff < 0) Mdiff = M;
  }
  fprintf(stderr, "# flex alpha=0: min_budget %lld picks as VS does, %lld differently (bf16 vs fp32)\n",
          (long long)Meq, (long long)Mdiff);
  const int64_t Ms[3] = {Mdiff, Meq, 100};
  for (int i = 0; i < 3; i++) {
    const int64_t M = Ms[i];
    if (M < 0) continue;
    sr_config fc = pl.cfg, vc = pl.cfg;
    fc.method = SR_METHOD_FLEXPREFILL;
    fc.alpha = 0;
    fc.min_budget = (int)M;
    vc.verticals = vc.slashes = (int)M;
    sr_selection sf, sv;
    select_via_table(&pl, &fc, &sf);
    select_via_table(&pl, &vc, &sv);
    char what[64];
    snprintf(what, sizeof what, "flexprefill alpha=0 min_budget=%lld", (long long)M);
    if (sf.budget_v != (double)M || sf.budget_s != (double)M)
      fail_msg("%s: budget_v %.2f budget_s %.2f, want %lld", what, sf.budget_v, sf.budget_s, (long long)M);
    check_rules(&pl, &sf, what, 1);
    const int64_t V[2] = {M, M};
    hpat hp[2];
    naive_patterns(&e32, V, V, hp); /* FlexPrefill: the fp32 sums */
    check_sel_rows(&pl.p, &sf, hp, what);
    hpat_free(&hp[0]);
    hpat_free(&hp[1]);
    naive_patterns(&e16, V, V, hp); /* Vertical-Slash: the bf16 sums */
    check_sel_rows(&pl.p, &sv, hp, "vertical_slash V=S=M");
    hpat_free(&hp[0]);
    hpat_free(&hp[1]);
    if (M == Meq && !sel_equal(&sf, &sv))
      fail_msg("%s: differs from vertical_slash V=S=%lld although their picks agree", what, (long long)M);
    sr_selection_free(&sf);
    sr_selection_free(&sv);
  }
  sr_vs_est_free(&e32);
  sr_vs_est_free(&e16);
  planted_free(&pl);
}

static void test_flex_alpha(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xa1fa;
  planted pl;
  make_planted(&pl, 2048, 2, 1, 32, 128, 1, &s);
  sr_vs_est e32;
  estimate_of(&pl, 0, &e32);
  const double total = (double)e32.W * FIX; /* window means */
  const double alphas[7] = {0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97};
  const int mbs[2] = {64, 700};
  for (int mi = 0; mi < 2; mi++) {
    int64_t prevV[2] = {0, 0}, prevS[2] = {0, 0}, firstV = -1, lastV = -1;
    for (int a = 0; a < 7; a++) {
      double alpha = alphas[a];
      int64_t V[2], S[2];
      for (int tries = 0; tries < 20; tries++) { /* alpha off every knife edge of the reference */
        double m1, m2, worst = INFINITY;
        for (int h = 0; h < 2; h++) {
          const int64_t cv = naive_cover(e32.vert + (size_t)h * pl.n, pl.n, total, alpha, &m1);
          const int64_t cs = naive_cover(e32.slash + (size_t)h * pl.n, pl.n, total, alpha, &m2);
          V[h] = cv > mbs[mi] ? cv : mbs[mi];
          S[h] = cs > mbs[mi] ? cs : mbs[mi];
          worst = fmin(worst, fmin(m1, m2));
        }
        if (worst > 1e-9) break;
        alpha += 3e-9;
      }
      sr_config fc = pl.cfg;
      fc.method = SR_METHOD_FLEXPREFILL;
      fc.alpha = alpha;
      fc.min_budget = mbs[mi];
      sr_selection sel;
      select_via_table(&pl, &fc, &sel);
      char what[80];
      snprintf(what, sizeof what, "flexprefill alpha=%.3f min_budget=%d", alpha, mbs[mi]);
      /* The planted features need a slot past the forced ones (S > 64, V > 4). */
      check_rules(&pl, &sel, what, S[0] > 64 && V[0] > 4 && V[1] > 4);
      hpat hp[2];
      naive_patterns(&e32, V, S, hp);
      check_sel_rows(&pl.p, &sel, hp, what); /* per-head budgets, ids, budget_v/s */
      for (int h = 0; h < 2; h++) {
        if (V[h] < mbs[mi] || S[h] < mbs[mi]) fail_msg("%s: budget under min_budget", what);
        if (V[h] < prevV[h] || S[h] < prevS[h]) fail_msg("%s: head %d budget shrank as alpha grew", what, h);
        prevV[h] = V[h], prevS[h] = S[h];
      }
      if (firstV < 0) firstV = V[0] + V[1] + S[0] + S[1];
      lastV = V[0] + V[1] + S[0] + S[1];
      fprintf(stderr, "# %s: V %lld %lld  S %lld %lld\n", what, (long long)V[0], (long long)V[1],
              (long long)S[0], (long long)S[1]);
      hpat_free(&hp[0]);
      hpat_free(&hp[1]);
      sr_selection_free(&sel);
    }
    if (!(lastV > firstV)) fail_msg("flexprefill: the budgets do not grow with alpha");
  }
  /* alpha < 0 / min_budget = 0 come from the table (sr_flex_params) at the config's sparsity,
   * each on its own: (-1, 0) both, (0.3, 0) the floor only, (-1, 200) alpha only. */
  const double cfg_alpha[3] = {-1, 0.3, -1};
  const int cfg_mb[3] = {0, 0, 200};
  for (int c = 0; c < 3; c++) {
    sr_config fc = pl.cfg;
    fc.method = SR_METHOD_FLEXPREFILL;
    fc.sparsity = 0.8;
    fc.alpha = cfg_alpha[c];
    fc.min_budget = cfg_mb[c];
    double ta;
    int64_t tm;
    sr_flex_params(pl.n, fc.sparsity, &ta, &tm);
    assert_true(fabs(ta - 0.55) < 1e-12); /* 16K is the nearest length, .8 a grid sparsity */
    const double alpha = cfg_alpha[c] < 0 ? ta : cfg_alpha[c];
    const int64_t mb = cfg_mb[c] == 0 ? tm : cfg_mb[c];
    int64_t V[2], S[2];
    double m1, m2;
    for (int h = 0; h < 2; h++) {
      const int64_t cv = naive_cover(e32.vert + (size_t)h * pl.n, pl.n, total, alpha, &m1);
      const int64_t cs = naive_cover(e32.slash + (size_t)h * pl.n, pl.n, total, alpha, &m2);
      if (m1 < 1e-9 || m2 < 1e-9) skip(); /* a knife edge: cannot move a table alpha */
      V[h] = cv > mb ? cv : mb;
      S[h] = cs > mb ? cs : mb;
    }
    sr_selection sel;
    select_via_table(&pl, &fc, &sel);
    char what[96];
    snprintf(what, sizeof what, "flexprefill alpha=%g min_budget=%d sparsity 0.8", cfg_alpha[c], cfg_mb[c]);
    hpat hp[2];
    naive_patterns(&e32, V, S, hp);
    check_sel_rows(&pl.p, &sel, hp, what);
    hpat_free(&hp[0]);
    hpat_free(&hp[1]);
    sr_selection_free(&sel);
  }
  sr_vs_est_free(&e32);
  planted_free(&pl);
}

/* Budgets from sparsity where the table's floor is above 64: n = 8192 at sparsity .95 gives
 * V = S = 164 x 8192 / 16384 = 82 for Vertical-Slash (sr_vs_budget) and min_budget 82 with
 * alpha 0 for FlexPrefill (sr_flex_params). */
static void test_budget_from_sparsity(void **st) {
  (void)st;
  uint64_t s = g_seed ^ 0xb0d;
  planted pl;
  make_planted(&pl, 8192, 2, 1, 32, 128, 0, &s);
  double ta;
  int64_t tm;
  sr_flex_params(pl.n, 0.95, &ta, &tm);
  assert_true(ta == 0.0);
  assert_int_equal(tm, 82);
  assert_int_equal(sr_vs_budget(pl.n, 0.95), 82);
  for (int m = 0; m < 2; m++) {
    sr_config c = pl.cfg;
    c.sparsity = 0.95;
    c.method = m ? SR_METHOD_FLEXPREFILL : SR_METHOD_VERTICAL_SLASH;
    c.verticals = c.slashes = 0;
    c.alpha = -1;
    c.min_budget = 0;
    sr_selection sel;
    select_via_table(&pl, &c, &sel);
    if (sel.budget_v != 82.0 || sel.budget_s != 82.0)
      fail_msg("%s at n=8192, sparsity .95: budget_v %.2f budget_s %.2f, want 82 (Table 3 scaled)",
               sr_method_name(c.method), sel.budget_v, sel.budget_s);
    check_rules(&pl, &sel, sr_method_name(c.method), 0);
    sr_selection_free(&sel);
  }
  planted_free(&pl);
}

/* ---- 7. budgets ------------------------------------------------------------------------- */

static void test_budgets(void **st) {
  (void)st;
  /* docs/METHODS.md §3, Table 3, VS: V = S, highest sparsity first. */
  const double sp[10] = {0.95, 0.933, 0.9, 0.867, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3};
  const int64_t len[4] = {16384, 32768, 65536, 128000};
  const int64_t tab[4][10] = {{164, 240, 315, 400, 448, 576, 768, 1024, 1536, 2304},
                              {290, 384, 448, 576, 704, 1024, 1536, 2304, 3584, 4608},
                              {400, 448, 544, 640, 960, 1280, 2304, 4096, 6144, 8192},
                              {480, 768, 1024, 1536, 2048, 3584, 5632, 10240, 13312, 18432}};
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 10; j++)
      if (sr_vs_budget(len[i], sp[j]) != tab[i][j])
        fail_msg("sr_vs_budget(%lld, %.3f) = %lld, Table 3 says %lld", (long long)len[i], sp[j],
                 (long long)sr_vs_budget(len[i], sp[j]), (long long)tab[i][j]);
  /* Monotone: not increasing in sparsity, not decreasing in n, and at least 64. */
  const int64_t ns[12] = {1024, 4096, 10000, 16384, 20000, 32768, 50000, 65536, 100000, 128000, 200000, 1 << 20};
  for (int i = 0; i < 12; i++)
    for (int k = 0; k <= 80; k++) {
      const double a = 0.2 + 0.01 * k, b = a + 0.01;
      const int64_t x = sr_vs_budget(ns[i], a), y = sr_vs_budget(ns[i], b);
      if (y > x) fail_msg("sr_vs_budget(%lld, .) grows with sparsity: %.2f -> %lld, %.2f -> %lld", (long long)ns[i], a, (long long)x, b, (long long)y);
      if (x < 64) fail_msg("sr_vs_budget(%lld, %.2f) = %lld < 64", (long long)ns[i], a, (long long)x);
      if (i > 0 && x < sr_vs_budget(ns[i - 1], a))
        fail_msg("sr_vs_budget(., %.2f) shrinks with n: %lld -> %lld, %lld -> %lld", a, (long long)ns[i - 1],
                 (long long)sr_vs_budget(ns[i - 1], a), (long long)ns[i], (long long)x);
    }
  /* FlexPrefill (alpha, min_budget), the 7 highest sparsities. */
  const double fa[3][7] = {{0, 0, 0, 0, .55, .71, .88}, {0, 0, .45, .6, .7, .8, .92}, {0, .45, .55, .7, .77, .85, .94}};
  const int64_t fm[3][7] = {{164, 240, 315, 400, 512, 512, 512}, {290, 384, 512, 512, 512, 512, 512},
                            {400, 512, 512, 512, 512, 512, 512}};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 7; j++) {
      double alpha = -5;
      int64_t mb = -5;
      sr_flex_params(len[i], sp[j], &alpha, &mb);
      if (fabs(alpha - fa[i][j]) > 1e-12 || mb != fm[i][j])
        fail_msg("sr_flex_params(%lld, %.3f) = (%.3f, %lld), Table 3 says (%.2f, %lld)", (long long)len[i],
                 sp[j], alpha, (long long)mb, fa[i][j], (long long)fm[i][j]);
    }
  double alpha;
  int64_t mb;
  sr_flex_params(16384, 0.95, &alpha, &mb);
  assert_true(alpha == 0.0 && mb == 164);
  sr_flex_params(65536, 0.6, &alpha, &mb);
  assert_true(fabs(alpha - 0.94) < 1e-12 && mb == 512);
}

/* ---- 6. rank-count independence (MPI) --------------------------------------------------- */

static void synth_load(const sr_config *cfg, const sr_plan *p, char which, float *dst) {
  const int heads = which == 'q' ? p->q_heads : p->kv_heads;
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  const int nr = sr_plan_runs(p, p->rank, starts);
  for (int h = 0; h < heads; h++)
    for (int c = 0; c < nr; c++)
      sr_synth_rows(cfg, 0, which, h, starts[c], p->chunk_tokens,
                    dst + ((size_t)h * p->n_local + (size_t)c * p->chunk_tokens) * p->d);
}

typedef struct run_out {
  sr_plan p;
  float *q, *k;
  sr_vs_est est;
  sr_selection sel;
} run_out;

static void run_on(const sr_config *cfg, MPI_Comm comm, int nranks, int rank, run_out *o) {
  assert_int_equal(sr_plan_init(&o->p, cfg, nranks, rank), SR_OK);
  const sr_plan *p = &o->p;
  o->q = malloc((size_t)p->q_heads * p->n_local * p->d * 4);
  o->k = malloc((size_t)p->kv_heads * p->n_local * p->d * 4);
  synth_load(cfg, p, 'q', o->q);
  synth_load(cfg, p, 'k', o->k);
  sr_method_in in = {.cfg = cfg, .p = p, .be = sr_backend_cpu(), .comm = comm, .q = o->q, .k = o->k};
  memset(&o->est, 0x5a, sizeof o->est);
  assert_int_equal(sr_vs_estimate(&in, cfg->last_q, cfg->method == SR_METHOD_VERTICAL_SLASH, &o->est), SR_OK);
  const sr_method_ops *m = sr_method_get(cfg->method);
  void *state = NULL;
  assert_int_equal(m->summarise(&in, &state), SR_OK);
  memset(&o->sel, 0x5a, sizeof o->sel);
  assert_int_equal(m->select(&in, state, &o->sel), SR_OK);
  m->free_state(state);
}

static void run_free(run_out *o) {
  free(o->q);
  free(o->k);
  sr_vs_est_free(&o->est);
  sr_selection_free(&o->sel);
}

static void test_rank_independence(void **st) {
  (void)st;
  const int P = g_world.nranks, me = g_world.rank;
  /* bq, bk, last_q: windows inside one chunk or over two or three (zigzag, 4 ranks: chunks of
   * 192 tokens). */
  const int geo[3][3] = {{64, 64, 200}, {32, 16, 200}, {64, 32, 700}};
  int cases = 0;
  char err[512] = "";
#define MPI_EXPECT(cond, ...) \
  do {                        \
    if (!(cond) && !err[0]) snprintf(err, sizeof err, __VA_ARGS__); \
  } while (0)
  for (int g = 0; g < 3; g++)
    for (int method = 0; method < 2; method++)
      for (int shard = 0; shard < 2; shard++) {
        sr_config cfg;
        sr_config_defaults(&cfg);
        cfg.q_heads = 4;
        cfg.kv_heads = 2;
        cfg.head_dim = 32;
        cfg.seq_len = 1536; /* 2P chunks of whole blocks for P = 1..4 */
        cfg.block_q = geo[g][0];
        cfg.block_k = geo[g][1];
        cfg.shard = (sr_shard_scheme)shard;
        cfg.seed = g_seed;
        cfg.last_q = geo[g][2];
        cfg.method = method ? SR_METHOD_FLEXPREFILL : SR_METHOD_VERTICAL_SLASH;
        cfg.verticals = 100;
        cfg.slashes = 90;
        cfg.alpha = 0.6;
        cfg.min_budget = 64;
        run_out dist, solo;
        run_on(&cfg, g_world.comm, P, me, &dist);
        run_on(&cfg, MPI_COMM_SELF, 1, 0, &solo);
        char what[96];
        snprintf(what, sizeof what, "np %d rank %d %s %s bq=%d bk=%d W=%d", P, me, sr_method_name(cfg.method),
                 sr_shard_name(cfg.shard), cfg.block_q, cfg.block_k, cfg.last_q);
        const size_t cnt = (size_t)cfg.q_heads * cfg.seq_len;
        MPI_EXPECT(dist.est.W == solo.est.W, "%s: W %d vs %d", what, dist.est.W, solo.est.W);
        MPI_EXPECT(!memcmp(dist.est.vert, solo.est.vert, cnt * 8),
                   "%s: the vertical sums differ from the 1-rank run", what);
        MPI_EXPECT(!memcmp(dist.est.slash, solo.est.slash, cnt * 8),
                   "%s: the slash sums differ from the 1-rank run", what);
        /* This rank's rows are the 1-rank rows of the same global q-blocks. */
        const sr_plan *p = &dist.p;
        for (int h = 0; h < p->q_heads; h++)
          for (int64_t m = 0; m < p->nqb_local; m++) {
            const int64_t r = h * p->nqb_local + m;
            const int64_t R = h * solo.p.nqb_local + sr_plan_qblock_global(p, me, m);
            const int64_t nt = dist.sel.row_ptr[r + 1] - dist.sel.row_ptr[r];
            const int64_t nc = dist.sel.vrow_ptr[r + 1] - dist.sel.vrow_ptr[r];
            MPI_EXPECT(nt == solo.sel.row_ptr[R + 1] - solo.sel.row_ptr[R] &&
                           nc == solo.sel.vrow_ptr[R + 1] - solo.sel.vrow_ptr[R] &&
                           !memcmp(dist.sel.col + dist.sel.row_ptr[r], solo.sel.col + solo.sel.row_ptr[R], (size_t)nt * 4) &&
                           !memcmp(dist.sel.vcol + dist.sel.vrow_ptr[r], solo.sel.vcol + solo.sel.vrow_ptr[R], (size_t)nc * 4),
                       "%s: head %d q-block %lld differs from the 1-rank selection", what, h,
                       (long long)sr_plan_qblock_global(p, me, m));
          }
        MPI_EXPECT(dist.sel.budget_v == solo.sel.budget_v && dist.sel.budget_s == solo.sel.budget_s,
                   "%s: budgets %.2f/%.2f vs %.2f/%.2f on one rank", what, dist.sel.budget_v,
                   dist.sel.budget_s, solo.sel.budget_v, solo.sel.budget_s);
        double all = 0;
        MPI_Allreduce(&dist.sel.paper_pairs, &all, 1, MPI_DOUBLE, MPI_SUM, g_world.comm);
        MPI_EXPECT(all == solo.sel.paper_pairs, "%s: paper pairs %.0f over ranks, %.0f on one", what,
                   all, solo.sel.paper_pairs);
        if (me == 0 && g == 0 && shard == 0)
          fprintf(stderr, "# %s: V %.1f S %.1f per head, paper sparsity %.4f\n", what, solo.sel.budget_v,
                  solo.sel.budget_s, sr_vs_sparsity(&solo.p, &solo.sel, solo.sel.paper_pairs));
        run_free(&dist);
        run_free(&solo);
        sr_config_free(&cfg);
        cases++;
      }
#undef MPI_EXPECT
  /* Fail together (a rank failing alone would leave the others in a collective). */
  int bad = err[0] != 0, anybad = 0;
  MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, g_world.comm);
  if (bad) fail_msg("%s", err);
  if (anybad) fail_msg("rank %d: another rank failed", me);
  if (me == 0) fprintf(stderr, "# np %d: %d configurations bit-identical to one rank\n", P, cases);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  if (sr_world_init(&g_world, MPI_COMM_WORLD) != SR_OK) return 1;
  g_seed = sr_test_seed("test_vs");
  MPI_Bcast(&g_seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  sr_cpu_set_threads(1);
  int rc;
  if (argc > 1 && !strcmp(argv[1], "mpi")) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_rank_independence)};
    rc = cmocka_run_group_tests_name("test_vs_mpi", tests, NULL, NULL);
  } else {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk),          cmocka_unit_test(test_cover),
        cmocka_unit_test(test_pick),          cmocka_unit_test(test_convert_cases),
        cmocka_unit_test(test_convert_room),
        cmocka_unit_test(test_convert_random), cmocka_unit_test(test_select_rows),
        cmocka_unit_test(test_estimate_reference), cmocka_unit_test(test_vs_selection),
        cmocka_unit_test(test_flex_alpha0),   cmocka_unit_test(test_flex_alpha),
        cmocka_unit_test(test_budgets),       cmocka_unit_test(test_budget_from_sparsity),
    };
    rc = cmocka_run_group_tests_name("test_vs", tests, NULL, NULL);
  }
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  sr_world_free(&g_world);
  MPI_Finalize();
  return any ? 1 : 0;
}
