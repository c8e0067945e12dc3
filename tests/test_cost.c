/*
 * test_cost.c — the paper's cost model (sr_cost.h): the shares the paper quotes (attention in
 * prefill, KV cache in decode, Gemma-3-12B vs Qwen2.5-14B), hand-computed values for a toy
 * model (global and sliding-window layers, paper and causal pair counts), monotonicity in N,
 * sparsity and batch, the budget comparison, and preset lookup.
 */
#include "sr_cost.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The paper's numbers are read off figures and rounded to whole percent: +-3 points. */
#define TOL_POINTS 3.0

/* cmocka's assert_float_equal compares floats: exact doubles here. */
#define deq(got, want, tol) deq_((got), (want), (tol), #got, __LINE__)
static void deq_(double got, double want, double tol, const char *what, int line) {
  if (!(fabs(got - want) <= tol))
    fail_msg("line %d: %s = %.17g, expected %.17g (tolerance %g)", line, what, got, want, tol);
}

static const sr_cost_model *get(const char *name) {
  const sr_cost_model *m = sr_cost_find(name);
  assert_non_null(m);
  return m;
}

static const char *qwen[] = {"qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"};

static double mean_prefill_share(int64_t L) {
  double s = 0;
  for (int i = 0; i < 4; i++) s += sr_cost_prefill_flops(get(qwen[i]), L, 0.0, 1, false).share;
  return 100 * s / 4;
}

static double mean_kv_share(int64_t L, int64_t batch) {
  double s = 0;
  for (int i = 0; i < 4; i++) s += sr_cost_decode_elems(get(qwen[i]), L, 0.0, batch).kv_share;
  return 100 * s / 4;
}

static void near_points(const char *what, double got, double want) {
  fprintf(stderr, "# %s: %.1f%% (paper %.0f%%)\n", what, got, want);
  if (fabs(got - want) > TOL_POINTS)
    fail_msg("%s: %.2f%%, paper %.0f%% +- %.0f", what, got, want, TOL_POINTS);
}

/* Appendix B: attention is 40% of prefill FLOPs at 16K, 68% at 64K, 80% at 128K, mean over
 * Qwen 7B-72B, with the formula as printed (L^2 pairs, projections counted as attention). */
static void test_paper_prefill_shares(void **state) {
  (void)state;
  near_points("prefill attention share, Qwen mean, 16K", mean_prefill_share(16384), 40);
  near_points("prefill attention share, Qwen mean, 64K", mean_prefill_share(65536), 68);
  near_points("prefill attention share, Qwen mean, 128K", mean_prefill_share(128000), 80);
}

/* Decode, KV share of the traffic: 7% (16K) to 35% (128K) at batch 1, 35-80% at batch 8,
 * 80-97% at batch 64 (the ends of each range are 16K and 128K). */
static void test_paper_decode_shares(void **state) {
  (void)state;
  near_points("decode KV share, batch 1, 16K", mean_kv_share(16384, 1), 7);
  near_points("decode KV share, batch 1, 128K", mean_kv_share(128000, 1), 35);
  near_points("decode KV share, batch 8, 16K", mean_kv_share(16384, 8), 35);
  near_points("decode KV share, batch 8, 128K", mean_kv_share(128000, 8), 80);
  near_points("decode KV share, batch 64, 16K", mean_kv_share(16384, 64), 80);
  near_points("decode KV share, batch 64, 128K", mean_kv_share(128000, 64), 97);
}

/* Gemma-3-12B vs Qwen2.5-14B at 64K, batch 8: 42% vs 76% in prefill, 61% vs 79% in decode. */
static void test_paper_gemma_vs_qwen(void **state) {
  (void)state;
  const sr_cost_model *g = get("gemma-3-12b"), *q = get("qwen2.5-14b");
  assert_int_equal(sr_cost_global_layers(g), 8);
  assert_int_equal(sr_cost_global_layers(q), 48);
  const double gp = 100 * sr_cost_prefill_flops(g, 65536, 0, 8, false).share;
  const double qp = 100 * sr_cost_prefill_flops(q, 65536, 0, 8, false).share;
  const double gd = 100 * sr_cost_decode_elems(g, 65536, 0, 8).kv_share;
  const double qd = 100 * sr_cost_decode_elems(q, 65536, 0, 8).kv_share;
  near_points("Gemma-3-12B prefill share, 64K, batch 8", gp, 42);
  near_points("Qwen2.5-14B prefill share, 64K, batch 8", qp, 76);
  near_points("Gemma-3-12B decode KV share, 64K, batch 8", gd, 61);
  near_points("Qwen2.5-14B decode KV share, 64K, batch 8", qd, 79);
}

/* A toy model, every term by hand: N=2, d=8, h=2, n_kv=1, d_h=4, d_mlp=16, |V|=10; L=4. */
static void test_hand_computed(void **state) {
  (void)state;
  sr_cost_model m = {"toy", "Toy", 2, 8, 2, 1, 4, 16, 10, 0, 0};
  sr_cost_prefill p = sr_cost_prefill_flops(&m, 4, 0.5, 1, false);
  deq(p.emb, 2 * 4 * 8, 0);                           /* 64 */
  deq(p.proj, 2 * 2 * 4 * 8 * (2 * 2 * 4 + 2 * 4 * 1), 0); /* 3072 */
  /* per pair 4 h d_h + 3 h = 38; 16 pairs, 2 layers: 1216 dense, 608 at rho 0.5 */
  deq(p.score_dense, 1216, 0);
  deq(p.score, 608, 0);
  deq(p.mlp, 2 * (6 * 4 * 8 * 16 + 2 * 4 * 16), 0); /* 6400 */
  deq(p.logits, 2 * 4 * 8 * 10, 0);                  /* 640 */
  deq(p.attention, 3680, 0);
  deq(p.other, 7104, 0);
  deq(p.total, 10784, 0);
  deq(p.share, 3680.0 / 10784.0, 1e-15);
  /* causal: 4*5/2 = 10 pairs per layer: 38*10*2 = 760 dense */
  p = sr_cost_prefill_flops(&m, 4, 0.5, 3, true);
  deq(p.score_dense, 3 * 760, 0);
  deq(p.score, 3 * 380, 0);
  deq(p.total, 3 * (64 + 3072 + 380 + 6400 + 640), 0);
  /* decode: weights 2 (4*8*8 + 3*8*16) + 8*10 + 8 = 1368; KV per sequence 2 layers * 2 d_h
   * n_kv L = 64, at rho 0.5 and batch 3: 96 */
  sr_cost_decode d = sr_cost_decode_elems(&m, 4, 0.5, 3);
  deq(d.weights, 1368, 0);
  deq(d.kv_dense, 192, 0);
  deq(d.kv, 96, 0);
  deq(d.total, 1464, 0);
  deq(sr_cost_of(&m, SR_COST_DECODE, 4, 0.5, 3, false), 2 * 1464, 0);

  /* Sliding window 2, every 2nd layer global: layer 0 local (paper: L W = 8 pairs; causal:
   * 1 + 2 + 2 + 2 = 7), layer 1 global and the only one sparsity touches. */
  sr_cost_model w = m;
  w.window = 2, w.global_every = 2;
  assert_int_equal(sr_cost_global_layers(&w), 1);
  deq(sr_cost_pairs(4, 2, false), 8, 0);
  deq(sr_cost_pairs(4, 2, true), 7, 0);
  deq(sr_cost_pairs(4, 8, true), 10, 0); /* window >= L: full triangle */
  p = sr_cost_prefill_flops(&w, 4, 0.5, 1, false);
  deq(p.score_dense, 38 * 16 + 38 * 8, 0);
  deq(p.score, 0.5 * 38 * 16 + 38 * 8, 0);
  p = sr_cost_prefill_flops(&w, 4, 0.5, 1, true);
  deq(p.score, 0.5 * 38 * 10 + 38 * 7, 0);
  d = sr_cost_decode_elems(&w, 4, 0.5, 1);
  deq(d.kv, 0.5 * 8 * 4 + 8 * 2, 0); /* global: rho L tokens; local: W tokens */

  /* The run report's per-layer number. */
  deq(sr_cost_attn_layer_flops(4, 2, 4, 0.0, true), 380, 0);
  deq(sr_cost_attn_layer_flops(4, 2, 4, 0.5, false), 304, 0);

  /* A real preset by hand: Qwen2.5-7B weights 28 (4 3584^2 + 3 3584 18944) + 3584 152064 + 3584. */
  deq(sr_cost_weights(get("qwen2.5-7b")), 7686852096.0, 0);
}

static void test_monotonic(void **state) {
  (void)state;
  int nm;
  const sr_cost_model *all = sr_cost_models(&nm);
  assert_int_equal(nm, 9);
  const int64_t Ls[] = {1024, 4096, 16384, 32768, 65536, 128000, 131072, 262144};
  const double sps[] = {0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99};
  for (int i = 0; i < nm; i++) {
    const sr_cost_model *m = &all[i];
    for (int c = 0; c < 2; c++) {
      const bool causal = c;
      for (int a = 1; a < 8; a++) { /* longer: more FLOPs, more bytes, larger shares */
        sr_cost_prefill p0 = sr_cost_prefill_flops(m, Ls[a - 1], 0, 1, causal);
        sr_cost_prefill p1 = sr_cost_prefill_flops(m, Ls[a], 0, 1, causal);
        assert_true(p1.total > p0.total);
        assert_true(p1.share > p0.share);
        sr_cost_decode d0 = sr_cost_decode_elems(m, Ls[a - 1], 0, 1);
        sr_cost_decode d1 = sr_cost_decode_elems(m, Ls[a], 0, 1);
        assert_true(d1.total > d0.total);
        assert_true(d1.kv_share > d0.kv_share);
      }
      for (int a = 1; a < 7; a++) { /* sparser: fewer FLOPs, fewer bytes, smaller shares */
        sr_cost_prefill p0 = sr_cost_prefill_flops(m, 65536, sps[a - 1], 1, causal);
        sr_cost_prefill p1 = sr_cost_prefill_flops(m, 65536, sps[a], 1, causal);
        assert_true(p1.total < p0.total);
        assert_true(p1.share < p0.share);
        deq(p1.score_dense, p0.score_dense, 0);
        deq(p1.other, p0.other, 0);
        sr_cost_decode d0 = sr_cost_decode_elems(m, 65536, sps[a - 1], 8);
        sr_cost_decode d1 = sr_cost_decode_elems(m, 65536, sps[a], 8);
        assert_true(d1.kv < d0.kv);
        assert_true(d1.total < d0.total);
        deq(d1.weights, d0.weights, 0);
      }
      /* the causal count is about half the paper's for full attention */
      sr_cost_prefill pp = sr_cost_prefill_flops(m, 65536, 0, 1, false);
      sr_cost_prefill pc = sr_cost_prefill_flops(m, 65536, 0, 1, true);
      assert_true(pc.score_dense < pp.score_dense);
      if (m->window == 0) deq(pc.score_dense / pp.score_dense, 0.5, 1e-4);
    }
    /* batch: prefill linear in B; decode weights once, KV B times */
    sr_cost_prefill b1 = sr_cost_prefill_flops(m, 32768, 0.9, 1, false);
    sr_cost_prefill b8 = sr_cost_prefill_flops(m, 32768, 0.9, 8, false);
    deq(b8.total / b1.total, 8, 1e-12);
    deq(b8.share, b1.share, 1e-12);
    sr_cost_decode e1 = sr_cost_decode_elems(m, 32768, 0.9, 1);
    sr_cost_decode e8 = sr_cost_decode_elems(m, 32768, 0.9, 8);
    deq(e8.weights, e1.weights, 0);
    deq(e8.kv / e1.kv, 8, 1e-12);
    assert_true(e8.kv_share > e1.kv_share);
    /* decode: sparse reads less than dense, for every preset and length */
    for (int a = 0; a < 8; a++)
      assert_true(sr_cost_decode_elems(m, Ls[a], 0.9, 1).total <
                  sr_cost_decode_elems(m, Ls[a], 0.0, 1).total);
  }
  /* Gemma's sliding layers are never sparsified: even sparsity 0.99 keeps their work. */
  const sr_cost_model *g = get("gemma-3-27b");
  sr_cost_decode gd = sr_cost_decode_elems(g, 131072, 0.99, 1);
  assert_true(gd.kv > 0.01 * gd.kv_dense);
}

/* "A smaller dense or a larger sparse model for this budget?" */
static void test_fit(void **state) {
  (void)state;
  const sr_cost_model *ms[4];
  double ratio[4];
  for (int i = 0; i < 4; i++) ms[i] = get(qwen[i]);
  double budget = sr_cost_of(ms[0], SR_COST_PREFILL, 128000, 0, 1, false);
  /* dense: only the budget model itself fits (ratio exactly 1) */
  assert_int_equal(sr_cost_fit(ms, 4, SR_COST_PREFILL, 128000, 0, 1, false, budget, ratio), 0);
  deq(ratio[0], 1.0, 0);
  for (int i = 1; i < 4; i++) assert_true(ratio[i] > 1);
  /* sparsity 0.9 at 128K: Qwen2.5-14B fits within 7B dense's prefill FLOPs, 32B does not */
  assert_int_equal(sr_cost_fit(ms, 4, SR_COST_PREFILL, 128000, 0.9, 1, false, budget, ratio), 1);
  assert_true(ratio[1] < 1 && ratio[2] > 1);
  /* decode at batch 64, 128K: even Qwen2.5-72B at 0.95 reads less than 7B dense */
  budget = sr_cost_of(ms[0], SR_COST_DECODE, 128000, 0, 64, false);
  assert_int_equal(sr_cost_fit(ms, 4, SR_COST_DECODE, 128000, 0.95, 64, false, budget, ratio), 3);
  /* a budget nothing meets */
  assert_int_equal(sr_cost_fit(ms, 4, SR_COST_DECODE, 128000, 0.95, 64, false, 1.0, NULL), -1);
}

static void test_find(void **state) {
  (void)state;
  assert_ptr_equal(sr_cost_find("Qwen2.5-7B"), sr_cost_find("qwen2.5-7b"));
  assert_ptr_equal(sr_cost_find("LLAMA-3.1_70B"), sr_cost_find("llama-3.1-70b"));
  assert_null(sr_cost_find("qwen2.5-7"));
  assert_null(sr_cost_find("qwen2.5-7bx"));
  assert_null(sr_cost_find(""));
  int n;
  const sr_cost_model *all = sr_cost_models(&n);
  for (int i = 0; i < n; i++) {
    assert_non_null(strstr(sr_cost_names(), all[i].name));
    assert_ptr_equal(sr_cost_find(all[i].label), &all[i]);
    assert_true(all[i].q_heads % all[i].kv_heads == 0);
  }
  assert_int_equal(get("gemma-3-4b")->window, 1024);
  assert_int_equal(sr_cost_global_layers(get("gemma-3-4b")), 5);
  assert_int_equal(sr_cost_global_layers(get("gemma-3-27b")), 10);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paper_prefill_shares), cmocka_unit_test(test_paper_decode_shares),
      cmocka_unit_test(test_paper_gemma_vs_qwen),  cmocka_unit_test(test_hand_computed),
      cmocka_unit_test(test_monotonic),            cmocka_unit_test(test_fit),
      cmocka_unit_test(test_find),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
