/*
 * test_gpu_decode.c — the decode ops of the CUDA backend (kernels.h "Decode") against a float64
 * reference and against the CPU backend, on fresh random inputs. Skipped (exit 77) where
 * sr_backend_cuda() finds no usable device, as on CI.
 *
 * K/V are drawn in fp32; the GPU stores them as bf16 (round to nearest even) and the CPU backend
 * gets the same bf16-rounded values, so GPU and CPU see the same keys. decode_fwd: per output
 * row ||out - ref|| / ||ref|| <= 2e-3 against the float64 reference on the bf16 values (and
 * against the CPU backend), <= 1e-2 against the reference on the unrounded fp32 K/V; lse within
 * 2e-3 (relative, at least 1); empty lists exactly (0, -inf); a repeat is bit-identical. Every
 * decode_fwd case runs both kernels (SR_DECODE_KERNEL=simt and =mma, the tensor-core one), which
 * must differ in bits (the switch works) and meet the same tolerances. K/V rows that no list of
 * their segment reads are NaN, so reading past an entry's len or a padding entry shows. Cases:
 * own + shared + tail entries with padding and partial entries, per_qhead 0 and 1, d 128 and 64,
 * groups of 4, 6, 8, 12, 16 and 20 q-heads (the mma kernel's one and two m-tiles, head chunks),
 * 4096 entries per list, an empty list, all lists empty, and splits long enough that a warp
 * streams ~100 entries (rows repeat there); an unknown SR_DECODE_KERNEL is a config error.
 * page_minmax exact (bits) against the CPU; page_scores within 1e-4 of the sum of |terms|,
 * bit-identical on repeat and whatever nvalid and lp are; page_topk equal to the CPU (the k best, ascending page order)
 * (distinct scores and planted ties, k > nvalid, k past 48 KiB of shared memory); est_colmax bit
 * for bit against the CPU (and glibc's expf on 4M arguments); upload / download round trips.
 * Every output is poisoned (NaN / 0x7f bytes) before the op. Last, the time of decode_fwd at
 * 128K tokens (batch 1, 32/8 heads, d 128) with each kernel against a device-to-device copy
 * (printed only; the two kernels' outputs must agree there within the tolerances).
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
static const sr_backend *gpu, *cpu;

#define OUT_TOL_BF16 2e-3 /* against the reference on the same bf16 values, and the CPU */
#define OUT_TOL_F32 1e-2  /* against the reference on the unrounded fp32 K/V */
#define LSE_TOL 2e-3

/* ---- helpers ----------------------------------------------------------------------------- */

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
static float rbf(float x) { return bf16_value(bf16_bits(x)); }
static int64_t rnd_below(int64_t n) { return (int64_t)(sr_test_next(&rng) % (uint64_t)n); }
static float uni(void) { return sr_test_uniform(&rng); }

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes > 0 ? bytes : 1);
  assert_non_null(p);
  return p;
}
static void *dalloc(size_t bytes) {
  void *p = NULL;
  if (gpu->alloc(bytes + 16, &p) != SR_OK) fail_msg("alloc: %s", sr_last_error());
  return p;
}
static void check(sr_status st, const char *what) {
  if (st != SR_OK) fail_msg("%s: %s: %s", what, sr_strerror(st), sr_last_error());
}
/* Host bytes -> new device buffer (through the op under test). */
static void *dbytes(const void *h, size_t bytes) {
  void *d = dalloc(bytes);
  check(gpu->upload(d, h, bytes), "upload");
  return d;
}
static void dread(void *h, const void *d, size_t bytes) { check(gpu->download(h, d, bytes), "download"); }
/* n host floats -> new device bf16 buffer. */
static void *dstore(const float *h, size_t n) {
  void *d = dalloc(n * gpu->elem_bytes);
  check(gpu->store(d, h, n), "store");
  return d;
}
/* Fills device memory with 0xff bytes (NaN as fp32 and as bf16, -1 as int32). */
static void poison(void *d, size_t bytes) {
  unsigned char *h = xmalloc(bytes);
  memset(h, 0xff, bytes);
  check(gpu->upload(d, h, bytes), "upload (poison)");
  free(h);
}

/* ---- decode_fwd -------------------------------------------------------------------------- */

typedef struct dcase {
  const char *name;
  int nseq, qh, kvh, d, per_qhead;
  int64_t pages, own_stride, nshared;
  int tail_len;
  int empty_list; /* list 1 gets only padding entries (needs nshared = 0, tail_len = 0) */
  int64_t wrap;   /* > 0: shared entry e on page e % wrap (rows repeat; needs own_stride = 0) */
} dcase;

/* The decode_fwd kernels of the CUDA backend (SR_DECODE_KERNEL, read on every call). */
static const char *const kernels_df[2] = {"simt", "mma"};

/* One entry on page pg: mostly full pages, some partial, one in 10 padding. */
static void draw_entry(int64_t pg, int32_t *row, int32_t *len) {
  const int64_t r = rnd_below(10);
  if (r == 0) {
    *row = (int32_t)rnd_below(1000);
    *len = 0;
  } else if (r < 7) {
    *row = (int32_t)(16 * pg);
    *len = 16;
  } else {
    const int off = (int)rnd_below(8);
    *row = (int32_t)(16 * pg + off);
    *len = 1 + (int32_t)rnd_below(16 - off);
  }
}

/* float64 reference of one (b, h) over rows of segment sg; returns 0 for an empty list. */
static int ref_row(const dcase *c, const float *q, const float *k, const float *v, int64_t seg_rows,
                   int64_t sg, const int32_t *rows, int64_t nrows, float scale, double *out,
                   double *lse) {
  const int d = c->d;
  for (int x = 0; x < d; x++) out[x] = 0.0;
  if (nrows == 0) {
    *lse = -INFINITY;
    return 0;
  }
  double *z = xmalloc((size_t)nrows * sizeof(double)), m = -INFINITY, S = 0.0;
  for (int64_t i = 0; i < nrows; i++) {
    const float *kr = k + ((size_t)sg * seg_rows + (size_t)rows[i]) * d;
    double dot = 0.0;
    for (int x = 0; x < d; x++) dot += (double)q[x] * (double)kr[x];
    z[i] = dot * scale;
    if (z[i] > m) m = z[i];
  }
  for (int64_t i = 0; i < nrows; i++) {
    const double w = exp(z[i] - m);
    const float *vr = v + ((size_t)sg * seg_rows + (size_t)rows[i]) * d;
    S += w;
    for (int x = 0; x < d; x++) out[x] += w * (double)vr[x];
  }
  for (int x = 0; x < d; x++) out[x] /= S;
  *lse = m + log(S);
  free(z);
  return 1;
}

static double row_err(const float *a, const double *ref, int d) {
  double num = 0, den = 0;
  for (int x = 0; x < d; x++) {
    const double e = (double)a[x] - ref[x];
    num += e * e;
    den += ref[x] * ref[x];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void set_kernel(const char *name) {
  if (setenv("SR_DECODE_KERNEL", name, 1) != 0) fail_msg("setenv SR_DECODE_KERNEL=%s", name);
}

/* Everything one case compares a GPU result with. */
typedef struct dref {
  size_t nrow_out;
  const double *ref_b, *ref_f, *lse_b;
  const float *co, *cl; /* the CPU backend */
} dref;

/* Runs decode_fwd twice with SR_DECODE_KERNEL = kname (the outputs poisoned before each run),
 * checks the repeat's bits and every row against the references; leaves out/lse in go/gl. */
static void decode_run(const dcase *c, const char *kname, const sr_decode_args *ga, const dref *r,
                       float *go, float *gl) {
  const int d = c->d;
  const size_t nrow_out = r->nrow_out;
  set_kernel(kname);
  poison(ga->out, nrow_out * d * 4);
  poison(ga->lse, nrow_out * 4);
  check(gpu->decode_fwd(ga), "gpu decode_fwd");
  float *go2 = xmalloc(nrow_out * d * 4), *gl2 = xmalloc(nrow_out * 4);
  dread(go, ga->out, nrow_out * d * 4);
  dread(gl, ga->lse, nrow_out * 4);
  poison(ga->out, nrow_out * d * 4);
  poison(ga->lse, nrow_out * 4);
  check(gpu->decode_fwd(ga), "gpu decode_fwd (repeat)");
  dread(go2, ga->out, nrow_out * d * 4);
  dread(gl2, ga->lse, nrow_out * 4);
  if (memcmp(go, go2, nrow_out * d * 4) || memcmp(gl, gl2, nrow_out * 4))
    fail_msg("decode %s [%s]: a repeat gave other bits", c->name, kname);

  double e_b = 0, e_f = 0, e_c = 0, e_l = 0;
  int empty = 0;
  for (size_t i = 0; i < nrow_out; i++) {
    const float *gr = go + i * d, *cr = r->co + i * d;
    if (isinf(r->lse_b[i])) { /* empty list: exactly (0, -inf) on both backends */
      empty++;
      if (!(isinf(gl[i]) && gl[i] < 0) || !(isinf(r->cl[i]) && r->cl[i] < 0))
        fail_msg("decode %s [%s]: row %zu empty, lse gpu %g cpu %g", c->name, kname, i, gl[i],
                 r->cl[i]);
      for (int x = 0; x < d; x++)
        if (gr[x] != 0.0f || cr[x] != 0.0f)
          fail_msg("decode %s [%s]: row %zu empty, out[%d] gpu %g cpu %g", c->name, kname, i, x,
                   gr[x], cr[x]);
      continue;
    }
    for (int x = 0; x < d; x++)
      if (!isfinite(gr[x])) fail_msg("decode %s [%s]: row %zu out[%d] = %g", c->name, kname, i, x, gr[x]);
    double cd[256];
    for (int x = 0; x < d; x++) cd[x] = cr[x];
    const double eb = row_err(gr, r->ref_b + i * d, d), ef = row_err(gr, r->ref_f + i * d, d);
    const double ec = row_err(gr, cd, d);
    const double el = fabs((double)gl[i] - r->lse_b[i]) / fmax(1.0, fabs(r->lse_b[i]));
    const double elc = fabs((double)gl[i] - (double)r->cl[i]) / fmax(1.0, fabs(r->lse_b[i]));
    if (eb > OUT_TOL_BF16 || ef > OUT_TOL_F32 || ec > OUT_TOL_BF16 || el > LSE_TOL || elc > LSE_TOL)
      fail_msg("decode %s [%s]: row %zu: out err %.2e (bf16 ref), %.2e (fp32 ref), %.2e (cpu); "
               "lse gpu %.6f ref %.6f cpu %.6f", c->name, kname, i, eb, ef, ec, gl[i], r->lse_b[i],
               r->cl[i]);
    e_b = fmax(e_b, eb), e_f = fmax(e_f, ef), e_c = fmax(e_c, ec), e_l = fmax(e_l, el);
  }
  fprintf(stderr, "# decode %-30s [%-4s] out err %.1e (bf16 ref) %.1e (fp32 ref) %.1e (cpu), "
          "lse %.1e, %d empty rows; repeat bit-identical\n", c->name, kname, e_b, e_f, e_c, e_l,
          empty);
  free(go2), free(gl2);
}

static void decode_case(const dcase *c) {
  const int d = c->d, group = c->qh / c->kvh;
  const int64_t nseg = (int64_t)c->nseq * c->kvh, seg_rows = 16 * c->pages + 16;
  const int64_t nl = (int64_t)c->nseq * (c->per_qhead ? c->qh : c->kvh);
  const int G = c->per_qhead ? 1 : group;
  const size_t kvn = (size_t)nseg * seg_rows * d, qn = (size_t)c->nseq * c->qh * d;
  const float scale = 1.0f / sqrtf((float)d);
  const int64_t shared_pages = c->wrap > 0 ? c->wrap : c->nshared;
  assert_true(shared_pages + c->own_stride <= c->pages);
  assert_true(c->wrap == 0 || c->own_stride == 0);
  float *k = xmalloc(kvn * 4), *v = xmalloc(kvn * 4), *kr = xmalloc(kvn * 4), *vr = xmalloc(kvn * 4);
  float *q = xmalloc(qn * 4);
  for (size_t i = 0; i < kvn; i++) {
    k[i] = uni() * 1.5f;
    v[i] = uni();
  }
  for (size_t i = 0; i < qn; i++) q[i] = uni() * 2.0f;
  /* shared entries on pages [0, shared_pages), own entries on distinct pages after them */
  const int64_t ne_own = nl * c->own_stride;
  int32_t *srow = xmalloc((size_t)c->nshared * 4 + 4), *slen = xmalloc((size_t)c->nshared * 4 + 4);
  int32_t *orow = xmalloc((size_t)ne_own * 4 + 4), *olen = xmalloc((size_t)ne_own * 4 + 4);
  for (int64_t e = 0; e < c->nshared; e++)
    draw_entry(c->wrap > 0 ? e % c->wrap : e, &srow[e], &slen[e]);
  const int64_t npool = c->pages - shared_pages;
  int64_t *perm = xmalloc((size_t)npool * 8 + 8);
  for (int64_t l = 0; l < nl; l++) {
    for (int64_t i = 0; i < npool; i++) perm[i] = shared_pages + i;
    for (int64_t e = 0; e < c->own_stride; e++) {
      const int64_t j = e + rnd_below(npool - e), t = perm[e];
      perm[e] = perm[j], perm[j] = t;
      draw_entry(perm[e], &orow[l * c->own_stride + e], &olen[l * c->own_stride + e]);
      if (c->empty_list && l == 1) olen[l * c->own_stride + e] = 0;
    }
  }
  const int32_t tail_row = (int32_t)(16 * c->pages), tail_len = c->tail_len;

  /* every list's rows; rows no list of their segment reads become NaN in K and V (a kernel that
   * reads past an entry's len, or a padding entry's rows, turns its output into NaN) */
  const int64_t maxrows = 16 * (c->own_stride + c->nshared + 1);
  int32_t *rows = xmalloc((size_t)maxrows * 4);
  unsigned char *used = xmalloc((size_t)nseg * seg_rows);
  memset(used, 0, (size_t)nseg * seg_rows);
  int64_t *nrows = xmalloc((size_t)nl * 8);
  for (int64_t l = 0; l < nl; l++) {
    const int lps = c->per_qhead ? c->qh : c->kvh, li = (int)(l % lps);
    const int64_t sg = (l / lps) * c->kvh + (c->per_qhead ? li / group : li);
    int64_t nr = 0;
    for (int64_t e = 0; e < c->own_stride; e++)
      for (int r = 0; r < olen[l * c->own_stride + e]; r++) rows[nr++] = orow[l * c->own_stride + e] + r;
    for (int64_t e = 0; e < c->nshared; e++)
      for (int r = 0; r < slen[e]; r++) rows[nr++] = srow[e] + r;
    for (int r = 0; r < tail_len; r++) rows[nr++] = tail_row + r;
    nrows[l] = nr;
    for (int64_t i = 0; i < nr; i++) used[(size_t)sg * seg_rows + (size_t)rows[i]] = 1;
  }
  int64_t nan_rows = 0;
  for (int64_t i = 0; i < nseg * seg_rows; i++) {
    if (!used[i]) {
      nan_rows++;
      for (int x = 0; x < d; x++) k[(size_t)i * d + x] = v[(size_t)i * d + x] = NAN;
    }
  }
  for (size_t i = 0; i < kvn; i++) {
    kr[i] = rbf(k[i]);
    vr[i] = rbf(v[i]);
  }

  /* references: every (b, h) */
  const size_t nrow_out = (size_t)c->nseq * c->qh;
  double *ref_b = xmalloc(nrow_out * d * 8), *ref_f = xmalloc(nrow_out * d * 8);
  double *lse_b = xmalloc(nrow_out * 8), *lse_f = xmalloc(nrow_out * 8);
  for (int64_t l = 0; l < nl; l++) {
    const int lps = c->per_qhead ? c->qh : c->kvh, li = (int)(l % lps);
    const int64_t b = l / lps;
    const int g = c->per_qhead ? li / group : li, h0 = c->per_qhead ? li : li * group;
    int64_t nr = 0;
    for (int64_t e = 0; e < c->own_stride; e++)
      for (int r = 0; r < olen[l * c->own_stride + e]; r++) rows[nr++] = orow[l * c->own_stride + e] + r;
    for (int64_t e = 0; e < c->nshared; e++)
      for (int r = 0; r < slen[e]; r++) rows[nr++] = srow[e] + r;
    for (int r = 0; r < tail_len; r++) rows[nr++] = tail_row + r;
    assert_int_equal(nr, nrows[l]);
    for (int j = 0; j < G; j++) {
      const size_t o = (size_t)b * c->qh + (size_t)(h0 + j);
      ref_row(c, q + o * d, kr, vr, seg_rows, b * c->kvh + g, rows, nr, scale, ref_b + o * d, &lse_b[o]);
      ref_row(c, q + o * d, k, v, seg_rows, b * c->kvh + g, rows, nr, scale, ref_f + o * d, &lse_f[o]);
    }
  }

  /* CPU backend on the bf16 values */
  float *co = xmalloc(nrow_out * d * 4), *cl = xmalloc(nrow_out * 4);
  sr_decode_args a = {.nseq = c->nseq, .q_heads = c->qh, .kv_heads = c->kvh, .d = d,
                      .per_qhead = c->per_qhead, .q = q, .k = kr, .v = vr, .seg_rows = seg_rows,
                      .own_stride = c->own_stride, .own_row = orow, .own_len = olen,
                      .nshared = c->nshared, .shared_row = srow, .shared_len = slen,
                      .tail_row = tail_row, .tail_len = tail_len, .scale = scale, .out = co,
                      .lse = cl};
  check(cpu->decode_fwd(&a), "cpu decode_fwd");
  double e_cpu = 0;
  for (size_t r = 0; r < nrow_out; r++)
    if (!isinf(lse_b[r])) e_cpu = fmax(e_cpu, row_err(co + r * d, ref_b + r * d, d));
  if (e_cpu > 1e-4) fail_msg("decode %s: the CPU backend is off the reference (%.2e)", c->name, e_cpu);

  /* GPU: both kernels */
  void *dk = dstore(k, kvn), *dv = dstore(v, kvn);
  float *dq = dbytes(q, qn * 4);
  int32_t *dorow = dbytes(orow, (size_t)ne_own * 4), *dolen = dbytes(olen, (size_t)ne_own * 4);
  int32_t *dsrow = dbytes(srow, (size_t)c->nshared * 4), *dslen = dbytes(slen, (size_t)c->nshared * 4);
  float *dout = dalloc(nrow_out * d * 4), *dlse = dalloc(nrow_out * 4);
  sr_decode_args ga = a;
  ga.q = dq, ga.k = dk, ga.v = dv, ga.own_row = dorow, ga.own_len = dolen, ga.shared_row = dsrow;
  ga.shared_len = dslen, ga.out = dout, ga.lse = dlse;
  fprintf(stderr, "# decode %-30s lists %3lld x G %2d, entries %lld+%lld+%d, %lld NaN rows\n",
          c->name, (long long)nl, G, (long long)c->own_stride, (long long)c->nshared,
          tail_len > 0, (long long)nan_rows);
  const dref rf = {nrow_out, ref_b, ref_f, lse_b, co, cl};
  float *go[2], *gl[2];
  for (int kn = 0; kn < 2; kn++) {
    go[kn] = xmalloc(nrow_out * d * 4), gl[kn] = xmalloc(nrow_out * 4);
    decode_run(c, kernels_df[kn], &ga, &rf, go[kn], gl[kn]);
  }
  unsetenv("SR_DECODE_KERNEL");
  /* the switch works: two different kernels do not give the same bits on a non-empty case */
  size_t nonempty = 0;
  for (size_t r = 0; r < nrow_out; r++) nonempty += !isinf(lse_b[r]);
  if (nonempty > 0 && memcmp(go[0], go[1], nrow_out * d * 4) == 0 &&
      memcmp(gl[0], gl[1], nrow_out * 4) == 0)
    fail_msg("decode %s: simt and mma gave the same bits: SR_DECODE_KERNEL had no effect", c->name);
  gpu->free(dk), gpu->free(dv), gpu->free(dq), gpu->free(dorow), gpu->free(dolen);
  gpu->free(dsrow), gpu->free(dslen), gpu->free(dout), gpu->free(dlse);
  free(k), free(v), free(kr), free(vr), free(q), free(srow), free(slen), free(orow), free(olen);
  free(perm), free(ref_b), free(ref_f), free(lse_b), free(lse_f), free(rows), free(co), free(cl);
  free(used), free(nrows);
  for (int kn = 0; kn < 2; kn++) free(go[kn]), free(gl[kn]);
}

static void test_decode_fwd(void **state) {
  (void)state;
  static const dcase cases[] = {
      {"d128 grouped", 2, 8, 2, 128, 0, 300, 37, 50, 5, 0, 0},
      {"d128 per q-head", 2, 8, 2, 128, 1, 300, 37, 50, 5, 0, 0},
      {"d64 grouped", 2, 8, 2, 64, 0, 300, 37, 50, 16, 0, 0},
      {"d64 per q-head", 2, 8, 2, 64, 1, 300, 37, 50, 1, 0, 0},
      {"d128 group 6 (masked heads)", 1, 12, 2, 128, 0, 200, 20, 30, 16, 0, 0},
      {"d64 group 12 (2 head chunks)", 1, 24, 2, 64, 0, 200, 20, 30, 7, 0, 0},
      {"d64 group 8", 1, 16, 2, 64, 0, 200, 60, 30, 2, 0, 0},
      {"d128 group 8", 1, 16, 2, 128, 0, 200, 60, 30, 11, 0, 0},
      {"d128 group 16 (2 m-tiles)", 1, 32, 2, 128, 0, 200, 60, 30, 16, 0, 0},
      {"d128 group 20 (head chunks)", 1, 40, 2, 128, 0, 150, 50, 20, 4, 0, 0},
      {"d64 group 20 (head chunks)", 1, 40, 2, 64, 0, 150, 50, 20, 9, 0, 0},
      {"d128 4096 entries/list", 1, 8, 2, 128, 0, 4200, 4096, 64, 3, 0, 0},
      {"d128 per q-head 1000/list", 2, 8, 2, 128, 1, 1100, 1000, 50, 9, 0, 0},
      {"d128 shared only", 1, 8, 2, 128, 0, 700, 0, 700, 0, 0, 0},
      {"d128 one empty list", 2, 8, 2, 128, 0, 100, 40, 0, 0, 1, 0},
      {"d64 all empty", 2, 8, 2, 64, 1, 10, 0, 0, 0, 0, 0},
      /* 2 lists x 200000 entries: splits of 391 entries, so a warp streams ~98 of them (its
       * entry indices come in batches of 32); entries repeat 150 pages (outside kernels.h's
       * contract, but every implementation sums the repeated rows alike) */
      {"d64 long splits (rows repeat)", 1, 4, 2, 64, 0, 151, 0, 200000, 13, 0, 150},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) decode_case(&cases[i]);
  /* a head dim the CUDA kernels do not have: a shape error, not a launch */
  float dummy[4] = {0};
  sr_decode_args bad = {.nseq = 1, .q_heads = 1, .kv_heads = 1, .d = 96, .q = dummy, .k = dummy,
                        .v = dummy, .seg_rows = 16, .scale = 1.0f, .out = dummy, .lse = dummy};
  for (int kn = 0; kn < 2; kn++) {
    set_kernel(kernels_df[kn]);
    assert_int_equal(gpu->decode_fwd(&bad), SR_ERR_SHAPE);
  }
  /* an unknown kernel name: a configuration error that names the variable */
  bad.d = 64;
  set_kernel("tensor");
  assert_int_equal(gpu->decode_fwd(&bad), SR_ERR_CONFIG);
  assert_non_null(strstr(sr_last_error(), "SR_DECODE_KERNEL"));
  unsetenv("SR_DECODE_KERNEL");
}

/* ---- page_minmax --------------------------------------------------------------------------- */

static void minmax_case(int d) {
  const int64_t nseg = 3, P = 40, seg_rows = 16 * P + 7, lp = P + 3;
  const size_t kn = (size_t)nseg * seg_rows * d, pn = (size_t)nseg * lp * d;
  float *k = xmalloc(kn * 4);
  for (size_t i = 0; i < kn; i++) {
    const int64_t r = rnd_below(50);
    k[i] = r == 0 ? 0.0f : r == 1 ? -0.0f : r == 2 ? 0.25f : rbf(uni() * 3.0f);
  }
  float *cmin = xmalloc(pn * 4), *cmax = xmalloc(pn * 4);
  for (size_t i = 0; i < pn; i++) cmin[i] = cmax[i] = NAN;
  void *dk = dstore(k, kn), *dmin = dalloc(pn * 2), *dmax = dalloc(pn * 2);
  poison(dmin, pn * 2);
  poison(dmax, pn * 2);
  /* pages 3..12 first: everything else must stay poisoned */
  check(cpu->page_minmax(k, nseg, seg_rows, d, lp, 3, 10, 16, cmin, cmax), "cpu page_minmax");
  check(gpu->page_minmax(dk, nseg, seg_rows, d, lp, 3, 10, 16, dmin, dmax), "gpu page_minmax");
  uint16_t *gmin = xmalloc(pn * 2), *gmax = xmalloc(pn * 2);
  dread(gmin, dmin, pn * 2);
  dread(gmax, dmax, pn * 2);
  for (int64_t s = 0; s < nseg; s++)
    for (int64_t p = 0; p < lp; p++)
      for (int x = 0; x < d; x++) {
        const size_t o = ((size_t)s * lp + p) * d + x;
        const int in = p >= 3 && p < 13;
        if (!in && (gmin[o] != 0xffff || gmax[o] != 0xffff))
          fail_msg("page_minmax d%d: page %lld outside the call was written", d, (long long)p);
        if (in && (gmin[o] != bf16_bits(cmin[o]) || gmax[o] != bf16_bits(cmax[o])))
          fail_msg("page_minmax d%d: seg %lld page %lld dim %d: gpu %04x/%04x cpu %04x/%04x", d,
                   (long long)s, (long long)p, x, gmin[o], gmax[o], bf16_bits(cmin[o]),
                   bf16_bits(cmax[o]));
      }
  /* the rest, and the partial last page of 7 rows */
  check(cpu->page_minmax(k, nseg, seg_rows, d, lp, 0, 3, 16, cmin, cmax), "cpu page_minmax");
  check(cpu->page_minmax(k, nseg, seg_rows, d, lp, 13, P - 13, 16, cmin, cmax), "cpu page_minmax");
  check(cpu->page_minmax(k, nseg, seg_rows, d, lp, P, 1, 7, cmin, cmax), "cpu page_minmax");
  check(gpu->page_minmax(dk, nseg, seg_rows, d, lp, 0, 3, 16, dmin, dmax), "gpu page_minmax");
  check(gpu->page_minmax(dk, nseg, seg_rows, d, lp, 13, P - 13, 16, dmin, dmax), "gpu page_minmax");
  check(gpu->page_minmax(dk, nseg, seg_rows, d, lp, P, 1, 7, dmin, dmax), "gpu page_minmax");
  dread(gmin, dmin, pn * 2);
  dread(gmax, dmax, pn * 2);
  for (int64_t s = 0; s < nseg; s++)
    for (int64_t p = 0; p <= P; p++)
      for (int x = 0; x < d; x++) {
        const size_t o = ((size_t)s * lp + p) * d + x;
        if (gmin[o] != bf16_bits(cmin[o]) || gmax[o] != bf16_bits(cmax[o]))
          fail_msg("page_minmax d%d: seg %lld page %lld dim %d: gpu %04x/%04x cpu %04x/%04x", d,
                   (long long)s, (long long)p, x, gmin[o], gmax[o], bf16_bits(cmin[o]),
                   bf16_bits(cmax[o]));
      }
  assert_int_equal(gpu->page_minmax(dk, nseg, seg_rows, d, lp, P, 1, 8, dmin, dmax), SR_ERR_SHAPE);
  fprintf(stderr, "# page_minmax d%d: %lld segments x %lld pages (last of 7 rows): bits equal the "
          "CPU's; pages outside a call untouched\n", d, (long long)nseg, (long long)(P + 1));
  gpu->free(dk), gpu->free(dmin), gpu->free(dmax);
  free(k), free(cmin), free(cmax), free(gmin), free(gmax);
}

static void test_page_minmax(void **state) {
  (void)state;
  minmax_case(128);
  minmax_case(64);
}

/* ---- page_scores --------------------------------------------------------------------------- */

static void scores_case(int d, int per_qhead) {
  const int nseq = 2, qh = 8, kvh = 2, group = qh / kvh;
  const int64_t lp = 300, nvalid = 257, nseg = nseq * kvh;
  const int64_t nl = (int64_t)nseq * (per_qhead ? qh : kvh);
  const size_t pn = (size_t)nseg * lp * d, qn = (size_t)nseq * qh * d, sn = (size_t)nl * lp;
  float *mn = xmalloc(pn * 4), *mx = xmalloc(pn * 4), *q = xmalloc(qn * 4);
  for (size_t i = 0; i < pn; i++) {
    const float a = rbf(uni() * 2.0f), b = rbf(uni() * 2.0f);
    mn[i] = a < b ? a : b;
    mx[i] = a < b ? b : a;
  }
  for (size_t i = 0; i < qn; i++) q[i] = uni();
  float *cs = xmalloc(sn * 4);
  check(cpu->page_scores(q, nseq, qh, kvh, per_qhead, mn, mx, lp, nvalid, d, cs), "cpu page_scores");
  void *dmn = dstore(mn, pn), *dmx = dstore(mx, pn);
  float *dq = dbytes(q, qn * 4), *ds = dalloc(sn * 4);
  poison(ds, sn * 4);
  check(gpu->page_scores(dq, nseq, qh, kvh, per_qhead, dmn, dmx, lp, nvalid, d, ds), "gpu page_scores");
  float *gs = xmalloc(sn * 4), *gs2 = xmalloc(sn * 4);
  dread(gs, ds, sn * 4);
  double worst = 0;
  for (int64_t l = 0; l < nl; l++) {
    const int lps = per_qhead ? qh : kvh, li = (int)(l % lps);
    const int64_t b = l / lps;
    const int g = per_qhead ? li / group : li, h0 = per_qhead ? li : li * group;
    const int G = per_qhead ? 1 : group;
    for (int64_t p = 0; p < lp; p++) {
      const float gv = gs[l * lp + p];
      if (p >= nvalid) {
        if (!isnan(gv)) fail_msg("page_scores: s[%lld][%lld] past nvalid was written", (long long)l, (long long)p);
        continue;
      }
      double ref = 0, mag = 0;
      const size_t off = (((size_t)b * kvh + g) * lp + p) * d;
      for (int j = 0; j < G; j++)
        for (int x = 0; x < d; x++) {
          const double qv = q[((size_t)b * qh + h0 + j) * d + x];
          const double t = fmax(qv * mn[off + x], qv * mx[off + x]);
          ref += t, mag += fabs(t);
        }
      const double e = fabs((double)gv - (double)cs[l * lp + p]) / (mag + 1e-30);
      const double er = fabs((double)gv - ref) / (mag + 1e-30);
      if (e > 1e-4 || er > 1e-4 || !isfinite(gv))
        fail_msg("page_scores d%d pq%d: s[%lld][%lld] gpu %.9g cpu %.9g ref %.9g", d, per_qhead,
                 (long long)l, (long long)p, gv, cs[l * lp + p], ref);
      worst = fmax(worst, e);
    }
  }
  /* repeat: the same bits; a smaller nvalid: the same bits on its pages */
  poison(ds, sn * 4);
  check(gpu->page_scores(dq, nseq, qh, kvh, per_qhead, dmn, dmx, lp, 100, d, ds), "gpu page_scores");
  dread(gs2, ds, sn * 4);
  for (int64_t l = 0; l < nl; l++)
    if (memcmp(gs + l * lp, gs2 + l * lp, 100 * 4))
      fail_msg("page_scores: list %lld: other bits with nvalid 100", (long long)l);
  /* another layout (lp = nvalid): the same bits */
  const size_t pn2 = (size_t)nseg * nvalid * d, sn2 = (size_t)nl * nvalid;
  float *mn2 = xmalloc(pn2 * 4), *mx2 = xmalloc(pn2 * 4);
  for (int64_t s = 0; s < nseg; s++) {
    memcpy(mn2 + (size_t)s * nvalid * d, mn + (size_t)s * lp * d, (size_t)nvalid * d * 4);
    memcpy(mx2 + (size_t)s * nvalid * d, mx + (size_t)s * lp * d, (size_t)nvalid * d * 4);
  }
  void *dmn2 = dstore(mn2, pn2), *dmx2 = dstore(mx2, pn2);
  float *ds2 = dalloc(sn2 * 4);
  check(gpu->page_scores(dq, nseq, qh, kvh, per_qhead, dmn2, dmx2, nvalid, nvalid, d, ds2), "gpu page_scores");
  dread(gs2, ds2, sn2 * 4);
  for (int64_t l = 0; l < nl; l++)
    if (memcmp(gs + l * lp, gs2 + l * nvalid, (size_t)nvalid * 4))
      fail_msg("page_scores: list %lld: other bits with lp = nvalid", (long long)l);
  fprintf(stderr, "# page_scores d%d per_qhead %d: %lld lists x %lld pages: max |gpu - cpu| / "
          "sum|terms| %.1e; bit-identical on repeat, with another nvalid and another lp\n", d,
          per_qhead, (long long)nl, (long long)nvalid, worst);
  gpu->free(dmn), gpu->free(dmx), gpu->free(dq), gpu->free(ds), gpu->free(dmn2), gpu->free(dmx2);
  gpu->free(ds2);
  free(mn), free(mx), free(q), free(cs), free(gs), free(gs2), free(mn2), free(mx2);
}

static void test_page_scores(void **state) {
  (void)state;
  scores_case(128, 0);
  scores_case(128, 1);
  scores_case(64, 0);
  scores_case(64, 1);
}

/* ---- page_topk ----------------------------------------------------------------------------- */

static void topk_case(int64_t nlists, int64_t lp, int64_t nvalid, int k, int ties) {
  const size_t sn = (size_t)nlists * lp, on = (size_t)nlists * k;
  float *s = xmalloc(sn * 4);
  for (size_t i = 0; i < sn; i++) {
    if (ties) {
      const int64_t r = rnd_below(40);
      s[i] = r == 0 ? -INFINITY : r == 1 ? 0.0f : r == 2 ? -0.0f : (float)(rnd_below(24) - 12) * 0.5f;
    } else {
      s[i] = uni() * 100.0f;
    }
  }
  int32_t *crow = xmalloc(on * 4), *clen = xmalloc(on * 4);
  float *ccand = xmalloc(on * 4);
  check(cpu->page_topk(s, nlists, lp, nvalid, k, crow, clen, ccand), "cpu page_topk");
  float *ds = dbytes(s, sn * 4), *dcand = dalloc(on * 4);
  int32_t *drow = dalloc(on * 4), *dlen = dalloc(on * 4);
  poison(drow, on * 4), poison(dlen, on * 4), poison(dcand, on * 4);
  check(gpu->page_topk(ds, nlists, lp, nvalid, k, drow, dlen, dcand), "gpu page_topk");
  int32_t *grow = xmalloc(on * 4), *glen = xmalloc(on * 4);
  float *gcand = xmalloc(on * 4);
  dread(grow, drow, on * 4), dread(glen, dlen, on * 4), dread(gcand, dcand, on * 4);
  for (size_t i = 0; i < on; i++)
    if (grow[i] != crow[i] || glen[i] != clen[i] || memcmp(&gcand[i], &ccand[i], 4))
      fail_msg("page_topk (%lld lists, nvalid %lld, k %d, %s): list %zu slot %zu: gpu (%d, %d, "
               "%g) cpu (%d, %d, %g)", (long long)nlists, (long long)nvalid, k,
               ties ? "ties" : "distinct", i / k, i % k, grow[i], glen[i], gcand[i], crow[i],
               clen[i], ccand[i]);
  fprintf(stderr, "# page_topk %lld lists x %lld of %lld pages, k %d, %s: equal to the CPU\n",
          (long long)nlists, (long long)nvalid, (long long)lp, k, ties ? "planted ties" : "distinct");
  gpu->free(ds), gpu->free(dcand), gpu->free(drow), gpu->free(dlen);
  free(s), free(crow), free(clen), free(ccand), free(grow), free(glen), free(gcand);
}

static void test_page_topk(void **state) {
  (void)state;
  topk_case(5, 2000, 1900, 100, 0);
  topk_case(3, 2000, 1900, 2500, 0); /* k > nvalid: padding slots */
  topk_case(4, 3000, 3000, 700, 1);
  topk_case(3, 65536 + 37, 65536 + 37, 4096, 0);
  topk_case(2, 70000, 66000, 4096, 1);
  topk_case(2, 20000, 20000, 8192, 1); /* 64 KiB of composites: opt-in shared memory */
  topk_case(2, 100, 0, 10, 0);         /* nothing valid */
  topk_case(33, 64, 64, 1, 1);
}

/* ---- est_colmax ---------------------------------------------------------------------------- */

static void colmax_case(int W, int64_t nk, int round_bf16, float lo, float hi, int plain) {
  const size_t ln = (size_t)W * nk;
  float *L = xmalloc(ln * 4), *gmax = xmalloc((size_t)W * 4), *inv = xmalloc((size_t)W * 4);
  float *cc = xmalloc((size_t)nk * 4), *gc = xmalloc((size_t)nk * 4);
  for (size_t i = 0; i < ln; i++)
    L[i] = !plain && rnd_below(20) == 0 ? -INFINITY : lo + (hi - lo) * (0.5f + 0.5f * uni());
  for (int i = 0; i < W; i++) {
    gmax[i] = plain ? 0.0f : i == 3 ? -INFINITY : uni();
    inv[i] = plain ? 1.0f : 0.5f + 0.75f * (1.0f + uni());
  }
  for (int64_t j = 0; j < nk; j++) cc[j] = gc[j] = plain || rnd_below(2) ? -INFINITY : 0.3f * (1.0f + uni());
  float *dL = dbytes(L, ln * 4);
  check(cpu->est_colmax(L, W, nk, gmax, inv, round_bf16, cc), "cpu est_colmax");
  check(gpu->est_colmax(dL, W, nk, gmax, inv, round_bf16, gc), "gpu est_colmax");
  /* Bits must equal the CPU's. The kernel computes expf as glibc's x86-64 build does (checked
   * on 10^8 arguments against glibc 2.36); a host whose libm rounds a few arguments otherwise
   * shows as rare 1-ulp differences: those are printed and tolerated up to 1 in 10^5 columns. */
  int64_t bad = 0, ulp1 = 0;
  for (int64_t j = 0; j < nk; j++)
    if (memcmp(&gc[j], &cc[j], 4)) {
      int32_t a, b;
      memcpy(&a, &gc[j], 4), memcpy(&b, &cc[j], 4);
      if (a - b == 1 || b - a == 1) ulp1++;
      if (bad++ < 5)
        fprintf(stderr, "# est_colmax: column %lld: gpu %a cpu %a (L[0][j] = %a, expf %a)\n",
                (long long)j, (double)gc[j], (double)cc[j], (double)L[j], (double)expf(L[j]));
    }
  if (bad > ulp1 || (double)bad > 1e-5 * (double)nk)
    fail_msg("est_colmax W %d nk %lld round %d: %lld columns differ from the CPU (%lld by 1 ulp)",
             W, (long long)nk, round_bf16, (long long)bad, (long long)ulp1);
  if (bad)
    fprintf(stderr, "# est_colmax: %lld of %lld columns 1 ulp off the CPU (host libm's expf)\n",
            (long long)bad, (long long)nk);
  fprintf(stderr, "# est_colmax W %d x %lld keys, L in [%g, %g], round_bf16 %d: bits equal the "
          "CPU's\n", W, (long long)nk, lo, hi, round_bf16);
  gpu->free(dL);
  free(L), free(gmax), free(inv), free(cc), free(gc);
}

static void test_est_colmax(void **state) {
  (void)state;
  colmax_case(37, 5003, 0, -40.0f, 0.0f, 0);
  colmax_case(37, 5003, 1, -40.0f, 0.0f, 0);
  colmax_case(300, 1000, 1, -20.0f, 0.0f, 0);
  /* one row, gmax 0, inv 1: colmax = expf(L) itself, 4M arguments down to the underflow */
  colmax_case(1, (int64_t)1 << 22, 0, -105.0f, 1.0f, 1);
  /* an argument where glibc's FMA build rounds differently from the plain operations */
  colmax_case(1, 1, 0, -0x1.f8cbb2p+5f, -0x1.f8cbb2p+5f, 1);
}

/* ---- upload / download --------------------------------------------------------------------- */

static void roundtrip(size_t bytes) {
  unsigned char *h = xmalloc(bytes), *keep = xmalloc(bytes), *back = xmalloc(bytes);
  for (size_t i = 0; i < bytes; i++) keep[i] = h[i] = (unsigned char)sr_test_next(&rng);
  void *d = dalloc(bytes);
  check(gpu->upload(d, h, bytes), "upload");
  memset(h, 0, bytes); /* the caller may reuse its buffer at once */
  free(h);
  memset(back, 0, bytes);
  dread(back, d, bytes);
  assert_memory_equal(back, keep, bytes);
  gpu->free(d);
  free(keep), free(back);
}

static void test_upload_download(void **state) {
  (void)state;
  roundtrip(12345 + (size_t)rnd_below(1000));
  roundtrip(1);
  roundtrip(((size_t)20 << 20) + 3); /* past the staged size: a direct copy */
  for (int i = 0; i < 9; i++) roundtrip(1000 + (size_t)rnd_below(100000)); /* the staging ring */
  check(gpu->upload(NULL, NULL, 0), "upload of 0 bytes");
  check(gpu->download(NULL, NULL, 0), "download of 0 bytes");
  fprintf(stderr, "# upload/download: round trips of 1 B .. 20 MiB equal\n");
}

/* ---- speed --------------------------------------------------------------------------------- */

#ifdef SR_CUDA
static float time_decode(const sr_decode_args *a, int iters) {
  cudaStream_t st = sr__cuda_compute_stream();
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; i++) check(gpu->decode_fwd(a), "decode_fwd (warm-up)");
  cudaEventRecord(e0, st);
  for (int i = 0; i < iters; i++) check(gpu->decode_fwd(a), "decode_fwd");
  cudaEventRecord(e1, st);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / iters;
}

/* decode_fwd at 128K tokens: batch 1, 32 q-heads over 8 kv-heads, d 128, every row listed as
 * 8192 shared entries of 16 rows; bytes = K + V of every row. Against cudaMemcpy D2D (read +
 * write). Printed, not asserted. */
static void test_decode_speed(void **state) {
  (void)state;
  const int qh = 32, kvh = 8, d = 128;
  const int64_t seg_rows = 131072, nent = seg_rows / 16;
  const size_t kvn = (size_t)kvh * seg_rows * d, chunk = (size_t)1 << 22;
  float *h = xmalloc(chunk * 4);
  for (size_t i = 0; i < chunk; i++) h[i] = uni();
  void *dk = dalloc(kvn * 2), *dv = dalloc(kvn * 2), *dc = dalloc(kvn * 2);
  for (size_t off = 0; off < kvn; off += chunk) {
    const size_t n = kvn - off < chunk ? kvn - off : chunk;
    check(gpu->store((char *)dk + off * 2, h, n), "store K");
    check(gpu->store((char *)dv + off * 2, h, n), "store V");
  }
  int32_t *row = xmalloc((size_t)nent * 4), *len = xmalloc((size_t)nent * 4);
  for (int64_t e = 0; e < nent; e++) row[e] = (int32_t)(16 * e), len[e] = 16;
  float *q = xmalloc((size_t)qh * d * 4);
  for (int i = 0; i < qh * d; i++) q[i] = uni();
  float *dq = dbytes(q, (size_t)qh * d * 4), *dout = dalloc((size_t)qh * d * 4), *dlse = dalloc(qh * 4);
  int32_t *drow = dbytes(row, (size_t)nent * 4), *dlen = dbytes(len, (size_t)nent * 4);
  sr_decode_args a = {.nseq = 1, .q_heads = qh, .kv_heads = kvh, .d = d, .per_qhead = 0, .q = dq,
                      .k = dk, .v = dv, .seg_rows = seg_rows, .own_stride = 0, .nshared = nent,
                      .shared_row = drow, .shared_len = dlen, .scale = 1.0f / sqrtf((float)d),
                      .out = dout, .lse = dlse};
  const double bytes = 2.0 * (double)kvn * 2.0;
  float ms[2], ms1[2];
  float *ho[2], *hl[2];
  for (int kn = 0; kn < 2; kn++) {
    set_kernel(kernels_df[kn]);
    a.per_qhead = 0;
    ms[kn] = time_decode(&a, 20);
    ho[kn] = xmalloc((size_t)qh * d * 4), hl[kn] = xmalloc((size_t)qh * 4);
    dread(ho[kn], dout, (size_t)qh * d * 4);
    dread(hl[kn], dlse, (size_t)qh * 4);
    a.per_qhead = 1;
    ms1[kn] = time_decode(&a, 20);
  }
  unsetenv("SR_DECODE_KERNEL");
  /* the two kernels agree at this shape too (rows of 128K keys, 16 entries per warp) */
  for (int r = 0; r < qh; r++) {
    double ref[128];
    for (int x = 0; x < d; x++) ref[x] = ho[0][r * d + x];
    const double e = row_err(ho[1] + r * d, ref, d);
    const double el = fabs((double)hl[1][r] - (double)hl[0][r]) / fmax(1.0, fabs((double)hl[0][r]));
    if (!(e <= OUT_TOL_BF16) || !(el <= LSE_TOL))
      fail_msg("decode 128K: head %d: mma vs simt out err %.2e, lse %.6f vs %.6f", r, e, hl[1][r],
               hl[0][r]);
  }
  /* the copy ceiling */
  cudaStream_t st = sr__cuda_compute_stream();
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpyAsync(dc, dk, kvn * 2, cudaMemcpyDeviceToDevice, st);
  cudaEventRecord(e0, st);
  for (int i = 0; i < 10; i++) cudaMemcpyAsync(dc, i % 2 ? dv : dk, kvn * 2, cudaMemcpyDeviceToDevice, st);
  cudaEventRecord(e1, st);
  cudaEventSynchronize(e1);
  float cms = 0;
  cudaEventElapsedTime(&cms, e0, e1);
  cms /= 10;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double copy_bw = 2.0 * (double)kvn * 2.0 / (cms * 1e-3) / 1e9;
  for (int kn = 0; kn < 2; kn++) {
    const double bw = bytes / (ms[kn] * 1e-3) / 1e9, bw1 = bytes / (ms1[kn] * 1e-3) / 1e9;
    fprintf(stderr, "# decode_fwd [%-4s] 128K tokens, batch 1, 32/8 heads, d 128: %.1f us = %.0f "
            "GB/s (%.0f%% of the D2D copy's %.0f GB/s); per q-head lists: %.1f us = %.0f GB/s of "
            "K/V\n", kernels_df[kn], ms[kn] * 1e3, bw, 100.0 * bw / copy_bw, copy_bw,
            ms1[kn] * 1e3, bw1);
    free(ho[kn]), free(hl[kn]);
  }
  gpu->free(dk), gpu->free(dv), gpu->free(dc), gpu->free(dq), gpu->free(dout), gpu->free(dlse);
  gpu->free(drow), gpu->free(dlen);
  free(h), free(row), free(len), free(q);
}
#endif

int main(void) {
  gpu = sr_backend_cuda(0);
  if (!gpu) {
    fprintf(stderr, "# test_gpu_decode: skipped: %s\n", sr_last_error());
    return 77;
  }
  cpu = sr_backend_cpu();
  rng = sr_test_seed("test_gpu_decode");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_upload_download), cmocka_unit_test(test_decode_fwd),
      cmocka_unit_test(test_page_minmax),     cmocka_unit_test(test_page_scores),
      cmocka_unit_test(test_page_topk),       cmocka_unit_test(test_est_colmax),
#ifdef SR_CUDA
      cmocka_unit_test(test_decode_speed),
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
