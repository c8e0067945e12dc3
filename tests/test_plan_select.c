/*
 * test_plan_select.c — sharding arithmetic, the Block-Sparse budget formula against the
 * paper's Table 3, and the Block-Sparse selection rules on constructed scores.
 */
#include "kernels.h"
#include "sr_attend.h"
#include "sr_config.h"
#include "sr_plan.h"
#include "sr_select.h"
#include "sr_test.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_seed;

static sr_config base_config(int64_t n, int bq, int bk, sr_shard_scheme shard) {
  sr_config c;
  sr_config_defaults(&c);
  c.q_heads = 4;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.seq_len = n;
  c.block_q = bq;
  c.block_k = bk;
  c.shard = shard;
  return c;
}

static void test_zigzag_ownership(void **st) {
  (void)st;
  for (int P = 1; P <= 4; P++)
    for (int shard = 0; shard < 2; shard++) {
      sr_config c = base_config(1536, 16, 32, (sr_shard_scheme)shard);
      int64_t *count = calloc(1536, sizeof(int64_t));
      for (int r = 0; r < P; r++) {
        sr_plan p;
        assert_int_equal(sr_plan_init(&p, &c, P, r), SR_OK);
        assert_int_equal(p.n_local * P, 1536);
        for (int64_t i = 0; i < p.n_local; i++) {
          int64_t pos = sr_plan_global_pos(&p, r, i);
          assert_true(pos >= 0 && pos < 1536);
          count[pos]++;
          assert_int_equal(sr_plan_owner_of_pos(&p, pos), r);
          assert_int_equal(sr_plan_local_row(&p, pos), i);
          if (i > 0) assert_true(pos > sr_plan_global_pos(&p, r, i - 1)); /* ascending */
        }
        if (shard == SR_SHARD_ZIGZAG) { /* chunks r and 2P-1-r */
          assert_int_equal(sr_plan_global_pos(&p, r, 0), (int64_t)r * p.chunk_tokens);
          assert_int_equal(sr_plan_global_pos(&p, r, p.chunk_tokens),
                           (int64_t)(2 * P - 1 - r) * p.chunk_tokens);
        }
        for (int64_t b = 0; b < p.nkb_local; b++) {
          int64_t j = sr_plan_kblock_global(&p, r, b), lb = -1;
          assert_int_equal(sr_plan_kblock_owner(&p, j, &lb), r);
          assert_int_equal(lb, b);
        }
      }
      for (int64_t i = 0; i < 1536; i++) assert_int_equal(count[i], 1);
      free(count);
    }
}

static void test_plan_errors(void **st) {
  (void)st;
  sr_plan p;
  sr_config c = base_config(1000, 16, 16, SR_SHARD_ZIGZAG);
  assert_int_equal(sr_plan_init(&p, &c, 4, 0), SR_ERR_SHAPE);
  assert_non_null(strstr(sr_last_error(), "seq_len 1000"));
  c = base_config(384, 64, 64, SR_SHARD_ZIGZAG); /* chunks of 48 tokens: not whole 64-blocks */
  assert_int_equal(sr_plan_init(&p, &c, 4, 0), SR_ERR_SHAPE);
  assert_non_null(strstr(sr_last_error(), "block_q 64"));
  c = base_config(384, 16, 16, SR_SHARD_ZIGZAG);
  assert_int_equal(sr_plan_init(&p, &c, 4, 3), SR_OK);
  c.kv_heads = 3;
  assert_int_equal(sr_plan_init(&p, &c, 4, 3), SR_ERR_SHAPE);
}

/* Geometries whose 32-bit indices would overflow are refused by the plan with one line that
 * names seq_len, the block sizes and the heads; the largest that fit are accepted. The plan is
 * arithmetic only, so these sizes cost nothing here. */
static void expect_too_large(const sr_config *c, int P, const char *seq, const char *what) {
  sr_plan p;
  assert_int_equal(sr_plan_init(&p, c, P, 0), SR_ERR_SHAPE);
  const char *m = sr_last_error();
  fprintf(stderr, "# refused: %s\n", m);
  char bq[32], bk[32], qh[32], kvh[32];
  snprintf(bq, sizeof bq, "block_q %d", c->block_q);
  snprintf(bk, sizeof bk, "block_k %d", c->block_k);
  snprintf(qh, sizeof qh, "%d q-heads", c->q_heads);
  snprintf(kvh, sizeof kvh, "%d kv-heads", c->kv_heads);
  const char *want[] = {seq, bq, bk, qh, kvh, what, "use larger blocks"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    if (!strstr(m, want[i])) fail_msg("message lacks \"%s\": %s", want[i], m);
  assert_null(strchr(m, '\n'));
}

static void test_plan_int32_limits(void **st) {
  (void)st;
  sr_plan p;
  /* Slot numbers: 8 kv-heads x 2^28 one-token key blocks = 2^31 > INT32_MAX. */
  sr_config c = base_config((int64_t)1 << 28, 16, 1, SR_SHARD_ZIGZAG);
  c.q_heads = 8, c.kv_heads = 8, c.method = SR_METHOD_DENSE;
  expect_too_large(&c, 1, "seq_len 268435456", "kv_heads x key blocks");
  /* 32 tokens less: 8 x (2^28 - 32) slots fit (zigzag chunks stay whole 16-blocks). */
  c.seq_len = ((int64_t)1 << 28) - 32;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  assert_int_equal(p.nkb_global, c.seq_len);
  /* CSR rows: 32 q-heads x 2^26 q-blocks = 2^31; 32 x (2^26 - 2) = 2^31 - 64 fits. */
  c = base_config((int64_t)1 << 30, 16, 16, SR_SHARD_ZIGZAG);
  c.q_heads = 32, c.kv_heads = 8, c.method = SR_METHOD_DENSE;
  expect_too_large(&c, 1, "seq_len 1073741824", "q_heads x q-blocks");
  c.seq_len = ((int64_t)1 << 30) - 32;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  assert_int_equal((int64_t)p.q_heads * p.nqb_global, ((int64_t)1 << 31) - 64);
  /* Also on many ranks (the bounds are global, not per rank), contiguous too. */
  c.seq_len = (int64_t)1 << 30, c.shard = SR_SHARD_CONTIGUOUS;
  expect_too_large(&c, 64, "seq_len 1073741824", "q_heads x q-blocks");
  /* Block-Sparse summaries: 8 kv-heads x 2^22 local key blocks x 128 = 2^32 floats on one
   * rank is refused (an MPI count), dense is not; on 4 ranks 2^30 per rank fits. */
  c = base_config((int64_t)1 << 26, 16, 16, SR_SHARD_ZIGZAG);
  c.q_heads = 32, c.kv_heads = 8, c.head_dim = 128, c.method = SR_METHOD_DENSE;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  c.method = SR_METHOD_BLOCK_SPARSE;
  expect_too_large(&c, 1, "seq_len 67108864", "summary floats per rank");
  assert_int_equal(sr_plan_init(&p, &c, 4, 1), SR_OK);
  /* The largest config values (2^40 tokens, 1024 heads, 1-token blocks) neither overflow
   * the check nor pass it. */
  c = base_config((int64_t)1 << 40, 1, 1, SR_SHARD_ZIGZAG);
  c.q_heads = 1024, c.kv_heads = 1024;
  expect_too_large(&c, 1, "seq_len 1099511627776", "kv_heads x key blocks");
}

/* Paper Table 3 Block-Sparse top_chunks at 16K/32K/64K (16-token blocks) for budgets
 * 1/20, 1/15, 1/10, 1/7.5, 1/5, 1/3, 1/2 of n. */
static void test_budget_table3(void **st) {
  (void)st;
  const double target[7] = {1 - 1 / 20.0, 1 - 1 / 15.0, 1 - 1 / 10.0, 1 - 1 / 7.5,
                            1 - 1 / 5.0,  1 - 1 / 3.0,  0.5};
  const int want[3][7] = {{26, 35, 53, 71, 108, 188, 300},
                          {52, 69, 105, 141, 216, 376, 600},
                          {104, 139, 210, 283, 432, 752, 1200}};
  for (int n = 0; n < 3; n++)
    for (int i = 0; i < 7; i++)
      assert_int_equal(sr_block_sparse_budget(1024 << n, target[i]), want[n][i]);
  assert_true(fabs(sr_block_sparse_sparsity(1024, 26) - 0.9499) < 1e-4);
  assert_true(sr_block_sparse_sparsity(1024, 1024) == 0.0);
  assert_true(sr_block_sparse_sparsity(1024, 5000) == 0.0);
}

static void test_dense_selection(void **st) {
  (void)st;
  sr_config c = base_config(1536, 16, 32, SR_SHARD_ZIGZAG);
  for (int r = 0; r < 3; r++) {
    sr_plan p;
    assert_int_equal(sr_plan_init(&p, &c, 3, r), SR_OK);
    sr_selection s;
    assert_int_equal(sr_select_dense(&p, &s), SR_OK);
    for (int h = 0; h < p.q_heads; h++)
      for (int64_t m = 0; m < p.nqb_local; m++) {
        int64_t row = h * p.nqb_local + m, qpos = sr_plan_qblock_global(&p, r, m) * p.bq;
        int64_t want = (qpos + p.bq - 1) / p.bk + 1;
        assert_int_equal(s.row_ptr[row + 1] - s.row_ptr[row], want);
        for (int64_t e = s.row_ptr[row]; e < s.row_ptr[row + 1]; e++)
          assert_int_equal(s.col[e], e - s.row_ptr[row]);
      }
    sr_selection_free(&s);
  }
}


/* Expected Block-Sparse row: forced {0, diag-1, diag}, then the highest scores among the other
 * causal blocks (ties: lower id), keep min(causal, K), ascending. */
static int expected_row(const double *score, int64_t diag, int K, int32_t *out) {
  int64_t causal = diag + 1, keep = causal < K ? causal : K, n = 0;
  char *taken = calloc((size_t)causal, 1);
  taken[0] = 1;
  taken[diag] = 1;
  if (diag >= 1) taken[diag - 1] = 1;
  for (int64_t j = 0; j < causal; j++) n += taken[j];
  while (n < keep) {
    int64_t best = -1;
    for (int64_t j = 0; j < causal; j++)
      if (!taken[j] && (best < 0 || score[j] > score[best])) best = j;
    if (best < 0) break;
    taken[best] = 1;
    n++;
  }
  int cnt = 0;
  for (int64_t j = 0; j < causal; j++)
    if (taken[j]) out[cnt++] = (int32_t)j;
  free(taken);
  return cnt;
}

/* Keys of block j are all s_j * e0 (so the block mean is s_j * e0); queries of head h are all
 * sign_h * e0: the pooled score of (m, j) is sign_h * s_j, known exactly. */
static void check_constructed(int bq, int bk, int K, int with_tie) {
  uint64_t seed = g_seed;
  sr_config c = base_config(512, bq, bk, SR_SHARD_ZIGZAG);
  c.q_heads = 2;
  c.kv_heads = 1;
  sr_plan p;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  const int d = p.d;
  double *score = malloc((size_t)p.nkb_global * sizeof(double));
  sr_summaries sum = {.kv_heads = 1, .d = d, .nkb = p.nkb_global};
  sum.kmean = calloc((size_t)p.nkb_global * d, sizeof(float));
  for (int64_t j = 0; j < p.nkb_global; j++) {
    score[j] = 1.0 + sr_test_uniform(&seed); /* distinct, positive */
    if (with_tie && j == 7) score[j] = score[5];
    sum.kmean[j * d] = (float)score[j];
  }
  float *q = calloc((size_t)p.q_heads * p.n_local * d, sizeof(float));
  for (int h = 0; h < 2; h++)
    for (int64_t i = 0; i < p.n_local; i++) q[((size_t)h * p.n_local + i) * d] = h == 0 ? 1.0f : -1.0f;
  sr_selection s;
  assert_int_equal(sr_select_block_sparse(&p, sr_backend_cpu(), q, &sum, K, &s), SR_OK);
  assert_int_equal(s.top_chunks, K < p.nkb_global ? K : (int)p.nkb_global);
  int32_t *want = malloc((size_t)p.nkb_global * sizeof(int32_t));
  double *neg = malloc((size_t)p.nkb_global * sizeof(double));
  for (int64_t j = 0; j < p.nkb_global; j++) neg[j] = -score[j];
  for (int h = 0; h < 2; h++)
    for (int64_t m = 0; m < p.nqb_local; m++) {
      int64_t row = h * p.nqb_local + m, qpos = sr_plan_qblock_global(&p, 0, m) * bq;
      int n = expected_row(h == 0 ? score : neg, (qpos + bq - 1) / bk, K, want);
      assert_int_equal(s.row_ptr[row + 1] - s.row_ptr[row], n);
      assert_memory_equal(s.col + s.row_ptr[row], want, (size_t)n * sizeof(int32_t));
    }
  sr_selection_free(&s);
  free(want);
  free(neg);
  free(q);
  free(score);
  free(sum.kmean);
}

static void test_block_sparse_rules(void **st) {
  (void)st;
  check_constructed(16, 16, 5, 0);
  check_constructed(16, 16, 3, 0);
  check_constructed(16, 16, 12, 1); /* tie between blocks 5 and 7: the lower id wins */
  check_constructed(32, 16, 6, 0);  /* bq != bk: the diagonal is the last visible key block */
  check_constructed(16, 16, 1000, 0); /* K above the block count: every causal block */
}

static void test_budget_too_small(void **st) {
  (void)st;
  sr_config c = base_config(512, 16, 16, SR_SHARD_ZIGZAG);
  sr_plan p;
  assert_int_equal(sr_plan_init(&p, &c, 1, 0), SR_OK);
  sr_selection s;
  sr_summaries sum = {0};
  assert_int_equal(sr_select_block_sparse(&p, sr_backend_cpu(), NULL, &sum, 2, &s), SR_ERR_CONFIG);
}

/* The closed form of sr_block_pairs against counting row by row, over block shapes and every
 * relative position from fully hidden to fully visible (and random far ones). */
static void test_block_pairs(void **st) {
  (void)st;
  const int shapes[][2] = {{1, 1}, {16, 16}, {64, 64}, {128, 128}, {64, 128}, {128, 64}, {16, 48}};
  srand(g_seed);
  for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
    const int bq = shapes[k][0], bk = shapes[k][1];
    for (int64_t off = -2 * (bq + bk); off <= 2 * (bq + bk); off++) {
      int64_t kpos = 1000 + (rand() % 7) * bk, qpos = kpos + off;
      int64_t want = 0;
      for (int i = 0; i < bq; i++) {
        int64_t v = qpos + i - kpos + 1;
        want += v <= 0 ? 0 : v < bk ? v : bk;
      }
      assert_int_equal(sr_block_pairs(qpos, bq, kpos, bk), want);
    }
    assert_int_equal(sr_block_pairs((int64_t)1 << 40, bq, 0, bk), (int64_t)bq * bk);
    assert_int_equal(sr_block_pairs(0, bq, (int64_t)1 << 40, bk), 0);
  }
}

int main(void) {
  g_seed = sr_test_seed("test_plan_select");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_zigzag_ownership), cmocka_unit_test(test_plan_errors),
      cmocka_unit_test(test_budget_table3),    cmocka_unit_test(test_dense_selection),
      cmocka_unit_test(test_block_sparse_rules), cmocka_unit_test(test_budget_too_small),
      cmocka_unit_test(test_block_pairs),       cmocka_unit_test(test_plan_int32_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
