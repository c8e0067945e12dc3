/*
 * test_kernels.c — the CPU backend against float64 references, on fresh random inputs.
 *
 * Every output buffer is poisoned with NaN before the op runs, so an op that does not write
 * (an empty kernel) or skips rows fails the comparison (NaN compares false with every tolerance).
 * Attention inputs are built the way the runtime builds them: a global K/V per kv-head is cut
 * into bk-row blocks and stored in a slot pool (optionally in shuffled slot order); the rows
 * of K/V past the sequence end are NaN, so a kernel that reads masked keys fails. The
 * reference reads K/V by global position, never through the pool, so a wrong slot fails too.
 * Tolerances (docs/DESIGN.md, "Correctness"): ||out - ref|| / ||ref|| <= 1e-5, |lse - ref| <= 1e-4.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kernels.h"
#include "sr_internal.h"
#include "sr_test.h"

#include <string.h>

static uint64_t rng;

#define OUT_TOL 1e-5
#define LSE_TOL 1e-4
/* Written after the last row of out/lse: must survive (rows >= nq are never written). */
#define GUARD_ROWS 4
#define GUARD_VAL 12345.0f

/* ------------------------------------------------------------------------------------------ */
/* Attention world: inputs, pool, CSR lists.                                                   */

typedef struct attn_case {
  int qh, kvh, d, bq, bk;
  int64_t n;        /* sequence length (keys exist at 0..n-1)                       */
  int64_t kv_limit; /* <= n                                                         */
  int nqb;          /* local q-blocks                                               */
  int64_t nq;       /* local valid rows (<= nqb*bq)                                 */
  int arb_qpos;     /* q-blocks at random global positions (else m*bq)              */
  int permute;      /* pool slots in shuffled order (else kv_head*nkb + block)      */
  int sparse;       /* random block subsets in random order (else all causal blocks) */
  float scale;      /* softmax scale; 0 means 1/sqrt(d)                              */
} attn_case;

typedef struct world {
  attn_case c;
  int64_t nkb;           /* key blocks per kv-head covering n                        */
  float *q;              /* [qh][nq][d]                                              */
  float *kg, *vg;        /* [kvh][nkb*bk][d] global, NaN at positions >= kv_limit    */
  int32_t *slot_of;      /* [kvh][nkb]                                               */
  float *kpool, *vpool;  /* [kvh*nkb][bk][d]                                         */
  int64_t *qpos;         /* [nqb]                                                    */
  int64_t *row_ptr;      /* [qh*nqb + 1]                                             */
  int32_t *slot;         /* [nnz]                                                    */
  int64_t *kpos;         /* [nnz]                                                    */
  float *out, *lse;      /* kernel outputs with GUARD_ROWS extra rows                */
  double *rout, *rlse;   /* reference                                                */
} world;

/* Uniform in [0, n) from the seeded generator (the modulo bias is irrelevant here). */
static int64_t rnd_below(int64_t n) { return (int64_t)(sr_test_next(&rng) % (uint64_t)n); }

/* Fisher-Yates: CSR entries and pool slots in random order (kernels.h promises neither). */
static void shuffle_i64(int64_t *x, int64_t n) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = rnd_below(i + 1), t = x[i];
    x[i] = x[j];
    x[j] = t;
  }
}

/*
 * The key blocks listed for q-block m, written to blocks[] (capacity nkb); returns the count.
 * Dense: every causal block inside kv_limit, ascending. Sparse: like the Block-Sparse rule
 * (block 0, the diagonal, the last causal block, random others) plus blocks entirely in the
 * future, which the kernel must skip; 1 row in 20 lists nothing at all.
 */
static int64_t pick_blocks(world *w, int m, int64_t *blocks) {
  const attn_case *c = &w->c;
  const int64_t qfirst = w->qpos[m];
  const int64_t qrows = c->nq - (int64_t)m * c->bq < c->bq ? c->nq - (int64_t)m * c->bq : c->bq;
  const int64_t qlast = qfirst + qrows - 1;
  const int64_t ncausal = qlast / c->bk + 1 < w->nkb ? qlast / c->bk + 1 : w->nkb;
  int64_t nb = 0;
  if (!c->sparse) {
    for (int64_t b = 0; b < ncausal; b++)
      if (b * c->bk < c->kv_limit) blocks[nb++] = b;
    return nb;
  }
  if (rnd_below(20) == 0) return 0; /* an empty row: out 0, lse -inf */
  const int64_t diag = qfirst / c->bk;
  for (int64_t b = 0; b < w->nkb; b++) {
    int take;
    if (b >= ncausal) take = rnd_below(4) == 0; /* future blocks: listed but never visible */
    else take = b == 0 || b == diag || b == ncausal - 1 || rnd_below(10) < 4;
    if (take) blocks[nb++] = b;
  }
  shuffle_i64(blocks, nb);
  return nb;
}

/* Builds inputs, pool and lists for one case; everything is freed by world_free. */
static void world_build(world *w, const attn_case *c) {
  memset(w, 0, sizeof *w);
  w->c = *c;
  if (w->c.scale == 0.0f) w->c.scale = 1.0f / sqrtf((float)c->d);
  const int64_t nkb = (c->n + c->bk - 1) / c->bk, npad = nkb * c->bk;
  w->nkb = nkb;
  const size_t qn = (size_t)c->qh * c->nq * c->d, kn = (size_t)c->kvh * npad * c->d;
  w->q = malloc(qn * sizeof(float));
  w->kg = malloc(kn * sizeof(float));
  w->vg = malloc(kn * sizeof(float));
  w->kpool = malloc(kn * sizeof(float));
  w->vpool = malloc(kn * sizeof(float));
  w->slot_of = malloc((size_t)c->kvh * nkb * sizeof(int32_t));
  w->qpos = malloc((size_t)c->nqb * sizeof(int64_t));
  assert_non_null(w->q);
  assert_non_null(w->kg);
  assert_non_null(w->vg);
  assert_non_null(w->kpool);
  assert_non_null(w->vpool);
  assert_non_null(w->slot_of);
  assert_non_null(w->qpos);
  sr_test_fill(w->q, qn, 1.5f, &rng);
  sr_test_fill(w->kg, kn, 1.5f, &rng);
  sr_test_fill(w->vg, kn, 1.0f, &rng);
  /* Keys past the sequence end do not exist: poison them. */
  for (int g = 0; g < c->kvh; g++)
    for (int64_t p = c->kv_limit; p < npad; p++) {
      sr__poison_f32(w->kg + ((size_t)g * npad + p) * c->d, (size_t)c->d);
      sr__poison_f32(w->vg + ((size_t)g * npad + p) * c->d, (size_t)c->d);
    }
  /* Slot map, identity or shuffled, and the pool it implies. */
  int64_t *perm = malloc((size_t)c->kvh * nkb * sizeof(int64_t));
  assert_non_null(perm);
  for (int64_t s = 0; s < c->kvh * nkb; s++) perm[s] = s;
  if (c->permute) shuffle_i64(perm, c->kvh * nkb);
  for (int64_t gb = 0; gb < c->kvh * nkb; gb++) {
    w->slot_of[gb] = (int32_t)perm[gb];
    const size_t blk = (size_t)c->bk * c->d;
    memcpy(w->kpool + perm[gb] * blk, w->kg + gb * blk, blk * sizeof(float));
    memcpy(w->vpool + perm[gb] * blk, w->vg + gb * blk, blk * sizeof(float));
  }
  free(perm);
  /* Query block positions: consecutive, or anywhere in [0, n - bq]. */
  for (int m = 0; m < c->nqb; m++)
    w->qpos[m] = c->arb_qpos ? rnd_below(c->n - c->bq + 1) : (int64_t)m * c->bq;
  /* CSR lists. */
  const int64_t rows = (int64_t)c->qh * c->nqb;
  w->row_ptr = malloc((size_t)(rows + 1) * sizeof(int64_t));
  w->slot = malloc((size_t)(rows * nkb + 1) * sizeof(int32_t));
  w->kpos = malloc((size_t)(rows * nkb + 1) * sizeof(int64_t));
  int64_t *blocks = malloc((size_t)nkb * sizeof(int64_t));
  assert_non_null(w->row_ptr);
  assert_non_null(w->slot);
  assert_non_null(w->kpos);
  assert_non_null(blocks);
  w->row_ptr[0] = 0;
  for (int h = 0; h < c->qh; h++)
    for (int m = 0; m < c->nqb; m++) {
      const int64_t r = (int64_t)h * c->nqb + m, nb = pick_blocks(w, m, blocks);
      const int g = h / (c->qh / c->kvh);
      for (int64_t i = 0; i < nb; i++) {
        const int64_t e = w->row_ptr[r] + i;
        w->slot[e] = w->slot_of[(int64_t)g * nkb + blocks[i]];
        w->kpos[e] = blocks[i] * c->bk;
      }
      w->row_ptr[r + 1] = w->row_ptr[r] + nb;
    }
  free(blocks);
  w->out = malloc(((size_t)c->qh * c->nq + GUARD_ROWS) * c->d * sizeof(float));
  w->lse = malloc(((size_t)c->qh * c->nq + GUARD_ROWS) * sizeof(float));
  w->rout = malloc((size_t)c->qh * c->nq * c->d * sizeof(double));
  w->rlse = malloc((size_t)c->qh * c->nq * sizeof(double));
  assert_non_null(w->out);
  assert_non_null(w->lse);
  assert_non_null(w->rout);
  assert_non_null(w->rlse);
}

static void world_free(world *w) {
  free(w->q);
  free(w->kg);
  free(w->vg);
  free(w->kpool);
  free(w->vpool);
  free(w->slot_of);
  free(w->qpos);
  free(w->row_ptr);
  free(w->slot);
  free(w->kpos);
  free(w->out);
  free(w->lse);
  free(w->rout);
  free(w->rlse);
}

/* The kernel's view of the world: the pool, never the global K/V. */
static sr_attn_args world_args(const world *w) {
  const attn_case *c = &w->c;
  return (sr_attn_args){.q_heads = c->qh, .d = c->d, .bq = c->bq, .bk = c->bk, .nqb = c->nqb,
                        .nq = c->nq, .q = w->q, .qpos = w->qpos, .k = w->kpool,
                        .v = w->vpool, .row_ptr = w->row_ptr, .slot = w->slot,
                        .kpos = w->kpos, .kv_limit = c->kv_limit,
                        .scale = c->scale, .out = w->out, .lse = w->lse};
}

/* Float64 attention over the listed blocks, reading K/V by global position. */
static void world_reference(world *w) {
  const attn_case *c = &w->c;
  const int64_t npad = w->nkb * c->bk;
  const double scale = c->scale;
  double *sc = malloc((size_t)(w->nkb * c->bk + 1) * sizeof(double));
  int64_t *kp = malloc((size_t)(w->nkb * c->bk + 1) * sizeof(int64_t));
  assert_non_null(sc);
  assert_non_null(kp);
  for (int h = 0; h < c->qh; h++) {
    const int g = h / (c->qh / c->kvh);
    for (int m = 0; m < c->nqb; m++) {
      const int64_t r = (int64_t)h * c->nqb + m;
      for (int i = 0; i < c->bq; i++) {
        const int64_t row = (int64_t)m * c->bq + i;
        if (row >= c->nq) break;
        const int64_t qp = w->qpos[m] + i;
        const float *qv = w->q + ((size_t)h * c->nq + row) * c->d;
        int64_t nvis = 0;
        double mx = -INFINITY;
        for (int64_t e = w->row_ptr[r]; e < w->row_ptr[r + 1]; e++)
          for (int j = 0; j < c->bk; j++) {
            const int64_t p = w->kpos[e] + j;
            if (p > qp || p >= c->kv_limit) continue;
            const float *kv = w->kg + ((size_t)g * npad + p) * c->d;
            double s = 0;
            for (int x = 0; x < c->d; x++) s += (double)qv[x] * kv[x];
            sc[nvis] = s * scale;
            kp[nvis++] = p;
            if (s * scale > mx) mx = s * scale;
          }
        double *ro = w->rout + ((size_t)h * c->nq + row) * c->d;
        for (int x = 0; x < c->d; x++) ro[x] = 0;
        double sum = 0;
        for (int64_t t = 0; t < nvis; t++) {
          const double p = exp(sc[t] - mx);
          const float *vv = w->vg + ((size_t)g * npad + kp[t]) * c->d;
          sum += p;
          for (int x = 0; x < c->d; x++) ro[x] += p * vv[x];
        }
        if (nvis > 0)
          for (int x = 0; x < c->d; x++) ro[x] /= sum;
        w->rlse[(size_t)h * c->nq + row] = nvis > 0 ? mx + log(sum) : -INFINITY;
      }
    }
  }
  free(sc);
  free(kp);
}

/* Poisons outputs, sets guards, runs the kernel. */
static void world_run(world *w, const sr_backend *be) {
  const attn_case *c = &w->c;
  const size_t rows = (size_t)c->qh * c->nq;
  sr__poison_f32(w->out, rows * c->d);
  sr__poison_f32(w->lse, rows);
  for (size_t i = rows * c->d; i < (rows + GUARD_ROWS) * c->d; i++) w->out[i] = GUARD_VAL;
  for (size_t i = rows; i < rows + GUARD_ROWS; i++) w->lse[i] = GUARD_VAL;
  sr_attn_args a = world_args(w);
  sr_status st = be->attn_fwd(&a);
  if (st != SR_OK) fail_msg("attn_fwd: %s: %s", sr_strerror(st), sr_last_error());
}

/* Compares kernel and reference; empty rows must be exactly (0, -inf). */
static void world_check(const world *w, const char *what) {
  const attn_case *c = &w->c;
  const size_t rows = (size_t)c->qh * c->nq;
  const double err = sr_test_relerr(w->out, w->rout, rows * c->d);
  double lerr = 0;
  size_t empty = 0;
  for (size_t r = 0; r < rows; r++) {
    if (isinf(w->rlse[r])) {
      empty++;
      if (!(isinf(w->lse[r]) && w->lse[r] < 0))
        fail_msg("%s: row %zu has no visible key but lse = %g", what, r, (double)w->lse[r]);
      for (int x = 0; x < c->d; x++)
        if (w->out[r * c->d + x] != 0.0f)
          fail_msg("%s: empty row %zu out[%d] = %g, expected 0", what, r, x,
                   (double)w->out[r * c->d + x]);
      continue;
    }
    const double diff = fabs((double)w->lse[r] - w->rlse[r]);
    if (!(diff <= lerr)) lerr = diff; /* NaN propagates into lerr */
  }
  for (size_t i = rows * c->d; i < (rows + GUARD_ROWS) * c->d; i++)
    if (w->out[i] != GUARD_VAL) fail_msg("%s: out written past row nq", what);
  for (size_t i = rows; i < rows + GUARD_ROWS; i++)
    if (w->lse[i] != GUARD_VAL) fail_msg("%s: lse written past row nq", what);
  fprintf(stderr,
          "# %-14s qh=%d kvh=%d d=%3d bq=%3d bk=%3d n=%4lld nq=%4lld kv_limit=%4lld "
          "nnz=%5lld empty=%zu  out relerr %.2e  lse abserr %.2e\n",
          what, c->qh, c->kvh, c->d, c->bq, c->bk, (long long)c->n, (long long)c->nq,
          (long long)c->kv_limit, (long long)w->row_ptr[(int64_t)c->qh * c->nqb], empty, err,
          lerr);
  if (!(err <= OUT_TOL)) fail_msg("%s: out relative error %.3e > %.0e", what, err, OUT_TOL);
  if (!(lerr <= LSE_TOL)) fail_msg("%s: lse abs error %.3e > %.0e", what, lerr, LSE_TOL);
}

/* One case end to end: build, reference, kernel, compare. */
static void run_case(const attn_case *c, const char *what) {
  world w;
  world_build(&w, c);
  world_reference(&w);
  world_run(&w, sr_backend_cpu());
  world_check(&w, what);
  world_free(&w);
}

/* A full local sequence: nqb = ceil(n/bq) consecutive q-blocks, nq = n. */
static attn_case seq_case(int qh, int kvh, int d, int bq, int bk, int64_t n, int sparse) {
  return (attn_case){.qh = qh, .kvh = kvh, .d = d, .bq = bq, .bk = bk, .n = n, .kv_limit = n,
                     .nqb = (int)((n + bq - 1) / bq), .nq = n, .sparse = sparse};
}

/* ------------------------------------------------------------------------------------------ */
/* Attention tests.                                                                            */

/* Dense causal attention: every causal block listed. n is never a multiple of the blocks, so
 * the last q-block is partial and the last key block ends past the sequence. */
static void test_attn_dense(void **state) {
  (void)state;
  const attn_case cases[] = {
      seq_case(8, 2, 64, 64, 64, 397, 0),   seq_case(4, 4, 128, 16, 16, 203, 0),
      seq_case(8, 2, 80, 16, 64, 333, 0),   seq_case(4, 4, 64, 64, 16, 301, 0),
      seq_case(8, 2, 128, 32, 128, 290, 0), seq_case(8, 2, 128, 128, 32, 300, 0),
      seq_case(4, 4, 80, 64, 64, 260, 0),   seq_case(2, 1, 37, 24, 40, 150, 0),
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], "dense");
}

/* Random block subsets in random order, some future blocks, some empty rows. */
static void test_attn_sparse(void **state) {
  (void)state;
  const attn_case cases[] = {
      seq_case(8, 2, 64, 16, 16, 390, 1),  seq_case(4, 4, 128, 64, 64, 455, 1),
      seq_case(8, 2, 80, 64, 16, 300, 1),  seq_case(8, 2, 128, 16, 64, 270, 1),
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], "sparse");
}

/* A rank's view: q-blocks at arbitrary global positions, slots in shuffled pool order, fewer
 * local rows than nqb*bq, and a kv_limit that cuts into the last slot and into the queries. */
static void test_attn_qpos_pool(void **state) {
  (void)state;
  attn_case cases[] = {
      {.qh = 8, .kvh = 2, .d = 64, .bq = 16, .bk = 64, .n = 520, .nqb = 7},
      {.qh = 4, .kvh = 4, .d = 128, .bq = 64, .bk = 64, .n = 400, .nqb = 3},
      {.qh = 8, .kvh = 2, .d = 80, .bq = 64, .bk = 16, .n = 333, .nqb = 4},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    attn_case *c = &cases[i];
    c->nq = (int64_t)c->nqb * c->bq - 1 - rnd_below(c->bq - 1);
    c->kv_limit = c->n - 1 - rnd_below(c->bk);
    c->arb_qpos = c->permute = 1;
    c->sparse = (int)i % 2;
    c->scale = 0.2f + 0.05f * (float)i; /* not 1/sqrt(d): the kernel must use args->scale */
    run_case(c, i % 2 ? "qpos+sparse" : "qpos+dense");
  }
}

/* The outputs of the last world_run, kept to compare a second run with, bit for bit. */
typedef struct kept_outputs {
  float *out, *lse;
} kept_outputs;

static kept_outputs keep_outputs(const world *w) {
  const size_t rows = (size_t)w->c.qh * w->c.nq;
  kept_outputs k = {malloc(rows * w->c.d * sizeof(float)), malloc(rows * sizeof(float))};
  assert_non_null(k.out);
  assert_non_null(k.lse);
  memcpy(k.out, w->out, rows * w->c.d * sizeof(float));
  memcpy(k.lse, w->lse, rows * sizeof(float));
  return k;
}

/* The last run equals the kept one bit for bit and matches float64; frees the kept outputs
 * and the world. */
static void expect_same_run(world *w, kept_outputs k, const char *what) {
  const size_t rows = (size_t)w->c.qh * w->c.nq;
  assert_memory_equal(k.out, w->out, rows * w->c.d * sizeof(float));
  assert_memory_equal(k.lse, w->lse, rows * sizeof(float));
  world_reference(w);
  world_check(w, what);
  free(k.out);
  free(k.lse);
  world_free(w);
}

/* The result depends on neither the thread count nor the row schedule: bitwise equal. */
static void test_attn_threads(void **state) {
  (void)state;
  attn_case c = seq_case(8, 2, 64, 16, 16, 300, 1);
  world w;
  world_build(&w, &c);
  sr_cpu_set_threads(1);
  world_run(&w, sr_backend_cpu());
  const kept_outputs one = keep_outputs(&w);
  sr_cpu_set_threads(2);
  world_run(&w, sr_backend_cpu());
  sr_cpu_set_threads(0);
  expect_same_run(&w, one, "threads 1==2");
}

/* GQA heads whose rows list the same entries run as one merged row (up to 128 lanes): a
 * group larger than one merged row (16 heads of 16 queries), a group of 6, bq = 32, d = 80
 * (the O^T form), all against float64. Then the merge must not change a bit: the same
 * dense lists, but every other head gets one extra entry that lies entirely in the future
 * of its rows (so it contributes nothing, but the rows no longer match and nothing merges). */
static void test_attn_gqa_merge(void **state) {
  (void)state;
  const attn_case cases[] = {
      seq_case(16, 1, 64, 16, 16, 230, 0),
      seq_case(12, 2, 128, 16, 32, 250, 0),
      seq_case(8, 2, 80, 32, 16, 170, 0),
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], "gqa-merge");

  /* Local q-blocks cover the first 160 of 400 positions: every row has future blocks. */
  attn_case c = {.qh = 8, .kvh = 2, .d = 64, .bq = 16, .bk = 16, .n = 400, .kv_limit = 400,
                 .nqb = 10, .nq = 157};
  world w;
  world_build(&w, &c);
  world_run(&w, sr_backend_cpu());
  const kept_outputs merged = keep_outputs(&w);
  /* Rebuild the lists with a future block appended to the rows of the odd heads. */
  const int64_t nr = (int64_t)c.qh * c.nqb, nnz = w.row_ptr[nr];
  int64_t *rp = malloc((size_t)(nr + 1) * sizeof(int64_t));
  int32_t *sl = malloc((size_t)(nnz + nr) * sizeof(int32_t));
  int64_t *kp = malloc((size_t)(nnz + nr) * sizeof(int64_t));
  assert_non_null(rp);
  assert_non_null(sl);
  assert_non_null(kp);
  rp[0] = 0;
  for (int64_t r = 0; r < nr; r++) {
    const int64_t b = w.row_ptr[r], n = w.row_ptr[r + 1] - b;
    const int h = (int)(r / c.nqb), g = h / (c.qh / c.kvh);
    memcpy(sl + rp[r], w.slot + b, (size_t)n * sizeof(int32_t));
    memcpy(kp + rp[r], w.kpos + b, (size_t)n * sizeof(int64_t));
    rp[r + 1] = rp[r] + n;
    if (h % 2) {
      const int64_t fb = w.nkb - 1; /* positions 384.. : after every local query (< 160) */
      sl[rp[r + 1]] = w.slot_of[(int64_t)g * w.nkb + fb];
      kp[rp[r + 1]] = fb * c.bk;
      rp[r + 1]++;
    }
  }
  free(w.row_ptr);
  free(w.slot);
  free(w.kpos);
  w.row_ptr = rp, w.slot = sl, w.kpos = kp;
  world_run(&w, sr_backend_cpu());
  expect_same_run(&w, merged, "merged==single");
}

/* Rows that see nothing: no entries, only future blocks, only keys past kv_limit. */
static void test_attn_empty_rows(void **state) {
  (void)state;
  attn_case c = {.qh = 2, .kvh = 1, .d = 64, .bq = 16, .bk = 16, .n = 64, .kv_limit = 40,
                 .nqb = 3, .nq = 40};
  world w;
  world_build(&w, &c);
  w.qpos[0] = 0, w.qpos[1] = 16, w.qpos[2] = 32;
  /* head 0: block 0 -> no entries; block 1 -> future slot 2 only; block 2 -> slot 3
   * (keys 48.. >= kv_limit). head 1: dense causal, to show the same call works there. */
  int64_t nb[6] = {0, 1, 1, 1, 2, 3};
  int64_t list[6][3] = {{0}, {2}, {3}, {0}, {0, 1}, {0, 1, 2}};
  w.row_ptr[0] = 0;
  for (int r = 0; r < 6; r++) {
    for (int64_t i = 0; i < nb[r]; i++) {
      w.slot[w.row_ptr[r] + i] = w.slot_of[list[r][i]];
      w.kpos[w.row_ptr[r] + i] = list[r][i] * c.bk;
    }
    w.row_ptr[r + 1] = w.row_ptr[r] + nb[r];
  }
  world_reference(&w);
  world_run(&w, sr_backend_cpu());
  world_check(&w, "empty rows");
  for (int64_t i = 0; i < c.nq; i++) assert_true(isinf(w.lse[i]) && w.lse[i] < 0);
  world_free(&w);
}

/* ------------------------------------------------------------------------------------------ */
/* Merge.                                                                                      */

/* Attention over blocks A and over blocks B (disjoint), merged, equals the reference over
 * A u B. Rows where A, B or both see nothing come up naturally (diagonal-only vs rest). */
static void test_merge_union(void **state) {
  (void)state;
  const sr_backend *be = sr_backend_cpu();
  attn_case c = seq_case(8, 2, 64, 16, 32, 300, 0);
  c.kv_limit = 290;
  world w;
  world_build(&w, &c);
  const int64_t rows = (int64_t)c.qh * c.nqb, nnz = w.row_ptr[rows];
  const size_t nrow = (size_t)c.qh * c.nq;
  /* Split every row's entries at random into A and B, remembering the union. */
  int64_t *rpa = malloc((size_t)(rows + 1) * sizeof(int64_t));
  int64_t *rpb = malloc((size_t)(rows + 1) * sizeof(int64_t));
  int32_t *sa = malloc((size_t)(nnz + 1) * sizeof(int32_t)), *sb = malloc((size_t)(nnz + 1) * 4);
  int64_t *ka = malloc((size_t)(nnz + 1) * sizeof(int64_t)), *kb = malloc((size_t)(nnz + 1) * 8);
  float *acc_o = malloc(nrow * c.d * sizeof(float)), *acc_l = malloc(nrow * sizeof(float));
  assert_true(rpa && rpb && sa && sb && ka && kb && acc_o && acc_l);
  rpa[0] = rpb[0] = 0;
  for (int64_t r = 0; r < rows; r++) {
    int64_t na = 0, nb = 0;
    for (int64_t e = w.row_ptr[r]; e < w.row_ptr[r + 1]; e++) {
      if (rnd_below(2)) {
        sa[rpa[r] + na] = w.slot[e], ka[rpa[r] + na++] = w.kpos[e];
      } else {
        sb[rpb[r] + nb] = w.slot[e], kb[rpb[r] + nb++] = w.kpos[e];
      }
    }
    rpa[r + 1] = rpa[r] + na;
    rpb[r + 1] = rpb[r] + nb;
  }
  world_reference(&w); /* over the union: the original lists */
  sr_attn_args a = world_args(&w);
  a.row_ptr = rpa, a.slot = sa, a.kpos = ka, a.out = acc_o, a.lse = acc_l;
  sr__poison_f32(acc_o, nrow * c.d);
  sr__poison_f32(acc_l, nrow);
  assert_int_equal(be->attn_fwd(&a), SR_OK);
  a.row_ptr = rpb, a.slot = sb, a.kpos = kb, a.out = w.out, a.lse = w.lse;
  sr__poison_f32(w.out, nrow * c.d);
  sr__poison_f32(w.lse, nrow);
  assert_int_equal(be->attn_fwd(&a), SR_OK);
  size_t ainf = 0, binf = 0;
  for (size_t r = 0; r < nrow; r++) ainf += isinf(acc_l[r]), binf += isinf(w.lse[r]);
  assert_true(ainf > 0 && binf > 0); /* the -inf paths were exercised */
  assert_int_equal(be->merge(acc_o, acc_l, w.out, w.lse, (int64_t)nrow, c.d), SR_OK);
  /* Check the merged result in place of the kernel output (guards untouched by merge). */
  memcpy(w.out, acc_o, nrow * c.d * sizeof(float));
  memcpy(w.lse, acc_l, nrow * sizeof(float));
  for (size_t i = nrow * c.d; i < (nrow + GUARD_ROWS) * c.d; i++) w.out[i] = GUARD_VAL;
  for (size_t i = nrow; i < nrow + GUARD_ROWS; i++) w.lse[i] = GUARD_VAL;
  world_check(&w, "merge A+B");
  free(rpa), free(rpb), free(sa), free(sb), free(ka), free(kb), free(acc_o), free(acc_l);
  world_free(&w);
}

/* Merge arithmetic on constructed rows: both finite (vs float64), one side -inf, both -inf. */
static void test_merge_rows(void **state) {
  (void)state;
  enum { ROWS = 64, D = 80 };
  float ao[ROWS * D], al[ROWS], po[ROWS * D], pl[ROWS];
  double ro[ROWS * D], rl[ROWS];
  sr_test_fill(ao, ROWS * D, 1.0f, &rng);
  sr_test_fill(po, ROWS * D, 1.0f, &rng);
  for (int r = 0; r < ROWS; r++) {
    al[r] = 20.0f * sr_test_uniform(&rng);
    pl[r] = 20.0f * sr_test_uniform(&rng);
    const int kind = r % 4; /* 0: both finite, 1: acc -inf, 2: part -inf, 3: both -inf */
    if (kind == 1 || kind == 3) al[r] = -INFINITY;
    if (kind == 2 || kind == 3) pl[r] = -INFINITY;
    for (int x = 0; x < D; x++) {
      const double a = ao[r * D + x], p = po[r * D + x];
      if (kind == 0) {
        const double mx = fmax(al[r], pl[r]);
        const double wa = exp(al[r] - mx), wp = exp(pl[r] - mx);
        ro[r * D + x] = (wa * a + wp * p) / (wa + wp);
        rl[r] = mx + log(wa + wp);
      } else if (kind == 1) {
        ro[r * D + x] = p, rl[r] = pl[r];
      } else if (kind == 2) {
        ro[r * D + x] = a, rl[r] = al[r];
      } else {
        ro[r * D + x] = 0, rl[r] = -INFINITY;
      }
    }
    /* The out of a -inf side is meaningless: garbage there must not leak into the result. */
    if (kind == 1 || kind == 3)
      for (int x = 0; x < D; x++) ao[r * D + x] = 1e30f;
    if (kind == 2 || kind == 3)
      for (int x = 0; x < D; x++) po[r * D + x] = 1e30f;
  }
  assert_int_equal(sr_backend_cpu()->merge(ao, al, po, pl, ROWS, D), SR_OK);
  const double err = sr_test_relerr(ao, ro, ROWS * D);
  fprintf(stderr, "# merge rows: relerr %.2e\n", err);
  assert_true(err <= OUT_TOL);
  for (int r = 0; r < ROWS; r++) {
    if (isinf(rl[r])) {
      assert_true(isinf(al[r]) && al[r] < 0);
    } else {
      assert_true(fabs(al[r] - rl[r]) <= LSE_TOL);
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* pool_mean, block_scores, topk.                                                              */

/* Means of b-row blocks; n is not a multiple of b in most cases, and one has n < b. */
static void test_pool_mean(void **state) {
  (void)state;
  const struct { int heads; int64_t n; int d, b; } cases[] = {
      {3, 200, 64, 16}, {2, 203, 80, 64}, {4, 7, 128, 16}, {1, 64, 5, 64}};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    const int heads = cases[t].heads, d = cases[t].d, b = cases[t].b;
    const int64_t n = cases[t].n, nb = (n + b - 1) / b;
    float *x = malloc((size_t)heads * n * d * sizeof(float));
    float *y = malloc((size_t)heads * nb * d * sizeof(float));
    double *ref = calloc((size_t)heads * nb * d, sizeof(double));
    assert_true(x && y && ref);
    sr_test_fill(x, (size_t)heads * n * d, 1.0f, &rng);
    for (int h = 0; h < heads; h++)
      for (int64_t i = 0; i < n; i++)
        for (int c = 0; c < d; c++) {
          const int64_t blk = i / b, cnt = (blk + 1) * b <= n ? b : n - blk * b;
          ref[((size_t)h * nb + blk) * d + c] += (double)x[((size_t)h * n + i) * d + c] / cnt;
        }
    sr__poison_f32(y, (size_t)heads * nb * d);
    assert_int_equal(sr_backend_cpu()->pool_mean(x, heads, n, d, b, y), SR_OK);
    const double err = sr_test_relerr(y, ref, (size_t)heads * nb * d);
    fprintf(stderr, "# pool_mean heads=%d n=%lld d=%d b=%d: relerr %.2e\n", heads,
            (long long)n, d, b, err);
    assert_true(err <= OUT_TOL);
    free(x), free(y), free(ref);
  }
}

/* s = a . b^T against float64; sizes straddle the kernel's 64-wide panels and 16 lanes, and
 * d = 17 exercises partial vectors. */
static void test_block_scores(void **state) {
  (void)state;
  const struct { int64_t na, nb; int d; } cases[] = {{64, 513, 128}, {70, 133, 80}, {5, 3, 64},
                                                     {130, 64, 17}};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    const int64_t na = cases[t].na, nb = cases[t].nb;
    const int d = cases[t].d;
    float *a = malloc((size_t)na * d * 4), *b = malloc((size_t)nb * d * 4);
    float *s = malloc((size_t)na * nb * 4);
    double *ref = malloc((size_t)na * nb * 8);
    assert_true(a && b && s && ref);
    sr_test_fill(a, (size_t)na * d, 1.0f, &rng);
    sr_test_fill(b, (size_t)nb * d, 1.0f, &rng);
    for (int64_t m = 0; m < na; m++)
      for (int64_t j = 0; j < nb; j++) {
        double acc = 0;
        for (int c = 0; c < d; c++) acc += (double)a[m * d + c] * b[j * d + c];
        ref[m * nb + j] = acc;
      }
    sr__poison_f32(s, (size_t)na * nb);
    assert_int_equal(sr_backend_cpu()->block_scores(a, na, b, nb, d, s), SR_OK);
    const double err = sr_test_relerr(s, ref, (size_t)na * nb);
    fprintf(stderr, "# block_scores na=%lld nb=%lld d=%d: relerr %.2e\n", (long long)na,
            (long long)nb, d, err);
    assert_true(err <= OUT_TOL);
    free(a), free(b), free(s), free(ref);
  }
}

/* The specified order: value descending, ties by lower index (+inf and -inf included). */
static const float *topk_x;
static int topk_cmp(const void *pa, const void *pb) {
  const int32_t i = *(const int32_t *)pa, j = *(const int32_t *)pb;
  const float a = topk_x[i], b = topk_x[j];
  if (a != b) return a > b ? -1 : 1;
  return i < j ? -1 : (i > j);
}

/* Top-k against a full sort by the specified order, for k = 1, 2, n/3, n-1, n. Values are
 * drawn from 8 levels so ties are everywhere; +inf and -inf are among them (the runtime
 * forces blocks with +inf and -inf marks future blocks). */
static void test_topk(void **state) {
  (void)state;
  const int64_t ns[] = {1, 7, 100, 1000, 4099};
  for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
    const int64_t n = ns[t];
    float *x = malloc((size_t)n * sizeof(float));
    int32_t *all = malloc((size_t)n * sizeof(int32_t)), *idx = malloc((size_t)n * 4);
    assert_true(x && all && idx);
    /* Few distinct values (many ties), a few +inf and -inf. */
    for (int64_t i = 0; i < n; i++) {
      const int64_t u = rnd_below(100);
      x[i] = u < 5 ? INFINITY : u < 15 ? -INFINITY : (float)rnd_below(8) - 3.5f;
    }
    if (n > 2) x[n - 1] = INFINITY, x[0] = -INFINITY; /* +inf last, -inf first */
    for (int64_t i = 0; i < n; i++) all[i] = (int32_t)i;
    topk_x = x;
    qsort(all, (size_t)n, sizeof(int32_t), topk_cmp);
    const int ks[] = {1, 2, (int)(n / 3), (int)n - 1, (int)n};
    for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
      const int k = ks[q];
      if (k < 1 || k > n) continue;
      for (int i = 0; i < k; i++) idx[i] = -1;
      assert_int_equal(sr_backend_cpu()->topk(x, n, k, idx), SR_OK);
      assert_memory_equal(idx, all, (size_t)k * sizeof(int32_t));
    }
    free(x), free(all), free(idx);
  }
  /* All equal: indices in order. All -inf: likewise. */
  float e[9];
  int32_t idx[9];
  for (int v = 0; v < 2; v++) {
    for (int i = 0; i < 9; i++) e[i] = v ? -INFINITY : 2.5f;
    assert_int_equal(sr_backend_cpu()->topk(e, 9, 4, idx), SR_OK);
    for (int i = 0; i < 4; i++) assert_int_equal(idx[i], i);
  }
  /* k > n is a shape error. */
  assert_int_equal(sr_backend_cpu()->topk(e, 3, 4, idx), SR_ERR_SHAPE);
}

/* Impossible shapes are reported, with a message, instead of computed. */
static void test_errors(void **state) {
  (void)state;
  const sr_backend *be = sr_backend_cpu();
  float x[16] = {0}, y[16];
  sr_attn_args a = {.q_heads = 1, .d = 4, .bq = 4, .bk = 4, .nqb = 1, .nq = 5};
  assert_int_equal(be->attn_fwd(&a), SR_ERR_SHAPE);
  assert_non_null(strstr(sr_last_error(), "nq=5"));
  a.nq = 4, a.d = 0;
  assert_int_equal(be->attn_fwd(&a), SR_ERR_SHAPE);
  assert_int_equal(be->merge(x, x, y, y, 2, 0), SR_ERR_SHAPE);
  assert_int_equal(be->pool_mean(x, 1, 4, 4, 0, y), SR_ERR_SHAPE);
  assert_int_equal(be->block_scores(x, 2, x, 2, -1, y), SR_ERR_SHAPE);
  assert_int_equal(be->topk(x, 3, -1, (int32_t *)y), SR_ERR_SHAPE);
}

int main(void) {
  /* SR_CPU_PATH (set per registration, tests/kernels.cmake) picks a kernel path: skipped where
   * this CPU lacks it, and the path that runs must be the one asked for. */
  const char *want = getenv("SR_CPU_PATH");
  if (want && *want) {
    if (!sr_cpu_path_supported(want)) {
      fprintf(stderr, "# kernel path %s: not supported by this CPU (skipped)\n", want);
      return 77;
    }
    if (strcmp(sr_cpu_kernel_path(), want) != 0) {
      fprintf(stderr, "asked for kernel path %s, running %s\n", want, sr_cpu_kernel_path());
      return 1;
    }
  }
  fprintf(stderr, "# kernel path %s\n", sr_cpu_kernel_path());
  rng = sr_test_seed("test_kernels");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attn_dense),      cmocka_unit_test(test_attn_sparse),
      cmocka_unit_test(test_attn_qpos_pool),  cmocka_unit_test(test_attn_threads),
      cmocka_unit_test(test_attn_empty_rows), cmocka_unit_test(test_merge_union),
      cmocka_unit_test(test_merge_rows),      cmocka_unit_test(test_pool_mean),
      cmocka_unit_test(test_block_scores),    cmocka_unit_test(test_topk),
      cmocka_unit_test(test_errors),          cmocka_unit_test(test_attn_gqa_merge),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
