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
 * Column chunks (gathered key rows, kpos < 0) are checked against a float64 reference on
 * every kernel and the automatic choice, and timed against blocks; the Vertical-Slash /
 * FlexPrefill estimate ops against float64, for determinism (repeat, keys split over two
 * calls: bit-identical), and timed at W = 256 x 128K keys; unstore round-trips stored values.
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
static void attn_compare(const world *w, const float *ro, const float *rl, int kernel, int tma,
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
  a.kv_rows = tma ? (int64_t)c->kvh * w->nkb * c->bk : 0; /* the pools' rows, or unknown */
  sr__cuda_attn_force(kernel);
  check(gpu->attn_fwd(&a), "attn_fwd");
  assert_int_equal(sr__cuda_attn_last(), kernel);
  if (kernel == SR_CUDA_ATTN_WS) assert_int_equal(sr__cuda_attn_tma_last(), tma);
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
  const char *kname = kernel == SR_CUDA_ATTN_WS && tma ? "ws+tma" : sr__cuda_attn_name(kernel);
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
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_GENERIC, 0, what);
  if (fast) attn_compare(&w, ro, rl, SR_CUDA_ATTN_MMA, 0, what);
  if (fast && sr__cuda_have_wgmma()) attn_compare(&w, ro, rl, SR_CUDA_ATTN_WGMMA, 0, what);
  if (sr__cuda_have_ws() && c->bq == 128 && c->bk == 128 && c->d == 128) {
    attn_compare(&w, ro, rl, SR_CUDA_ATTN_WS, 0, what); /* every tile by cp.async */
    attn_compare(&w, ro, rl, SR_CUDA_ATTN_WS, 1, what); /* whole tiles by TMA */
  }
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
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_GENERIC, 0, "empty rows");
  attn_compare(&w, ro, rl, SR_CUDA_ATTN_MMA, 0, "empty rows");
  if (sr__cuda_have_wgmma()) attn_compare(&w, ro, rl, SR_CUDA_ATTN_WGMMA, 0, "empty rows");
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
  const int k = sr__cuda_attn_auto(c.bq, c.bk, c.d);
  assert_true(sr__cuda_have_wgmma() ? k == SR_CUDA_ATTN_WGMMA || k == SR_CUDA_ATTN_WS
                                    : k == SR_CUDA_ATTN_MMA);
  attn_compare(&w, ro, rl, k, 1, "auto");
#endif
  free(ro), free(rl);
  world_free(&w);
}

/* ---- column chunks (Vertical-Slash / FlexPrefill) ------------------------------------------ */

/*
 * A rank's work list with column chunks mixed into the block entries, against a float64
 * reference computed here from the listed keys (the bf16-valued inputs the GPU holds). The
 * pool holds the K/V blocks of every kv-head (slots shuffled, NaN from kv_limit on), then
 * COL_XSLOTS slots of rows that only column chunks use (a column's key has no position the
 * kernel looks at), then one slot of NaN rows. A chunk of cnt < bk keys is followed in colrow
 * by bk - cnt indices of NaN rows, so a kernel that loads a row past cnt (instead of
 * zero-filling it) fails. Chunks have bk, 1 or a random count of keys, from scattered pool
 * rows (the kv-head's past keys and the extra slots); entries are shuffled, so a chunk may
 * come first or last; some rows list only chunks, a few nothing.
 */
#define COL_XSLOTS 3

typedef struct col_world {
  int qh, kvh, d, bq, bk, nqb;
  int64_t n, nq, kv_limit, nkb, nslots, nnz, ncolrow;
  float scale;
  float *q, *kpool, *vpool;
  int64_t *qpos, *row_ptr, *kpos;
  int32_t *slot, *colrow;
} col_world;

static void col_world_build(col_world *w, int qh, int kvh, int d, int bq, int bk, int64_t n,
                            int64_t kv_limit) {
  memset(w, 0, sizeof *w);
  w->qh = qh, w->kvh = kvh, w->d = d, w->bq = bq, w->bk = bk, w->n = n, w->nq = n;
  w->kv_limit = kv_limit;
  w->nqb = (int)((n + bq - 1) / bq);
  w->nkb = (n + bk - 1) / bk;
  w->scale = 1.0f / sqrtf((float)d);
  const int64_t nblk = (int64_t)kvh * w->nkb, nslots = nblk + COL_XSLOTS + 1;
  const int64_t nan_slot = nslots - 1;
  w->nslots = nslots;
  const size_t blk = (size_t)bk * d, qn = (size_t)qh * n * d, kn = (size_t)nslots * blk;
  w->q = xmalloc(qn * sizeof(float));
  w->kpool = xmalloc(kn * sizeof(float));
  w->vpool = xmalloc(kn * sizeof(float));
  sr_test_fill(w->q, qn, 1.5f, &rng);
  round_bf16(w->q, qn);
  sr_test_fill(w->kpool, kn, 1.5f, &rng);
  sr_test_fill(w->vpool, kn, 1.0f, &rng);
  round_bf16(w->kpool, kn);
  round_bf16(w->vpool, kn);
  int64_t *perm = xmalloc((size_t)nblk * sizeof(int64_t));
  for (int64_t s = 0; s < nblk; s++) perm[s] = s;
  for (int64_t i = nblk - 1; i > 0; i--) {
    int64_t j = rnd_below(i + 1), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  /* perm[g*nkb + b] = slot of kv-head g's block b; keys from kv_limit on are NaN. */
  for (int64_t gb = 0; gb < nblk; gb++)
    for (int64_t j = 0; j < bk; j++)
      if ((gb % w->nkb) * bk + j >= kv_limit) {
        sr__poison_f32(w->kpool + perm[gb] * blk + j * d, (size_t)d);
        sr__poison_f32(w->vpool + perm[gb] * blk + j * d, (size_t)d);
      }
  sr__poison_f32(w->kpool + nan_slot * blk, blk);
  sr__poison_f32(w->vpool + nan_slot * blk, blk);

  w->qpos = xmalloc((size_t)w->nqb * sizeof(int64_t));
  for (int m = 0; m < w->nqb; m++) w->qpos[m] = (int64_t)m * bq;
  const int64_t rows = (int64_t)qh * w->nqb, cap_e = rows * (w->nkb + 8) + 1;
  w->row_ptr = xmalloc((size_t)(rows + 1) * sizeof(int64_t));
  w->slot = xmalloc((size_t)cap_e * sizeof(int32_t));
  w->kpos = xmalloc((size_t)cap_e * sizeof(int64_t));
  int64_t cap_c = rows * 6 * bk + 1;
  w->colrow = xmalloc((size_t)cap_c * sizeof(int32_t));
  w->row_ptr[0] = 0;
  int64_t nnz = 0, nc = 0;
  for (int h = 0; h < qh; h++)
    for (int m = 0; m < w->nqb; m++) {
      const int64_t r = (int64_t)h * w->nqb + m, g = h / (qh / kvh);
      const int64_t qfirst = w->qpos[m];
      const int64_t qrows = n - (int64_t)m * bq < bq ? n - (int64_t)m * bq : bq;
      const int64_t qlast = qfirst + qrows - 1;
      const int64_t e0 = nnz;
      const int64_t kind = rnd_below(20); /* 0: nothing; 1, 2: chunks only */
      if (kind >= 3) /* blocks: the diagonal one and a third of the other causal ones */
        for (int64_t b = 0; b * bk <= qlast && b < w->nkb; b++) {
          if (b * bk >= kv_limit) break;
          if (b != qfirst / bk && rnd_below(3) != 0) continue;
          w->slot[nnz] = (int32_t)perm[g * w->nkb + b];
          w->kpos[nnz++] = b * bk;
        }
      /* Chunks: keys of this kv-head before qfirst (and before kv_limit), or extra rows. */
      const int64_t past = qfirst < kv_limit ? qfirst : kv_limit;
      const int nchunks = kind == 0 ? 0 : kind <= 2 ? 1 + (int)rnd_below(4) : (int)rnd_below(4);
      for (int t = 0; t < nchunks; t++) {
        const int64_t pick = rnd_below(3);
        const int64_t cnt = pick == 0 ? bk : pick == 1 ? 1 : 1 + rnd_below(bk);
        w->slot[nnz] = (int32_t)nc;
        w->kpos[nnz++] = -cnt;
        for (int64_t j = 0; j < cnt; j++) {
          int64_t row;
          if (past > 0 && rnd_below(2) == 0) {
            const int64_t p = rnd_below(past);
            row = perm[g * w->nkb + p / bk] * bk + p % bk;
          } else {
            row = (nblk + rnd_below(COL_XSLOTS)) * bk + rnd_below(bk);
          }
          w->colrow[nc++] = (int32_t)row;
        }
        for (int64_t j = cnt; j < bk; j++) w->colrow[nc++] = (int32_t)(nan_slot * bk + rnd_below(bk));
      }
      for (int64_t i = nnz - e0 - 1; i > 0; i--) { /* shuffle the row's entries */
        const int64_t j = rnd_below(i + 1);
        const int32_t ts = w->slot[e0 + i];
        const int64_t tk = w->kpos[e0 + i];
        w->slot[e0 + i] = w->slot[e0 + j], w->kpos[e0 + i] = w->kpos[e0 + j];
        w->slot[e0 + j] = ts, w->kpos[e0 + j] = tk;
      }
      w->row_ptr[r + 1] = nnz;
      assert_true(nnz <= cap_e && nc <= cap_c);
    }
  w->nnz = nnz;
  w->ncolrow = nc;
  free(perm);
}

static void col_world_free(col_world *w) {
  free(w->q), free(w->kpool), free(w->vpool), free(w->qpos), free(w->row_ptr), free(w->slot),
      free(w->kpos), free(w->colrow);
}

static inline sr_attn_args col_args(const col_world *w) {
  return (sr_attn_args){.q_heads = w->qh, .d = w->d, .bq = w->bq, .bk = w->bk, .nqb = w->nqb,
                        .nq = w->nq, .q = w->q, .qpos = w->qpos, .k = w->kpool, .v = w->vpool,
                        .row_ptr = w->row_ptr, .slot = w->slot, .kpos = w->kpos,
                        .colrow = w->colrow, .ncolrow = w->ncolrow, .kv_limit = w->kv_limit,
                        .scale = w->scale, .kv_rows = w->nslots * w->bk};
}

/* The float64 reference: softmax over exactly the keys each row sees. */
static void col_reference(const col_world *w, double *ro, double *rl) {
  const int d = w->d, bk = w->bk;
  const int64_t maxk = (w->nkb + 8) * (int64_t)bk;
  double *s = xmalloc((size_t)maxk * sizeof(double));
  int64_t *krow = xmalloc((size_t)maxk * sizeof(int64_t));
  for (int h = 0; h < w->qh; h++)
    for (int m = 0; m < w->nqb; m++) {
      const int64_t r = (int64_t)h * w->nqb + m;
      const int64_t qrows = w->nq - (int64_t)m * w->bq < w->bq ? w->nq - (int64_t)m * w->bq : w->bq;
      for (int64_t i = 0; i < qrows; i++) {
        const int64_t qp = w->qpos[m] + i, row = (int64_t)h * w->nq + (int64_t)m * w->bq + i;
        const float *qv = w->q + row * d;
        int64_t nk = 0;
        for (int64_t e = w->row_ptr[r]; e < w->row_ptr[r + 1]; e++) {
          const int64_t kp = w->kpos[e];
          if (kp < 0)
            for (int64_t j = 0; j < -kp; j++) krow[nk++] = w->colrow[w->slot[e] + j];
          else
            for (int64_t j = 0; j < bk; j++)
              if (kp + j <= qp && kp + j < w->kv_limit) krow[nk++] = (int64_t)w->slot[e] * bk + j;
        }
        double mx = -INFINITY;
        for (int64_t t = 0; t < nk; t++) {
          const float *kv = w->kpool + krow[t] * d;
          double dot = 0;
          for (int c = 0; c < d; c++) dot += (double)qv[c] * kv[c];
          s[t] = dot * w->scale;
          if (s[t] > mx) mx = s[t];
        }
        double *o = ro + row * d, sum = 0;
        for (int c = 0; c < d; c++) o[c] = 0;
        for (int64_t t = 0; t < nk; t++) {
          const double p = exp(s[t] - mx);
          sum += p;
          const float *vv = w->vpool + krow[t] * d;
          for (int c = 0; c < d; c++) o[c] += p * vv[c];
        }
        if (nk == 0) {
          rl[row] = -INFINITY;
          continue;
        }
        for (int c = 0; c < d; c++) o[c] /= sum;
        rl[row] = mx + log(sum);
      }
    }
  free(s), free(krow);
}

#ifdef SR_CUDA
/* Runs kernel `kernel` (AUTO: the automatic choice, which must be `expect`) and compares with
 * the reference: out relative error per q-head, lse absolute error, empty rows exactly
 * (0, -inf), nothing written past nq. */
static void col_compare(const col_world *w, const double *ro, const double *rl, int kernel,
                        int expect, const char *what) {
  const int d = w->d;
  const size_t rows = (size_t)w->qh * w->nq, kn = (size_t)w->nslots * w->bk * d;
  float *host_o = xmalloc((rows + GUARD_ROWS) * d * sizeof(float));
  float *host_l = xmalloc((rows + GUARD_ROWS) * sizeof(float));
  sr__poison_f32(host_o, rows * d);
  sr__poison_f32(host_l, rows);
  for (size_t i = rows * d; i < (rows + GUARD_ROWS) * d; i++) host_o[i] = GUARD_VAL;
  for (size_t i = rows; i < rows + GUARD_ROWS; i++) host_l[i] = GUARD_VAL;
  float *d_o = dcopy(host_o, (rows + GUARD_ROWS) * d), *d_l = dcopy(host_l, rows + GUARD_ROWS);
  void *dq = dstore(w->q, rows * d), *dk = dstore(w->kpool, kn), *dv = dstore(w->vpool, kn);
  sr_attn_args a = col_args(w);
  a.q = dq, a.k = dk, a.v = dv, a.out = d_o, a.lse = d_l;
  /* The host lists may change once attn_fwd returns: scribble on a copy's colrow after. */
  int32_t *colrow = xmalloc((size_t)w->ncolrow * sizeof(int32_t) + 4);
  memcpy(colrow, w->colrow, (size_t)w->ncolrow * sizeof(int32_t));
  a.colrow = colrow;
  sr__cuda_attn_force(kernel);
  check(gpu->attn_fwd(&a), "attn_fwd (columns)");
  for (int64_t c = 0; c < w->ncolrow; c++) colrow[c] = -1;
  assert_int_equal(sr__cuda_attn_last(), expect);
  sr__cuda_attn_force(SR_CUDA_ATTN_AUTO);
  check(gpu->copy_out(host_o, d_o, (rows + GUARD_ROWS) * d), "copy_out out");
  check(gpu->copy_out(host_l, d_l, rows + GUARD_ROWS), "copy_out lse");
  double worst = 0, lerr = 0;
  size_t empty = 0;
  for (int h = 0; h < w->qh; h++) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < w->nq; i++) {
      const size_t r = (size_t)h * w->nq + i;
      if (isinf(rl[r])) {
        empty++;
        if (!(isinf(host_l[r]) && host_l[r] < 0))
          fail_msg("%s: row %zu has no visible key but lse = %g", what, r, (double)host_l[r]);
        for (int x = 0; x < d; x++)
          if (host_o[r * d + x] != 0.0f) fail_msg("%s: empty row %zu out != 0", what, r);
        continue;
      }
      for (int x = 0; x < d; x++) {
        const double df = (double)host_o[r * d + x] - ro[r * d + x];
        num += df * df;
        den += ro[r * d + x] * ro[r * d + x];
        if (host_o[r * d + x] != host_o[r * d + x]) num = INFINITY;
      }
      const double le = fabs((double)host_l[r] - rl[r]);
      if (!(le <= lerr)) lerr = le;
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(rel <= worst)) worst = rel;
  }
  for (size_t i = rows * d; i < (rows + GUARD_ROWS) * d; i++)
    if (host_o[i] != GUARD_VAL) fail_msg("%s: out written past row nq", what);
  for (size_t i = rows; i < rows + GUARD_ROWS; i++)
    if (host_l[i] != GUARD_VAL) fail_msg("%s: lse written past row nq", what);
  int64_t nchunks = 0;
  for (int64_t e = 0; e < w->nnz; e++) nchunks += w->kpos[e] < 0;
  fprintf(stderr,
          "# %-8s %-7s qh=%d kvh=%d d=%3d bq=%3d bk=%3d n=%4lld kv_limit=%4lld entries=%5lld "
          "chunks=%4lld empty=%zu  out relerr (worst head) %.2e  lse abserr %.2e\n",
          what, sr__cuda_attn_name(expect), w->qh, w->kvh, d, w->bq, w->bk, (long long)w->n,
          (long long)w->kv_limit, (long long)w->nnz, (long long)nchunks, empty, worst, lerr);
  if (!(worst <= ATT_OUT_TOL)) fail_msg("%s: out relative error %.3e", what, worst);
  if (!(lerr <= ATT_LSE_TOL)) fail_msg("%s: lse abs error %.3e", what, lerr);
  gpu->free(d_o), gpu->free(d_l), gpu->free(dq), gpu->free(dk), gpu->free(dv);
  free(host_o), free(host_l), free(colrow);
}
#endif

/* Every kernel that fits the shape (generic; mma and wgmma for bq, bk, d in {64, 128}), and the
 * automatic choice, on block entries mixed with column chunks. */
static void test_attn_columns(void **state) {
  (void)state;
  const struct {
    int qh, kvh, d, bq, bk;
    int64_t n, kv_cut;
  } cases[] = {
      {8, 2, 128, 64, 64, 700, 5},    {8, 2, 128, 128, 128, 1100, 0}, {4, 1, 64, 16, 16, 300, 3},
      {4, 2, 64, 64, 128, 650, 0},    {4, 4, 128, 128, 64, 800, 17},  {8, 2, 64, 64, 64, 520, 0},
      {4, 2, 80, 24, 40, 260, 7},     {8, 2, 128, 64, 128, 900, 0},
      {16, 4, 128, 64, 64, 2200, 0}, /* more rows than SMs */
  };
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    col_world w;
    col_world_build(&w, cases[t].qh, cases[t].kvh, cases[t].d, cases[t].bq, cases[t].bk,
                    cases[t].n, cases[t].n - cases[t].kv_cut);
    const size_t rows = (size_t)w.qh * w.nq;
    double *ro = xmalloc(rows * w.d * sizeof(double)), *rl = xmalloc(rows * sizeof(double));
    col_reference(&w, ro, rl);
#ifdef SR_CUDA
    const int fast = (w.bq == 64 || w.bq == 128) && (w.bk == 64 || w.bk == 128) &&
                     (w.d == 64 || w.d == 128);
    col_compare(&w, ro, rl, SR_CUDA_ATTN_GENERIC, SR_CUDA_ATTN_GENERIC, "columns");
    if (fast) col_compare(&w, ro, rl, SR_CUDA_ATTN_MMA, SR_CUDA_ATTN_MMA, "columns");
    if (fast && sr__cuda_have_wgmma())
      col_compare(&w, ro, rl, SR_CUDA_ATTN_WGMMA, SR_CUDA_ATTN_WGMMA, "columns");
    if (sr__cuda_have_ws() && w.bq == 128 && w.bk == 128 && w.d == 128) {
      col_compare(&w, ro, rl, SR_CUDA_ATTN_WS, SR_CUDA_ATTN_WS, "columns");
      assert_int_equal(sr__cuda_attn_tma_last(), 1); /* blocks by TMA, chunks by cp.async */
    }
    col_compare(&w, ro, rl, SR_CUDA_ATTN_AUTO, sr__cuda_attn_auto(w.bq, w.bk, w.d), "col auto");
#endif
    free(ro), free(rl);
    col_world_free(&w);
  }
}

#ifdef SR_CUDA
/*
 * Throughput of column chunks against blocks (printed, not asserted): the same number of
 * entries per row, either causal blocks that need no mask or full chunks of bk scattered past
 * keys, through the automatic kernel. The gather loads 16-byte pieces of each row like a
 * block load, so a chunk should cost about what a block does.
 */
static void test_attn_columns_speed(void **state) {
  (void)state;
  const int shapes[2][2] = {{64, 128}, {128, 128}}; /* bq = bk, d */
  for (int sh = 0; sh < 2; sh++) {
    const int qh = 16, kvh = 4, bq = shapes[sh][0], bk = bq, d = shapes[sh][1], per_row = 32;
    const int64_t n = 16384, nqb = n / bq, nkb = n / bk, rows = (int64_t)qh * nqb;
    const size_t kn = (size_t)kvh * n * d, qn = (size_t)qh * n * d;
    float *x = xmalloc(kn * sizeof(float));
    sr_test_fill(x, kn, 1.0f, &rng);
    void *dq = dalloc(qn * 2 + 16), *dk = dstore(x, kn), *dv = dstore(x, kn);
    for (size_t off = 0; off < qn; off += kn) /* q from the same values */
      check(gpu->store((char *)dq + off * 2, x, qn - off < kn ? qn - off : kn), "store q");
    float *dout = dalloc(qn * sizeof(float)), *dlse = dalloc((size_t)qh * n * sizeof(float));
    int64_t *qpos = xmalloc((size_t)nqb * 8), *row_ptr = xmalloc((size_t)(rows + 1) * 8);
    int64_t *kpos = xmalloc((size_t)rows * per_row * 8);
    int32_t *slot = xmalloc((size_t)rows * per_row * 4);
    int32_t *colrow = xmalloc((size_t)rows * per_row * bk * 4);
    for (int64_t m = 0; m < nqb; m++) qpos[m] = m * bq;
    float ms[2];
    for (int mode = 0; mode < 2; mode++) { /* 0: blocks, 1: column chunks */
      int64_t nnz = 0, nc = 0;
      row_ptr[0] = 0;
      for (int h = 0; h < qh; h++)
        for (int64_t m = 0; m < nqb; m++) {
          const int64_t g = h / (qh / kvh), past_blocks = m; /* blocks entirely before qfirst */
          const int cnt = past_blocks < per_row ? (int)past_blocks : per_row;
          for (int t = 0; t < cnt; t++) {
            if (mode == 0) {
              const int64_t b = rnd_below(past_blocks);
              slot[nnz] = (int32_t)(g * nkb + b);
              kpos[nnz++] = b * bk;
            } else {
              slot[nnz] = (int32_t)nc;
              kpos[nnz++] = -bk;
              for (int j = 0; j < bk; j++) colrow[nc++] = (int32_t)(g * n + rnd_below(m * bq));
            }
          }
          row_ptr[h * nqb + m + 1] = nnz;
        }
      sr_attn_args a = {.q_heads = qh, .d = d, .bq = bq, .bk = bk, .nqb = (int)nqb, .nq = n,
                        .q = dq, .qpos = qpos, .k = dk, .v = dv, .row_ptr = row_ptr,
                        .slot = slot, .kpos = kpos, .colrow = mode ? colrow : NULL,
                        .ncolrow = mode ? nc : 0, .kv_limit = n,
                        .scale = 1.0f / sqrtf((float)d), .out = dout, .lse = dlse};
      sr__cuda_attn_timing(1);
      float best = 1e30f;
      for (int rep = 0; rep < 4; rep++) {
        check(gpu->attn_fwd(&a), "attn_fwd (speed)");
        check(gpu->sync(), "sync");
        const float t = sr__cuda_attn_kernel_ms();
        if (rep > 0 && t < best) best = t;
      }
      sr__cuda_attn_timing(0);
      ms[mode] = best;
    }
    fprintf(stderr,
            "# columns speed (%s) bq=bk=%d d=%d: %d entries per row, blocks %.3f ms, column "
            "chunks %.3f ms (x%.2f)\n",
            sr__cuda_attn_name(sr__cuda_attn_last()), bq, d, per_row, (double)ms[0],
            (double)ms[1], (double)(ms[1] / ms[0]));
    /* Printed only: speed is judged in the benchmarks (bench/methods), not in unit tests. */
    gpu->free(dq), gpu->free(dk), gpu->free(dv), gpu->free(dout), gpu->free(dlse);
    free(x), free(qpos), free(row_ptr), free(kpos), free(slot), free(colrow);
  }
}
#endif

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
  /* The CSR copy too: the kept ids back to back, in backend memory on the GPU. */
  int64_t nkept = 0;
  for (int64_t i = 0; i < rows; i++) nkept += keep[i];
  int32_t *rc = xmalloc((size_t)(nkept + 1) * 4), *gc = xmalloc((size_t)(nkept + 1) * 4);
  int32_t *dc = dalloc((size_t)(nkept + 1) * 4);
  for (int64_t i = 0; i <= nkept; i++) rc[i] = gc[i] = -9;
  check(gpu->upload(dc, gc, (size_t)(nkept + 1) * 4), "poison csr");
  check(sr_backend_cpu()->topk_rows(s, rows, ld, causal, keep, K, ri, rc), "cpu topk_rows");
  check(gpu->topk_rows(ds, rows, ld, causal, keep, K, gi, dc), "topk_rows");
  check(gpu->download(gc, dc, (size_t)(nkept + 1) * 4), "csr");
  for (int64_t i = 0, at = 0; i < rows; at += keep[i], i++)
    for (int64_t j = 0; j < keep[i]; j++)
      if (gc[at + j] != ri[i * K + j] || rc[at + j] != ri[i * K + j])
        fail_msg("topk_rows csr: row %lld id %lld: gpu %d cpu %d, expected %d", (long long)i,
                 (long long)j, (int)gc[at + j], (int)rc[at + j], (int)ri[i * K + j]);
  if (gc[nkept] != -9 || rc[nkept] != -9) fail_msg("topk_rows csr: wrote past its rows");
  gpu->free(dc);
  free(rc), free(gc);
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

/* host_alloc: page-locked buffers that copy_out fills exactly, handed out again after
 * host_free (the same buffer for a request that fits), and more requests at once than the
 * backend keeps still served (the extra ones plainly allocated). */
static void test_host_buffers(void **state) {
  (void)state;
  assert_non_null(gpu->host_alloc);
  assert_non_null(gpu->host_free);
  const size_t n = ((size_t)3 << 20) + 5;
  float *x = xmalloc(n * 4);
  sr_test_fill(x, n, 10.0f, &rng);
  float *df = dcopy(x, n);
  void *b[6] = {0};
  for (int i = 0; i < 6; i++) {
    check(gpu->host_alloc(n * 4, &b[i]), "host_alloc");
    assert_non_null(b[i]);
    assert_true(((uintptr_t)b[i] & 63) == 0);
    for (int j = 0; j < i; j++) assert_ptr_not_equal(b[i], b[j]);
    sr__poison_f32((float *)b[i], n);
    check(gpu->copy_out((float *)b[i], df, n), "copy_out into a host buffer");
    assert_memory_equal(x, b[i], n * 4);
  }
  for (int i = 0; i < 6; i++) gpu->host_free(b[i]);
  void *again = NULL, *small = NULL;
  check(gpu->host_alloc(n * 4, &again), "host_alloc again");
  check(gpu->host_alloc(64, &small), "host_alloc small");
  assert_non_null(again);
  assert_non_null(small);
  assert_ptr_not_equal(again, small);
  /* a kept buffer comes back: one of the first four, which the backend cached */
  int kept = 0;
  for (int i = 0; i < 4; i++) kept |= again == b[i];
  assert_true(kept);
  gpu->host_free(again), gpu->host_free(small);
  gpu->free(df);
  free(x);
}

/* ---- Vertical-Slash / FlexPrefill estimate ------------------------------------------------ */

#define FIX_ONE 4294967296.0 /* 2^SR_EST_FIX_BITS */

typedef struct est_world {
  int W, d;
  int64_t nk, run_len, run_start[2], qpos0, n;
  float scale;
  float *qw, *k;   /* host: fp32 window queries, bf16-valued keys [nk][d] */
  float *dqw;      /* device fp32 */
  void *dk;        /* device storage */
} est_world;

static int64_t est_pos_of(const est_world *w, const int64_t *rs, int64_t run_len, int64_t j) {
  (void)w;
  return rs[j / run_len] + j % run_len;
}

/* Keys in two runs of run_len with a gap between them (a zigzag shard's two halves), the
 * window the last W positions of the sequence; the second run reaches into the window, so
 * part of it is in the future of the first window rows. */
static void est_world_build(est_world *w, int W, int d, int64_t run_len) {
  memset(w, 0, sizeof *w);
  w->W = W, w->d = d, w->run_len = run_len, w->nk = 2 * run_len;
  w->run_start[0] = rnd_below(50);
  w->run_start[1] = w->run_start[0] + run_len + 1 + rnd_below(3 * run_len);
  const int64_t tail = W / 3; /* the last positions are not this rank's */
  w->n = w->run_start[1] + run_len + tail;
  w->qpos0 = w->n - W;
  w->scale = 1.0f / sqrtf((float)d);
  w->qw = xmalloc((size_t)W * d * sizeof(float));
  w->k = xmalloc((size_t)w->nk * d * sizeof(float));
  sr_test_fill(w->qw, (size_t)W * d, 2.0f, &rng);
  sr_test_fill(w->k, (size_t)w->nk * d, 2.0f, &rng);
  round_bf16(w->k, (size_t)w->nk * d);
  w->dqw = dcopy(w->qw, (size_t)W * d);
  w->dk = dstore(w->k, (size_t)w->nk * d);
}

static void est_world_free(est_world *w) {
  gpu->free(w->dqw), gpu->free(w->dk);
  free(w->qw), free(w->k);
}

/* est_scores over keys [j0, j0 + nk) (their own runs) -> host L [W][nk]; the device L
 * (returned, for the other ops) is poisoned first and followed by guard values. */
static float *est_run_scores(const est_world *w, int64_t j0, int64_t nk, const int64_t *rs,
                             int64_t run_len, float *hL) {
  const size_t cells = (size_t)w->W * nk, guard = 64;
  float *tmp = xmalloc((cells + guard) * sizeof(float));
  sr__poison_f32(tmp, cells);
  for (size_t i = cells; i < cells + guard; i++) tmp[i] = GUARD_VAL;
  float *dL = dcopy(tmp, cells + guard);
  const void *k = (const char *)w->dk + (size_t)j0 * w->d * gpu->elem_bytes;
  check(gpu->est_scores(w->dqw, w->W, w->qpos0, k, nk, rs, run_len, w->d, w->scale, dL),
        "est_scores");
  check(gpu->copy_out(tmp, dL, cells + guard), "copy_out L");
  for (size_t i = cells; i < cells + guard; i++)
    if (tmp[i] != GUARD_VAL) fail_msg("est_scores: written past W*nk");
  memcpy(hL, tmp, cells * sizeof(float));
  free(tmp);
  return dL;
}

/* Vertical and slash sums of one est_accum call (zeroed arrays, n slash entries). */
static void est_run_accum(const est_world *w, const float *dL, int64_t nk, const int64_t *rs,
                          int64_t run_len, const float *gmax, const float *inv, int round,
                          int64_t *vert, int64_t *slash) {
  memset(vert, 0, (size_t)nk * sizeof(int64_t));
  memset(slash, 0, (size_t)w->n * sizeof(int64_t));
  check(gpu->est_accum(dL, w->W, nk, w->qpos0, rs, run_len, gmax, inv, round, w->n, vert,
                       slash),
        "est_accum");
}

/*
 * The four ops against float64 on the same inputs: scores (bf16 keys, fp32 queries) within
 * 1e-4 of the sum of |terms|, the mask exactly; the row max equal to the max of the returned
 * L; row sums, vertical and slash sums within 2e-6 relative plus rounding (one unit per term;
 * with bf16 rounding of A, up to two ties rounded the other way per sum). Then determinism:
 * the same call twice gives the same bits, and the keys split into two calls (each run alone,
 * with its own run start) give bit for bit the scores, maxima and integer sums of one call.
 */
static void est_check(int W, int d, int64_t run_len) {
  est_world w;
  est_world_build(&w, W, d, run_len);
  const int64_t nk = w.nk;
  const size_t cells = (size_t)W * nk;
  float *L = xmalloc(cells * sizeof(float));
  float *dL = est_run_scores(&w, 0, nk, w.run_start, run_len, L);

  /* scores */
  double worst = 0;
  for (int i = 0; i < W; i++)
    for (int64_t j = 0; j < nk; j++) {
      const float got = L[(size_t)i * nk + j];
      if (est_pos_of(&w, w.run_start, run_len, j) > w.qpos0 + i) {
        if (!(isinf(got) && got < 0))
          fail_msg("est_scores: L[%d][%lld] = %g, the key is in the future", i, (long long)j,
                   (double)got);
        continue;
      }
      double dot = 0, mag = 0;
      for (int c = 0; c < d; c++) {
        const double t = (double)w.qw[(size_t)i * d + c] * w.k[(size_t)j * d + c];
        dot += t;
        mag += fabs(t);
      }
      const double err = fabs((double)got - dot * w.scale) / (mag * w.scale + 1e-30);
      if (!(err <= worst)) worst = err;
    }
  if (!(worst <= 1e-4)) fail_msg("est_scores: error %.3e of the sum of |terms|", worst);

  /* row max: exactly the max of L */
  float *gmax = xmalloc((size_t)W * sizeof(float));
  check(gpu->est_rowmax(dL, W, nk, gmax), "est_rowmax");
  for (int i = 0; i < W; i++) {
    float m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) m = fmaxf(m, L[(size_t)i * nk + j]);
    if (gmax[i] != m) fail_msg("est_rowmax: row %d: %g, expected %g", i, (double)gmax[i], (double)m);
  }

  /* row sums */
  int64_t *sums = xmalloc((size_t)W * sizeof(int64_t));
  check(gpu->est_rowsum(dL, W, nk, gmax, sums), "est_rowsum");
  float *inv = xmalloc((size_t)W * sizeof(float));
  double sum_worst = 0;
  for (int i = 0; i < W; i++) {
    double ref = 0;
    if (gmax[i] != -INFINITY)
      for (int64_t j = 0; j < nk; j++) ref += exp((double)L[(size_t)i * nk + j] - gmax[i]) * FIX_ONE;
    const double err = fabs((double)sums[i] - ref);
    if (!(err <= 2e-6 * ref + (double)nk))
      fail_msg("est_rowsum: row %d: %lld, expected %.1f", i, (long long)sums[i], ref);
    if (ref > 0 && err / ref > sum_worst) sum_worst = err / ref;
    inv[i] = sums[i] > 0 ? (float)(FIX_ONE / (double)sums[i]) : 0.0f;
  }

  /* vertical and slash sums, without and with bf16 rounding of A */
  int64_t *vert = xmalloc((size_t)nk * 8), *slash = xmalloc((size_t)w.n * 8);
  int64_t *vert2 = xmalloc((size_t)nk * 8), *slash2 = xmalloc((size_t)w.n * 8);
  double *rv = xmalloc((size_t)nk * 8), *rs = xmalloc((size_t)w.n * 8);
  double *mv = xmalloc((size_t)nk * 8), *ms = xmalloc((size_t)w.n * 8);
  for (int round = 0; round < 2; round++) {
    est_run_accum(&w, dL, nk, w.run_start, run_len, gmax, inv, round, vert, slash);
    memset(rv, 0, (size_t)nk * 8), memset(rs, 0, (size_t)w.n * 8);
    memset(mv, 0, (size_t)nk * 8), memset(ms, 0, (size_t)w.n * 8);
    for (int i = 0; i < W; i++) {
      if (gmax[i] == -INFINITY) continue;
      for (int64_t j = 0; j < nk; j++) {
        double a;
        if (round) {
          const float af = (float)exp((double)L[(size_t)i * nk + j] - gmax[i]) * inv[i];
          a = bf16_value(bf16_bits(af));
        } else {
          a = exp((double)L[(size_t)i * nk + j] - gmax[i]) * inv[i];
        }
        a *= FIX_ONE;
        rv[j] += a;
        if (a > mv[j]) mv[j] = a;
        const int64_t o = w.qpos0 + i - est_pos_of(&w, w.run_start, run_len, j);
        if (o >= 0 && o < w.n) {
          rs[o] += a;
          if (a > ms[o]) ms[o] = a;
        }
      }
    }
    const double slack = round ? 2.0 * 0x1.0p-8 : 0.0; /* two bf16 ties rounded the other way */
    double vworst = 0, sworst = 0;
    for (int64_t j = 0; j < nk; j++) {
      const double err = fabs((double)vert[j] - rv[j]);
      if (!(err <= 2e-6 * rv[j] + slack * mv[j] + W + 1))
        fail_msg("est_accum (round %d): vert[%lld] = %lld, expected %.1f", round, (long long)j,
                 (long long)vert[j], rv[j]);
      if (rv[j] > 0 && err / rv[j] > vworst) vworst = err / rv[j];
    }
    for (int64_t o = 0; o < w.n; o++) {
      const double err = fabs((double)slash[o] - rs[o]);
      if (!(err <= 2e-6 * rs[o] + slack * ms[o] + W + 1))
        fail_msg("est_accum (round %d): slash[%lld] = %lld, expected %.1f", round, (long long)o,
                 (long long)slash[o], rs[o]);
      if (rs[o] > 0 && err / rs[o] > sworst) sworst = err / rs[o];
    }
    /* the same call again: the same bits */
    est_run_accum(&w, dL, nk, w.run_start, run_len, gmax, inv, round, vert2, slash2);
    if (memcmp(vert, vert2, (size_t)nk * 8) || memcmp(slash, slash2, (size_t)w.n * 8))
      fail_msg("est_accum (round %d): two identical calls differ", round);
    /* the keys in two calls, one run each */
    int64_t *sv = xmalloc((size_t)nk * 8), *ss = xmalloc((size_t)w.n * 8);
    float *Lh = xmalloc((size_t)W * run_len * sizeof(float));
    float *mh[2] = {xmalloc((size_t)W * 4), xmalloc((size_t)W * 4)};
    int64_t *sh = xmalloc((size_t)W * 8), *sh_own = xmalloc((size_t)W * 8);
    int64_t *sum_split = xmalloc((size_t)W * 8);
    memset(sum_split, 0, (size_t)W * 8);
    memset(ss, 0, (size_t)w.n * 8);
    for (int half = 0; half < 2; half++) {
      const int64_t j0 = half * run_len, *rs1 = &w.run_start[half];
      float *dLh = est_run_scores(&w, j0, run_len, rs1, run_len, Lh);
      for (int i = 0; i < W; i++)
        if (memcmp(Lh + (size_t)i * run_len, L + (size_t)i * nk + j0, (size_t)run_len * 4))
          fail_msg("est_scores: keys split in two calls: row %d of half %d differs", i, half);
      check(gpu->est_rowmax(dLh, W, run_len, mh[half]), "est_rowmax (half)");
      check(gpu->est_rowsum(dLh, W, run_len, gmax, sh), "est_rowsum (half)");
      for (int i = 0; i < W; i++) sum_split[i] += sh[i];
      /* with the half's own max, rows that see none of its keys (-inf) sum to 0 */
      check(gpu->est_rowsum(dLh, W, run_len, mh[half], sh_own), "est_rowsum (own max)");
      for (int i = 0; i < W; i++)
        if (mh[half][i] == -INFINITY && sh_own[i] != 0)
          fail_msg("est_rowsum: row %d with max -inf sums to %lld", i, (long long)sh_own[i]);
      int64_t *vh = xmalloc((size_t)run_len * 8), *slh = xmalloc((size_t)w.n * 8);
      est_run_accum(&w, dLh, run_len, rs1, run_len, gmax, inv, round, vh, slh);
      memcpy(sv + j0, vh, (size_t)run_len * 8);
      for (int64_t o = 0; o < w.n; o++) ss[o] += slh[o];
      free(vh), free(slh);
      gpu->free(dLh);
    }
    for (int i = 0; i < W; i++) {
      const float m = fmaxf(mh[0][i], mh[1][i]);
      if (m != gmax[i]) fail_msg("est_rowmax: split max of row %d differs", i);
      if (sum_split[i] != sums[i])
        fail_msg("est_rowsum: split sums of row %d: %lld, one call %lld", i,
                 (long long)sum_split[i], (long long)sums[i]);
    }
    if (memcmp(sv, vert, (size_t)nk * 8)) fail_msg("est_accum: split vertical sums differ");
    if (memcmp(ss, slash, (size_t)w.n * 8)) fail_msg("est_accum: split slash sums differ");
    fprintf(stderr,
            "# est W=%4d d=%3d nk=2x%lld n=%lld round=%d: scores err %.1e, rowsum rel %.1e, vert "
            "rel %.1e, slash rel %.1e; repeat and 2-way split bit-identical\n",
            W, d, (long long)run_len, (long long)w.n, round, worst, sum_worst, vworst, sworst);
    free(sv), free(ss), free(Lh), free(mh[0]), free(mh[1]), free(sh), free(sh_own), free(sum_split);
  }
  gpu->free(dL);
  free(L), free(gmax), free(sums), free(inv), free(vert), free(slash), free(vert2), free(slash2);
  free(rv), free(rs), free(mv), free(ms);
  est_world_free(&w);
}

static void test_est_ops(void **state) {
  (void)state;
  est_check(64, 128, 3001);  /* nk not a multiple of 4: scalar stores */
  est_check(200, 70, 1250);  /* d not a multiple of 4: scalar loads; W not a tile multiple */
  est_check(512, 128, 4096);
  est_check(130, 64, 777);
}

/* Times the four ops for one q-head at W = 256, 128K keys, d = 128 (printed). */
static void test_est_speed(void **state) {
  (void)state;
  const int W = 256, d = 128;
  const int64_t nk = 131072, run_len = nk / 2;
  float *qw = xmalloc((size_t)W * d * 4), *k = xmalloc((size_t)nk * d * 4);
  sr_test_fill(qw, (size_t)W * d, 1.0f, &rng);
  sr_test_fill(k, (size_t)nk * d, 1.0f, &rng);
  float *dqw = dcopy(qw, (size_t)W * d), *dL = dalloc((size_t)W * nk * 4);
  void *dk = dstore(k, (size_t)nk * d);
  const int64_t rs[2] = {0, 3 * run_len}, n = 4 * run_len, qpos0 = n - W;
  float *gmax = xmalloc(W * 4), *inv = xmalloc(W * 4);
  int64_t *sums = xmalloc(W * 8), *vert = xmalloc(nk * 8), *slash = xmalloc(n * 8);
  memset(vert, 0, nk * 8), memset(slash, 0, n * 8);
  double t[4] = {1e30, 1e30, 1e30, 1e30};
  for (int rep = 0; rep < 4; rep++) {
    struct timespec a, b;
    double dt[4];
    for (int op = 0; op < 4; op++) {
      check(gpu->sync(), "sync");
      clock_gettime(CLOCK_MONOTONIC, &a);
      if (op == 0) check(gpu->est_scores(dqw, W, qpos0, dk, nk, rs, run_len, d, 0.088f, dL), "est_scores");
      if (op == 1) check(gpu->est_rowmax(dL, W, nk, gmax), "est_rowmax");
      if (op == 2) {
        check(gpu->est_rowsum(dL, W, nk, gmax, sums), "est_rowsum");
        for (int i = 0; i < W; i++) inv[i] = sums[i] > 0 ? (float)(FIX_ONE / (double)sums[i]) : 0.0f;
      }
      if (op == 3)
        check(gpu->est_accum(dL, W, nk, qpos0, rs, run_len, gmax, inv, 1, n, vert, slash), "est_accum");
      check(gpu->sync(), "sync");
      clock_gettime(CLOCK_MONOTONIC, &b);
      dt[op] = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) * 1e-6;
    }
    for (int op = 0; op < 4; op++)
      if (rep > 0 && dt[op] < t[op]) t[op] = dt[op];
  }
  fprintf(stderr,
          "# est speed W=%d nk=%lld d=%d (one q-head, host wall time incl. transfers): scores "
          "%.3f ms, rowmax %.3f ms, rowsum %.3f ms, accum %.3f ms, total %.3f ms\n",
          W, (long long)nk, d, t[0], t[1], t[2], t[3], t[0] + t[1] + t[2] + t[3]);
  gpu->free(dqw), gpu->free(dL), gpu->free(dk);
  free(qw), free(k), free(gmax), free(inv), free(sums), free(vert), free(slash);
}

/* unstore: bf16 storage back to host floats, exactly the stored values (specials too), over
 * more than one chunk. */
static void test_unstore(void **state) {
  (void)state;
  const size_t n = ((size_t)1 << 22) + 2 * 1001;
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  sr_test_fill(x, n, 50.0f, &rng);
  const float special[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 1e-40f, -1e-40f, 3.0e38f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[i * 7919 + 3] = special[i];
  void *d = dstore(x, n);
  sr__poison_f32(y, n);
  check(gpu->unstore(y, d, n), "unstore");
  for (size_t i = 0; i < n; i++) {
    const float want = bf16_value(bf16_bits(x[i]));
    if (isnan(want) ? !isnan(y[i]) : memcmp(&want, &y[i], 4) != 0)
      fail_msg("unstore: element %zu = %a, expected %a", i, (double)y[i], (double)want);
  }
  check(gpu->unstore(y, d, 0), "unstore (empty)");
  gpu->free(d);
  free(x), free(y);
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
      cmocka_unit_test(test_attn_auto),    cmocka_unit_test(test_attn_columns),
      cmocka_unit_test(test_unstore),      cmocka_unit_test(test_est_ops),
      cmocka_unit_test(test_est_speed),    cmocka_unit_test(test_host_buffers),
#ifdef SR_CUDA
      cmocka_unit_test(test_attn_columns_speed),
      cmocka_unit_test(test_upload_past_2gib), /* last: leaves 3 GB of pinned staging */
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
