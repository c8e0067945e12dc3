/*
 * test_gpu_backend.c — every op of the CUDA backend against the CPU backend, on fresh random
 * inputs. Skipped (exit 77) where sr_backend_cuda() finds no usable device, as on CI.
 *
 * The CUDA backend stores q/k/v in bf16, so the inputs are drawn, rounded to bf16 on the host
 * (round to nearest even) and given to both backends: the CPU backend then computes in fp32
 * on exactly the values the GPU holds, and the comparison measures the GPU's arithmetic
 * (bf16 P in P.V, fp32 accumulation). Tolerances: attention out ||gpu - cpu|| / ||cpu|| <=
 * 1e-2 and |lse| <= 1e-2 (bf16); fp32 ops (merge, pooling, scores) 1e-5; ids and stored bits
 * exactly. Every output is poisoned (NaN) before the op; rows past nq carry guard values
 * that must survive; K/V past kv_limit are NaN in the pool, so a kernel that reads them fails.
 * Every attention kernel that fits a shape is run (generic, mma, and wgmma where built).
 * Last, the internal upload of host lists (sr__cuda_upload) with a first piece past 2 GiB:
 * about 2.2 GB of pageable and 3.2 GB of pinned host memory, 3.2 GB of device memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kernels.h"
#include "sr_internal.h"
#include "sr_test.h"
#ifdef SR_CUDA
#include "sr_cuda.h"
#endif

#include <string.h>

static uint64_t rng;
static const sr_backend *gpu;

#define ATT_OUT_TOL 1e-2
#define ATT_LSE_TOL 1e-2
#define F32_TOL 1e-5
#define GUARD_ROWS 3
#define GUARD_VAL 12345.0f

/* ---- helpers ----------------------------------------------------------------------------- */

/* fp32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
static uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float bf16_value(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static void round_bf16(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = bf16_value(bf16_bits(x[i]));
}
static int64_t rnd_below(int64_t n) { return (int64_t)(sr_test_next(&rng) % (uint64_t)n); }

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes > 0 ? bytes : 1);
  assert_non_null(p);
  return p;
}
static void *dalloc(size_t bytes) {
  void *p = NULL;
  if (gpu->alloc(bytes, &p) != SR_OK) fail_msg("alloc: %s", sr_last_error());
  return p;
}
static void check(sr_status st, const char *what) {
  if (st != SR_OK) fail_msg("%s: %s: %s", what, sr_strerror(st), sr_last_error());
}
/* n fp32 host values -> new device fp32 buffer. */
static float *dcopy(const float *h, size_t n) {
  float *d = dalloc(n * sizeof(float));
  check(gpu->copy_in(d, h, n), "copy_in");
  return d;
}
/* n host floats -> new device storage (bf16) buffer. */
static void *dstore(const float *h, size_t n) {
  void *d = dalloc(n * gpu->elem_bytes + 16);
  check(gpu->store(d, h, n), "store");
  return d;
}
/* Reads n bf16 values of device memory back as bits (n even: copy_out moves floats). */
static void read_bf16(uint16_t *dst, const void *src, size_t n) {
  assert_true(n % 2 == 0);
  check(gpu->copy_out((float *)dst, (const float *)src, n / 2), "copy_out (bf16 bits)");
}

/* ---- attention world ------------------------------------------------------------------- */

typedef struct attn_case {
  int qh, kvh, d, bq, bk;
  int64_t n, kv_limit;
  int nqb;
  int64_t nq;
  int arb_qpos, permute, sparse;
  float scale;
} attn_case;

typedef struct world {
  attn_case c;
  int64_t nkb;
  float *q, *kpool, *vpool; /* bf16-representable fp32, NaN past kv_limit */
  int64_t *qpos, *row_ptr, *kpos;
  int32_t *slot;
} world;

/* Listed key blocks of q-block m (as test_kernels.c: Block-Sparse-like picks in random order,
 * some entirely future blocks, 1 row in 20 empty; dense lists every causal block). */
static int64_t pick_blocks(const world *w, int m, int64_t *blocks) {
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
  if (rnd_below(20) == 0) return 0;
  const int64_t diag = qfirst / c->bk;
  for (int64_t b = 0; b < w->nkb; b++) {
    int take;
    if (b >= ncausal) take = rnd_below(4) == 0;
    else take = b == 0 || b == diag || b == ncausal - 1 || rnd_below(10) < 4;
    if (take) blocks[nb++] = b;
  }
  for (int64_t i = nb - 1; i > 0; i--) {
    int64_t j = rnd_below(i + 1), t = blocks[i];
    blocks[i] = blocks[j];
    blocks[j] = t;
  }
  return nb;
}

static void world_build(world *w, const attn_case *c) {
  memset(w, 0, sizeof *w);
  w->c = *c;
  if (w->c.scale == 0.0f) w->c.scale = 1.0f / sqrtf((float)c->d);
  const int64_t nkb = (c->n + c->bk - 1) / c->bk, npad = nkb * c->bk;
  w->nkb = nkb;
  const size_t qn = (size_t)c->qh * c->nq * c->d, kn = (size_t)c->kvh * npad * c->d;
  const size_t blk = (size_t)c->bk * c->d;
  w->q = xmalloc(qn * sizeof(float));
  w->kpool = xmalloc(kn * sizeof(float));
  w->vpool = xmalloc(kn * sizeof(float));
  sr_test_fill(w->q, qn, 1.5f, &rng);
  round_bf16(w->q, qn);
  /* Global K/V per kv-head, cut into slots in identity or shuffled order. */
  int64_t *perm = xmalloc((size_t)c->kvh * nkb * sizeof(int64_t));
  for (int64_t s = 0; s < c->kvh * nkb; s++) perm[s] = s;
  if (c->permute)
    for (int64_t i = c->kvh * nkb - 1; i > 0; i--) {
      int64_t j = rnd_below(i + 1), t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
  int32_t *slot_of = xmalloc((size_t)c->kvh * nkb * sizeof(int32_t));
  for (int64_t gb = 0; gb < c->kvh * nkb; gb++) {
    slot_of[gb] = (int32_t)perm[gb];
    float *kb = w->kpool + perm[gb] * blk, *vb = w->vpool + perm[gb] * blk;
    sr_test_fill(kb, blk, 1.5f, &rng);
    sr_test_fill(vb, blk, 1.0f, &rng);
    round_bf16(kb, blk);
    round_bf16(vb, blk);
    const int64_t p0 = (gb % nkb) * c->bk; /* global position of the slot's first key */
    for (int64_t j = 0; j < c->bk; j++)
      if (p0 + j >= c->kv_limit) {
        sr__poison_f32(kb + j * c->d, (size_t)c->d);
        sr__poison_f32(vb + j * c->d, (size_t)c->d);
      }
  }
  free(perm);
  w->qpos = xmalloc((size_t)c->nqb * sizeof(int64_t));
  for (int m = 0; m < c->nqb; m++)
    w->qpos[m] = c->arb_qpos ? rnd_below(c->n - c->bq + 1) : (int64_t)m * c->bq;
  const int64_t rows = (int64_t)c->qh * c->nqb;
  w->row_ptr = xmalloc((size_t)(rows + 1) * sizeof(int64_t));
  w->slot = xmalloc((size_t)(rows * nkb + 1) * sizeof(int32_t));
  w->kpos = xmalloc((size_t)(rows * nkb + 1) * sizeof(int64_t));
  int64_t *blocks = xmalloc((size_t)nkb * sizeof(int64_t));
  w->row_ptr[0] = 0;
  for (int h = 0; h < c->qh; h++)
    for (int m = 0; m < c->nqb; m++) {
      const int64_t r = (int64_t)h * c->nqb + m, nb = pick_blocks(w, m, blocks);
      const int g = h / (c->qh / c->kvh);
      for (int64_t i = 0; i < nb; i++) {
        w->slot[w->row_ptr[r] + i] = slot_of[(int64_t)g * nkb + blocks[i]];
        w->kpos[w->row_ptr[r] + i] = blocks[i] * c->bk;
      }
      w->row_ptr[r + 1] = w->row_ptr[r] + nb;
    }
  free(blocks);
  free(slot_of);
}

static void world_free(world *w) {
  free(w->q), free(w->kpool), free(w->vpool), free(w->qpos), free(w->row_ptr), free(w->slot),
      free(w->kpos);
}

static sr_attn_args world_args(const world *w) {
  const attn_case *c = &w->c;
  return (sr_attn_args){.q_heads = c->qh, .d = c->d, .bq = c->bq, .bk = c->bk, .nqb = c->nqb,
                        .nq = c->nq, .q = w->q, .qpos = w->qpos, .k = w->kpool, .v = w->vpool,
                        .row_ptr = w->row_ptr, .slot = w->slot, .kpos = w->kpos,
                        .kv_limit = c->kv_limit, .scale = c->scale};
}

#ifdef SR_CUDA
/* Runs kernel `kernel` on the GPU and compares with the CPU result (ro, rl). */
static void attn_compare(const world *w, const float *ro, const float *rl, int kernel,
                         const char *what) {
  const attn_case *c = &w->c;
  const size_t rows = (size_t)c->qh * c->nq, kn = (size_t)c->kvh * w->nkb * c->bk * c->d;
  float *host_o = xmalloc((rows + GUARD_ROWS) * c->d * sizeof(float));
  float *host_l = xmalloc((rows + GUARD_ROWS) * sizeof(float));
  sr__poison_f32(host_o, rows * c->d);
  sr__poison_f32(host_l, rows);
  for (size_t i = rows * c->d; i < (rows + GUARD_ROWS) * c->d; i++) host_o[i] = GUARD_VAL;
  for (size_t i = rows; i < rows + GUARD_ROWS; i++) host_l[i] = GUARD_VAL;
  float *d_o = dcopy(host_o, (rows + GUARD_ROWS) * c->d), *d_l = dcopy(host_l, rows + GUARD_ROWS);
  void *dq = dstore(w->q, rows * c->d), *dk = dstore(w->kpool, kn), *dv = dstore(w->vpool, kn);
  sr_attn_args a = world_args(w);
  a.q = dq, a.k = dk, a.v = dv, a.out = d_o, a.lse = d_l;
  sr__cuda_attn_force(kernel);
  check(gpu->attn_fwd(&a), "attn_fwd");
  assert_int_equal(sr__cuda_attn_last(), kernel);
  sr__cuda_attn_force(SR_CUDA_ATTN_AUTO);
  check(gpu->copy_out(host_o, d_o, (rows + GUARD_ROWS) * c->d), "copy_out out");
  check(gpu->copy_out(host_l, d_l, rows + GUARD_ROWS), "copy_out lse");
  double num = 0, den = 0, lerr = 0;
  size_t empty = 0;
  for (size_t r = 0; r < rows; r++) {
    if (isinf(rl[r])) { /* empty on the CPU: must be exactly (0, -inf) */
      empty++;
      if (!(isinf(host_l[r]) && host_l[r] < 0))
        fail_msg("%s: row %zu has no visible key but lse = %g", what, r, (double)host_l[r]);
      for (int x = 0; x < c->d; x++)
        if (host_o[r * c->d + x] != 0.0f) fail_msg("%s: empty row %zu out != 0", what, r);
      continue;
    }
    for (int x = 0; x < c->d; x++) {
      const double df = (double)host_o[r * c->d + x] - ro[r * c->d + x];
      num += df * df;
      den += (double)ro[r * c->d + x] * ro[r * c->d + x];
      if (host_o[r * c->d + x] != host_o[r * c->d + x]) num = INFINITY;
    }
    const double le = fabs((double)host_l[r] - rl[r]);
    if (!(le <= lerr)) lerr = le;
  }
  for (size_t i = rows * c->d; i < (rows + GUARD_ROWS) * c->d; i++)
    if (host_o[i] != GUARD_VAL) fail_msg("%s: out written past row nq", what);
  for (size_t i = rows; i < rows + GUARD_ROWS; i++)
    if (host_l[i] != GUARD_VAL) fail_msg("%s: lse written past row nq", what);
  const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
  const char *kname = sr__cuda_attn_name(kernel);
  fprintf(stderr,
          "# %-12s %-7s qh=%d kvh=%d d=%3d bq=%3d bk=%3d n=%4lld nq=%4lld kv_limit=%4lld "
          "nnz=%5lld empty=%zu  out relerr %.2e  lse abserr %.2e\n",
          what, kname, c->qh, c->kvh, c->d, c->bq, c->bk, (long long)c->n, (long long)c->nq,
          (long long)c->kv_limit, (long long)w->row_ptr[(int64_t)c->qh * c->nqb], empty, rel,
          lerr);
  if (!(rel <= ATT_OUT_TOL)) fail_msg("%s: out relative error %.3e", what, rel);
  if (!(lerr <= ATT_LSE_TOL)) fail_msg("%s: lse abs error %.3e", what, lerr);
  gpu->free(d_o), gpu->free(d_l), gpu->free(dq), gpu->free(dk), gpu->free(dv);
  free(host_o), free(host_l);
}
#endif

/* The CPU result on the same (bf16-valued) inputs, then every GPU kernel that fits. */
static void run_case(const attn_case *c, const char *what) {
  world w;
  world_build(&w, c);
  const size_t rows = (size_t)c->qh * c->nq;
  float *ro = xmalloc(rows * c->d * sizeof(float)), *rl = xmalloc(rows * sizeof(float));
  sr_attn_args a = world_args(&w);
  a.out = ro, a.lse = rl;
  check(sr_backend_cpu()->attn_fwd(&a), "cpu attn_fwd");
#ifdef SR_CUDA
  const int fast = (c->bq == 64 || c->bq == 128) && (c->bk == 64 || c->bk == 128) &&
                   (c->d == 64 || c->d == 128);
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_GENERIC, what);
  if (fast) attn_compare(&w, ro, rl, SR_CUDA_ATTN_MMA, what);
  if (fast && sr__cuda_have_wgmma()) attn_compare(&w, ro, rl, SR_CUDA_ATTN_WGMMA, what);
#endif
  free(ro), free(rl);
  world_free(&w);
}

static attn_case seq_case(int qh, int kvh, int d, int bq, int bk, int64_t n, int sparse) {
  return (attn_case){.qh = qh, .kvh = kvh, .d = d, .bq = bq, .bk = bk, .n = n, .kv_limit = n,
                     .nqb = (int)((n + bq - 1) / bq), .nq = n, .sparse = sparse};
}

/* Dense causal, n never a multiple of the blocks (partial last q-block and key block). */
static void test_attn_dense(void **state) {
  (void)state;
  const attn_case cases[] = {
      seq_case(8, 2, 64, 64, 64, 397, 0),    seq_case(8, 2, 128, 128, 128, 610, 0),
      seq_case(4, 4, 128, 64, 128, 520, 0),  seq_case(8, 2, 64, 128, 64, 333, 0),
      seq_case(4, 1, 128, 128, 64, 451, 0),  seq_case(4, 2, 64, 64, 128, 300, 0),
      seq_case(2, 1, 37, 24, 40, 150, 0),    seq_case(8, 2, 80, 64, 64, 260, 0),
      seq_case(4, 2, 128, 16, 16, 203, 0),
      seq_case(16, 2, 128, 128, 128, 2200, 0), /* more rows than SMs */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], "dense");
}

/* Random block subsets in random order, future blocks, empty rows. */
static void test_attn_sparse(void **state) {
  (void)state;
  const attn_case cases[] = {
      seq_case(8, 2, 128, 128, 128, 1100, 1), seq_case(8, 2, 64, 64, 64, 700, 1),
      seq_case(4, 4, 128, 64, 128, 600, 1),   seq_case(8, 2, 64, 128, 64, 650, 1),
      seq_case(4, 2, 80, 64, 16, 300, 1),
      seq_case(16, 4, 64, 64, 64, 2100, 1), /* more rows than SMs */
      seq_case(16, 4, 128, 128, 64, 3000, 1),
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], "sparse");
}

/* A rank's view: q-blocks anywhere, shuffled slots, nq < nqb*bq, kv_limit inside a slot. */
static void test_attn_qpos_pool(void **state) {
  (void)state;
  attn_case cases[] = {
      {.qh = 8, .kvh = 2, .d = 128, .bq = 128, .bk = 128, .n = 1200, .nqb = 4},
      {.qh = 8, .kvh = 2, .d = 64, .bq = 64, .bk = 64, .n = 700, .nqb = 5},
      {.qh = 4, .kvh = 4, .d = 128, .bq = 64, .bk = 128, .n = 900, .nqb = 3},
      {.qh = 8, .kvh = 2, .d = 80, .bq = 64, .bk = 16, .n = 333, .nqb = 4},
      {.qh = 32, .kvh = 8, .d = 128, .bq = 64, .bk = 64, .n = 3000, .nqb = 7},
      {.qh = 32, .kvh = 8, .d = 64, .bq = 128, .bk = 128, .n = 4000, .nqb = 6},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    attn_case *c = &cases[i];
    c->nq = (int64_t)c->nqb * c->bq - 1 - rnd_below(c->bq - 1);
    c->kv_limit = c->n - 1 - rnd_below(c->bk < c->n ? c->bk : 1);
    c->arb_qpos = c->permute = 1;
    c->sparse = (int)i % 2;
    c->scale = 0.05f + 0.02f * (float)i; /* not 1/sqrt(d): the kernel must use args->scale */
    run_case(c, i % 2 ? "qpos+sparse" : "qpos+dense");
  }
}

/* Rows that see nothing: no entries, only future blocks, only keys past kv_limit. */
static void test_attn_empty_rows(void **state) {
  (void)state;
  attn_case c = {.qh = 2, .kvh = 1, .d = 64, .bq = 64, .bk = 64, .n = 256, .kv_limit = 160,
                 .nqb = 3, .nq = 160};
  world w;
  world_build(&w, &c);
  w.qpos[0] = 0, w.qpos[1] = 64, w.qpos[2] = 128;
  /* head 0: block 0 -> nothing; block 1 -> future slot 2 only; block 2 -> slot 3 (keys 192..
   * >= kv_limit). head 1: dense causal. Slots are identity (no permute). */
  int64_t nb[6] = {0, 1, 1, 1, 2, 3};
  int64_t list[6][3] = {{0}, {2}, {3}, {0}, {0, 1}, {0, 1, 2}};
  w.row_ptr[0] = 0;
  for (int r = 0; r < 6; r++) {
    for (int64_t i = 0; i < nb[r]; i++) {
      w.slot[w.row_ptr[r] + i] = (int32_t)list[r][i];
      w.kpos[w.row_ptr[r] + i] = list[r][i] * c.bk;
    }
    w.row_ptr[r + 1] = w.row_ptr[r] + nb[r];
  }
  const size_t rows = (size_t)c.qh * c.nq;
  float *ro = xmalloc(rows * c.d * sizeof(float)), *rl = xmalloc(rows * sizeof(float));
  sr_attn_args a = world_args(&w);
  a.out = ro, a.lse = rl;
  check(sr_backend_cpu()->attn_fwd(&a), "cpu attn_fwd");
  for (int64_t i = 0; i < c.nq; i++) assert_true(isinf(rl[i]) && rl[i] < 0);
#ifdef SR_CUDA
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_GENERIC, "empty rows");
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_MMA, "empty rows");
  if (sr__cuda_have_wgmma()) attn_compare(&w, ro, rl, SR_CUDA_ATTN_WGMMA, "empty rows");
#endif
  free(ro), free(rl);
  world_free(&w);
}

/* The automatic choice runs and matches too (what the runtime gets). */
static void test_attn_auto(void **state) {
  (void)state;
  attn_case c = seq_case(8, 2, 128, 128, 128, 777, 1);
  world w;
  world_build(&w, &c);
  const size_t rows = (size_t)c.qh * c.nq;
  float *ro = xmalloc(rows * c.d * sizeof(float)), *rl = xmalloc(rows * sizeof(float));
  sr_attn_args a = world_args(&w);
  a.out = ro, a.lse = rl;
  check(sr_backend_cpu()->attn_fwd(&a), "cpu attn_fwd");
#ifdef SR_CUDA
  attn_compare(&w, ro, rl, sr__cuda_have_wgmma() ? SR_CUDA_ATTN_WGMMA : SR_CUDA_ATTN_MMA, "auto");
#endif
  free(ro), free(rl);
  world_free(&w);
}

/* ---- the other ops --------------------------------------------------------------------- */

static double relerr_f(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double df = (double)a[i] - b[i];
    num += df * df;
    den += (double)b[i] * b[i];
    if (a[i] != a[i]) num = INFINITY;
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Merge of constructed rows (both finite, either -inf, both -inf; garbage on -inf sides). */
static void test_merge(void **state) {
  (void)state;
  const int64_t rows = 1000 + rnd_below(100);
  const int d = 96;
  float *ao = xmalloc(rows * d * 4), *al = xmalloc(rows * 4), *po = xmalloc(rows * d * 4),
        *pl = xmalloc(rows * 4);
  sr_test_fill(ao, rows * d, 1.0f, &rng);
  sr_test_fill(po, rows * d, 1.0f, &rng);
  for (int64_t r = 0; r < rows; r++) {
    al[r] = 20.0f * sr_test_uniform(&rng);
    pl[r] = 20.0f * sr_test_uniform(&rng);
    const int kind = (int)(r % 4);
    if (kind == 1 || kind == 3) al[r] = -INFINITY;
    if (kind == 2 || kind == 3) pl[r] = -INFINITY;
    if (kind == 1 || kind == 3)
      for (int x = 0; x < d; x++) ao[r * d + x] = 1e30f;
    if (kind == 2 || kind == 3)
      for (int x = 0; x < d; x++) po[r * d + x] = 1e30f;
  }
  float *dao = dcopy(ao, rows * d), *dal = dcopy(al, rows), *dpo = dcopy(po, rows * d),
        *dpl = dcopy(pl, rows);
  check(sr_backend_cpu()->merge(ao, al, po, pl, rows, d), "cpu merge");
  check(gpu->merge(dao, dal, dpo, dpl, rows, d), "merge");
  float *go = xmalloc(rows * d * 4), *gl = xmalloc(rows * 4);
  check(gpu->copy_out(go, dao, rows * d), "copy_out");
  check(gpu->copy_out(gl, dal, rows), "copy_out");
  const double err = relerr_f(go, ao, rows * d);
  fprintf(stderr, "# merge: relerr %.2e\n", err);
  assert_true(err <= F32_TOL);
  for (int64_t r = 0; r < rows; r++) {
    if (isinf(al[r])) assert_true(isinf(gl[r]) && gl[r] < 0);
    else assert_true(fabs((double)gl[r] - al[r]) <= 1e-5 * (1 + fabs(al[r])));
  }
  gpu->free(dao), gpu->free(dal), gpu->free(dpo), gpu->free(dpl);
  free(ao), free(al), free(po), free(pl), free(go), free(gl);
}

/* Mean pooling of bf16 rows; a partial last block; heads > 1. */
static void test_pool_mean(void **state) {
  (void)state;
  const int heads = 3, d = 128, b = 64;
  const int64_t n = 1000 + rnd_below(60), nb = (n + b - 1) / b;
  float *x = xmalloc((size_t)heads * n * d * 4), *ry = xmalloc((size_t)heads * nb * d * 4),
        *gy = xmalloc((size_t)heads * nb * d * 4);
  sr_test_fill(x, (size_t)heads * n * d, 2.0f, &rng);
  round_bf16(x, (size_t)heads * n * d);
  void *dx = dstore(x, (size_t)heads * n * d);
  sr__poison_f32(gy, (size_t)heads * nb * d);
  float *dy = dcopy(gy, (size_t)heads * nb * d);
  check(sr_backend_cpu()->pool_mean(x, heads, n, d, b, ry), "cpu pool_mean");
  check(gpu->pool_mean(dx, heads, n, d, b, dy), "pool_mean");
  check(gpu->copy_out(gy, dy, (size_t)heads * nb * d), "copy_out");
  const double err = relerr_f(gy, ry, (size_t)heads * nb * d);
  fprintf(stderr, "# pool_mean: relerr %.2e\n", err);
  assert_true(err <= F32_TOL);
  gpu->free(dx), gpu->free(dy);
  free(x), free(ry), free(gy);
}

/* Block scores: sizes not multiples of the tile, d not a multiple of 16. */
static void test_block_scores(void **state) {
  (void)state;
  const int64_t na = 100 + rnd_below(100), nb = 300 + rnd_below(300);
  const int ds[] = {128, 72};
  for (int t = 0; t < 2; t++) {
    const int d = ds[t];
    float *a = xmalloc(na * d * 4), *b = xmalloc(nb * d * 4), *rs = xmalloc(na * nb * 4),
          *gs = xmalloc(na * nb * 4);
    sr_test_fill(a, na * d, 1.0f, &rng);
    sr_test_fill(b, nb * d, 1.0f, &rng);
    sr__poison_f32(gs, na * nb);
    float *da = dcopy(a, na * d), *db = dcopy(b, nb * d), *ds_ = dcopy(gs, na * nb);
    check(sr_backend_cpu()->block_scores(a, na, b, nb, d, rs), "cpu block_scores");
    check(gpu->block_scores(da, na, db, nb, d, ds_), "block_scores");
    check(gpu->copy_out(gs, ds_, na * nb), "copy_out");
    const double err = relerr_f(gs, rs, na * nb);
    fprintf(stderr, "# block_scores na=%lld nb=%lld d=%d: relerr %.2e\n", (long long)na,
            (long long)nb, d, err);
    assert_true(err <= F32_TOL);
    gpu->free(da), gpu->free(db), gpu->free(ds_);
    free(a), free(b), free(rs), free(gs);
  }
}

/* Block-Sparse rows: many ties (values from a small set), NaN, -inf, +inf, -0/+0, forced
 * entries; causal lengths up to 9000 candidates; keep from 0 to min(causal, K). The ids must
 * equal the CPU's exactly. */
static void test_topk_rows(void **state) {
  (void)state;
  const int64_t rows = 40, ld = 9000;
  const int K = 700;
  float *s = xmalloc(rows * ld * 4), *s2 = xmalloc(rows * ld * 4);
  int64_t *causal = xmalloc(rows * 8);
  int32_t *keep = xmalloc(rows * 4), *ri = xmalloc(rows * K * 4), *gi = xmalloc(rows * K * 4);
  for (int64_t i = 0; i < rows * ld; i++) {
    const int64_t kind = rnd_below(100);
    if (kind < 60) s[i] = (float)(rnd_below(9) - 4) * 0.5f; /* heavy ties */
    else if (kind < 93) s[i] = 10.0f * sr_test_uniform(&rng);
    else if (kind < 95) s[i] = -INFINITY;
    else if (kind < 96) s[i] = INFINITY;
    else if (kind < 98) s[i] = NAN;
    else s[i] = kind == 98 ? -0.0f : 0.0f;
  }
  for (int64_t i = 0; i < rows; i++) {
    causal[i] = i == 0 ? 1 : i == 1 ? 2 : i == 2 ? ld : 1 + rnd_below(ld);
    const int64_t mx = causal[i] < K ? causal[i] : K;
    keep[i] = (int32_t)(i == 3 ? 0 : i % 5 == 0 ? mx : rnd_below(mx + 1));
  }
  memcpy(s2, s, rows * ld * 4);
  float *ds = dcopy(s2, rows * ld);
  for (int64_t i = 0; i < rows * K; i++) ri[i] = gi[i] = -7;
  check(sr_backend_cpu()->topk_rows(s, rows, ld, causal, keep, K, ri), "cpu topk_rows");
  check(gpu->topk_rows(ds, rows, ld, causal, keep, K, gi), "topk_rows");
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < K; j++)
      if (ri[i * K + j] != gi[i * K + j])
        fail_msg("topk_rows: row %lld (causal %lld keep %d) id %lld: gpu %d cpu %d",
                 (long long)i, (long long)causal[i], (int)keep[i], (long long)j,
                 (int)gi[i * K + j], (int)ri[i * K + j]);
  fprintf(stderr, "# topk_rows: %lld rows up to %lld candidates: ids equal\n", (long long)rows,
          (long long)ld);
  gpu->free(ds);
  free(s), free(s2), free(causal), free(keep), free(ri), free(gi);
}

/* Gather of bf16 items from a pool in random slot order, repeats allowed; an aligned item
 * size (the 16-byte path) and an odd one. */
static void test_gather(void **state) {
  (void)state;
  const int64_t nslots = 50, n = 80;
  const size_t sizes[] = {64 * 128, 16 * 37 + 1};
  for (int t = 0; t < 2; t++) {
    const size_t it = sizes[t];
    float *pool = xmalloc(nslots * it * 4);
    sr_test_fill(pool, nslots * it, 3.0f, &rng);
    int32_t *slots = xmalloc(n * 4), *want = xmalloc(n * 4);
    for (int64_t i = 0; i < n; i++) want[i] = slots[i] = (int32_t)rnd_below(nslots);
    void *dpool = dstore(pool, nslots * it);
    const size_t out_elems = (n * it + 1) & ~(size_t)1;
    uint16_t *got = xmalloc(out_elems * 2);
    memset(got, 0xff, out_elems * 2);
    void *ddst = dalloc(out_elems * 2 + 16);
    check(gpu->copy_in(ddst, (const float *)got, out_elems / 2), "poison"); /* NaN bits */
    check(gpu->gather(ddst, dpool, slots, n, it), "gather");
    for (int64_t i = 0; i < n; i++) slots[i] = -1; /* the op must not read them later */
    read_bf16(got, ddst, out_elems);
    for (int64_t i = 0; i < n; i++)
      for (size_t x = 0; x < it; x++)
        if (got[i * it + x] != bf16_bits(pool[want[i] * it + x]))
          fail_msg("gather (item %zu elems): item %lld elem %zu differs", it, (long long)i, x);
    fprintf(stderr, "# gather: %lld items of %zu bf16: equal\n", (long long)n, it);
    gpu->free(ddst), gpu->free(dpool);
    free(pool), free(slots), free(want), free(got);
  }
}

/* store rounds to nearest even exactly like bf16_bits (ties, NaN, inf, -0, subnormals);
 * copy_in / copy_out move fp32 unchanged. */
static void test_store_copy(void **state) {
  (void)state;
  const size_t n = ((size_t)1 << 23) + 2 * 1000 + 2; /* more than one staging chunk */
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  uint16_t *bits = xmalloc(n * 2);
  sr_test_fill(x, n, 100.0f, &rng);
  const float special[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 1e-40f, -1e-40f, 3.0e38f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[i * 7919] = special[i];
  /* Exact ties: low 16 bits 0x8000, with even and odd upper halves. */
  for (size_t i = 0; i < 64; i++) {
    uint32_t u = (uint32_t)(0x3f800000u + (i << 16)) | 0x8000u;
    memcpy(&x[100 + i], &u, 4);
  }
  void *d = dstore(x, n);
  read_bf16(bits, d, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    const uint16_t want = bf16_bits(x[i]);
    const int both_nan = (want & 0x7fff) > 0x7f80 && (bits[i] & 0x7fff) > 0x7f80;
    if (bits[i] != want && !both_nan && bad++ < 5)
      fprintf(stderr, "# store: x[%zu] = %a -> %04x, expected %04x\n", i, (double)x[i], bits[i],
              want);
  }
  assert_int_equal(bad, 0);
  float *df = dcopy(x, n);
  check(gpu->copy_out(y, df, n), "copy_out");
  assert_memory_equal(x, y, n * 4);
  gpu->free(d), gpu->free(df);
  free(x), free(y), free(bits);
}

#ifdef SR_CUDA
/* ---- uploads past 2 GiB ------------------------------------------------------------------ */

/* kernels/cuda/sr_cuda_internal.h is CUDA C++ (cuda_runtime.h and kernels.h inside C++, and
 * sr__cuda_upload declared with C++ linkage), so this C file restates sr_cuda_piece and the
 * scratch area's number and names the function by its C++ (Itanium ABI) symbol. A change of
 * the signature there makes this test fail to link rather than call the function wrongly. */
typedef struct sr_cuda_piece {
  const void *host;
  size_t bytes;
  void **dev;
} sr_cuda_piece;
enum { SCRATCH_ATTN = 0 }; /* SR_SCRATCH_ATTN: the area attn_fwd uploads its CSR lists into */
sr_status sr__cuda_upload_c(int which, const sr_cuda_piece *pieces, int n)
    __asm__("_Z15sr__cuda_uploadiPK13sr_cuda_piecei");

/* bytes of device memory -> host, after every queued op (the upload) has finished. */
static void dev_read(void *dst, const void *src, size_t bytes) {
  check(gpu->sync(), "sync");
  check(sr__cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H",
                       __FILE__, __LINE__),
        "read back");
}

/* The counter pattern of the big piece: 8 bytes per index. */
static uint64_t pat(uint64_t i) { return (i + 1) * 0x9E3779B97F4A7C15ull; }

/*
 * sr__cuda_upload with a first piece of 2 GiB + 4 KiB (the size class of the kpos list at
 * N = 512K, 32 q-heads, dense) and two small pieces of random bytes and odd sizes behind it:
 * each piece's device address must be the scratch base plus the 16-byte-aligned sizes of the
 * pieces before it, and what lies there must be the piece. With the old `int off` the offset
 * wrapped to -2^31 + 4096 after the first piece, so the second piece's address lay 2 GiB
 * before the scratch area (the dense N = 524288 relative error of 1.1). Host memory: the
 * 2 GiB piece (pageable) and the backend's pinned staging slot, 1.5 x the total (~3.2 GB,
 * kept until the process ends); device: the scratch area, also ~3.2 GB. Runs last.
 */
static void test_upload_past_2gib(void **state) {
  (void)state;
  const size_t big = ((size_t)1 << 31) + 4096;
  const size_t small[2] = {1000 + (size_t)rnd_below(3000) * 2 + 1, 16 + (size_t)rnd_below(64)};
  uint64_t *h0 = malloc(big);
  if (!h0) {
    fprintf(stderr, "# upload_past_2gib: skipped: no %zu bytes of host memory\n", big);
    skip();
  }
  for (size_t i = 0; i < big / 8; i++) h0[i] = pat(i);
  unsigned char *h1 = xmalloc(small[0]), *h2 = xmalloc(small[1]);
  for (size_t i = 0; i < small[0]; i++) h1[i] = (unsigned char)sr_test_next(&rng);
  for (size_t i = 0; i < small[1]; i++) h2[i] = (unsigned char)sr_test_next(&rng);
  void *d0 = NULL, *d1 = NULL, *d2 = NULL;
  const sr_cuda_piece pc[3] = {{h0, big, &d0}, {h1, small[0], &d1}, {h2, small[1], &d2}};
  check(sr__cuda_upload_c(SCRATCH_ATTN, pc, 3), "sr__cuda_upload");
  const size_t a0 = (big + 15) & ~(size_t)15, a1 = (small[0] + 15) & ~(size_t)15;
  const ptrdiff_t off1 = (char *)d1 - (char *)d0, off2 = (char *)d2 - (char *)d0;
  fprintf(stderr, "# upload_past_2gib: pieces of %zu, %zu, %zu bytes at offsets 0, %td, %td\n",
          big, small[0], small[1], off1, off2);
  if (off1 != (ptrdiff_t)a0 || off2 != (ptrdiff_t)(a0 + a1))
    fail_msg("upload: pieces 2 and 3 at offsets %td and %td from piece 1, expected %zu and %zu "
             "(an offset that wrapped at 2^31 points before the scratch area)",
             off1, off2, a0, a0 + a1);
  /* The small pieces, whole. */
  unsigned char *g1 = xmalloc(small[0]), *g2 = xmalloc(small[1]);
  dev_read(g1, d1, small[0]);
  dev_read(g2, d2, small[1]);
  assert_memory_equal(g1, h1, small[0]);
  assert_memory_equal(g2, h2, small[1]);
  /* The big piece: its first 4 KiB and its last 64 KiB (past 2^31). */
  const size_t head = 4096, tail = (size_t)64 << 10;
  uint64_t *g0 = xmalloc(tail);
  dev_read(g0, d0, head);
  for (size_t i = 0; i < head / 8; i++)
    if (g0[i] != pat(i)) fail_msg("upload: piece 1 word %zu differs", i);
  dev_read(g0, (const char *)d0 + big - tail, tail);
  for (size_t i = 0; i < tail / 8; i++) {
    const size_t w = (big - tail) / 8 + i;
    if (g0[i] != pat(w)) fail_msg("upload: piece 1 word %zu (byte %zu) differs", w, w * 8);
  }
  fprintf(stderr, "# upload_past_2gib: pieces equal on the device\n");
  free(h0), free(h1), free(h2), free(g0), free(g1), free(g2);
}
#endif

int main(void) {
  gpu = sr_backend_cuda(0);
  if (!gpu) {
    fprintf(stderr, "# test_gpu_backend: skipped: %s\n", sr_last_error());
    return 77;
  }
  rng = sr_test_seed("test_gpu_backend");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_store_copy),   cmocka_unit_test(test_gather),
      cmocka_unit_test(test_merge),        cmocka_unit_test(test_pool_mean),
      cmocka_unit_test(test_block_scores), cmocka_unit_test(test_topk_rows),
      cmocka_unit_test(test_attn_dense),   cmocka_unit_test(test_attn_sparse),
      cmocka_unit_test(test_attn_qpos_pool), cmocka_unit_test(test_attn_empty_rows),
      cmocka_unit_test(test_attn_auto),
#ifdef SR_CUDA
      cmocka_unit_test(test_upload_past_2gib), /* last: leaves 3 GB of pinned staging */
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
