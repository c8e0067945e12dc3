/*
 * cpu_backend.c — the CPU backend table and its small operations: log-sum-exp merge, mean
 * pooling, block scores, top-k, and the thread count. Attention itself is in cpu_attn.c.
 *
 * Threading: every op that is called once for a large problem (merge, pool_mean,
 * block_scores, attn_fwd) opens its own OpenMP team sized by sr_cpu_set_threads; topk is
 * serial because the runtime calls it from inside its own parallel loop, one row per thread.
 * No op keeps state between calls, so the table may be used from several threads at once.
 */
#include "cpu_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* 0 = OpenMP default. Set once at start-up, before the kernels run (not synchronised). */
static int sr__cpu_nthreads = 0;

/* Also the default team of every other parallel region started from this thread (the
 * runtime's generation, verification, work lists and checksums), so that no region uses more
 * threads than the rank was given. */
void sr_cpu_set_threads(int threads) {
  sr__cpu_nthreads = threads > 0 ? threads : 0;
  if (threads > 0) omp_set_num_threads(threads);
}

int sr__cpu_threads(void) {
  return sr__cpu_nthreads > 0 ? sr__cpu_nthreads : omp_get_max_threads();
}

/* Below this many floats a loop is not worth waking a thread team for. */
#define SR_CPU_PAR_MIN ((int64_t)1 << 15)

static int team_for(int64_t work_floats, int64_t tasks) {
  if (work_floats < SR_CPU_PAR_MIN || tasks < 2) return 1;
  int nt = sr__cpu_threads();
  return (int64_t)nt > tasks ? (int)tasks : nt;
}

/*
 * Merge: out = (e^la * a + e^lb * b) / (e^la + e^lb), lse = log(e^la + e^lb), computed
 * relative to max(la, lb) so nothing overflows. A -inf side contributes nothing, which is
 * handled by branches instead of arithmetic: exp(-inf - -inf) would be NaN.
 */
static sr_status cpu_merge(float *acc_out, float *acc_lse, const float *part_out,
                           const float *part_lse, int64_t rows, int d) {
  if (rows < 0 || d <= 0)
    return sr__seterr(SR_ERR_SHAPE, "merge: bad shape rows=%lld d=%d", (long long)rows, d);
  if (rows == 0) return SR_OK;
  if (!acc_out || !acc_lse || !part_out || !part_lse)
    return sr__seterr(SR_ERR_INTERNAL, "merge: NULL buffer");
#pragma omp parallel for schedule(static) num_threads(team_for(rows * d, rows))
  for (int64_t r = 0; r < rows; r++) {
    float *restrict ao = acc_out + r * d;
    const float *restrict po = part_out + r * d;
    const float la = acc_lse[r], lb = part_lse[r];
    if (lb == -INFINITY) {
      if (la == -INFINITY) /* both empty: the row is (0, -inf) by definition */
        for (int c = 0; c < d; c++) ao[c] = 0.0f;
      continue;
    }
    if (la == -INFINITY) {
      for (int c = 0; c < d; c++) ao[c] = po[c];
      acc_lse[r] = lb;
      continue;
    }
    const double mx = la > lb ? la : lb;
    const double wa = exp((double)la - mx), wb = exp((double)lb - mx), s = wa + wb;
    const float fa = (float)(wa / s), fb = (float)(wb / s);
    for (int c = 0; c < d; c++) ao[c] = fa * ao[c] + fb * po[c];
    acc_lse[r] = (float)(mx + log(s));
  }
  return SR_OK;
}

/* Mean of each block of b rows (the last one over its valid rows only). */
static sr_status cpu_pool_mean(const void *xv, int heads, int64_t n, int d, int b, float *y) {
  if (heads <= 0 || n < 0 || d <= 0 || b <= 0)
    return sr__seterr(SR_ERR_SHAPE, "pool_mean: bad shape heads=%d n=%lld d=%d b=%d", heads,
                      (long long)n, d, b);
  if (n == 0) return SR_OK;
  if (!xv || !y) return sr__seterr(SR_ERR_INTERNAL, "pool_mean: NULL buffer");
  const float *x = xv;
  const int64_t nb = (n + b - 1) / b, tasks = (int64_t)heads * nb;
#pragma omp parallel for schedule(static) num_threads(team_for((int64_t)heads * n * d, tasks))
  for (int64_t t = 0; t < tasks; t++) {
    const int64_t h = t / nb, blk = t % nb;
    const int64_t r0 = blk * b, cnt = n - r0 < b ? n - r0 : b;
    const float *restrict xs = x + ((size_t)h * (size_t)n + (size_t)r0) * (size_t)d;
    float *restrict ys = y + (size_t)t * (size_t)d;
    for (int c = 0; c < d; c++) ys[c] = xs[c];
    for (int64_t i = 1; i < cnt; i++)
      for (int c = 0; c < d; c++) ys[c] += xs[i * d + c];
    const float inv = 1.0f / (float)cnt;
    for (int c = 0; c < d; c++) ys[c] *= inv;
  }
  return SR_OK;
}

/*
 * Block scores s = a . bmat^T. Tasks are (64-column panel, 64-row chunk) pairs; each
 * transposes its panel of bmat into [d][64] lanes and runs the lane-major product into an
 * aligned 64x64 tile, which is then copied into s (whose rows need not be aligned).
 */
#define BS_PANEL 64
static sr_status cpu_block_scores(const float *a, int64_t na, const float *bmat, int64_t nb,
                                  int d, float *s) {
  if (na < 0 || nb < 0 || d <= 0)
    return sr__seterr(SR_ERR_SHAPE, "block_scores: bad shape na=%lld nb=%lld d=%d",
                      (long long)na, (long long)nb, d);
  if (na == 0 || nb == 0) return SR_OK;
  if (!a || !bmat || !s) return sr__seterr(SR_ERR_INTERNAL, "block_scores: NULL buffer");
  const int64_t npan = (nb + BS_PANEL - 1) / BS_PANEL, nchunk = (na + BS_PANEL - 1) / BS_PANEL;
  const int64_t tasks = npan * nchunk;
  int nomem = 0;
#pragma omp parallel num_threads(team_for(na * nb * d / 8, tasks))
  {
    float *bt = sr__alloc((size_t)d * BS_PANEL * sizeof(float));
    float *tile = sr__alloc((size_t)BS_PANEL * BS_PANEL * sizeof(float));
    if (!bt || !tile) {
#pragma omp atomic write
      nomem = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
      if (!bt || !tile) continue;
      const int64_t j0 = (t / nchunk) * BS_PANEL, m0 = (t % nchunk) * BS_PANEL;
      const int64_t nj = nb - j0 < BS_PANEL ? nb - j0 : BS_PANEL;
      const int64_t nm = na - m0 < BS_PANEL ? na - m0 : BS_PANEL;
      const int64_t lanes = sr__cpu_lanes_up(nj);
      sr__cpu_transpose(bmat + j0 * d, nj, d, d, bt, BS_PANEL, lanes, 1.0f, NULL);
      sr__cpu_gemm_lanes(nm, lanes, d, a + m0 * d, d, 1, bt, BS_PANEL, tile, BS_PANEL, NULL,
                         NULL);
      for (int64_t m = 0; m < nm; m++)
        memcpy(s + (m0 + m) * nb + j0, tile + m * BS_PANEL, (size_t)nj * sizeof(float));
    }
    sr__free(bt);
    sr__free(tile);
  }
  if (nomem) return sr__seterr(SR_ERR_NOMEM, "block_scores: out of memory for scratch");
  return SR_OK;
}

/*
 * Top-k. The order: larger value first; equal values (including two +inf or two -inf) by
 * lower index; NaN after every number. It is a strict total order on indices, so the result
 * is unique. Selection keeps the current best k in idx as a heap whose root is the worst of
 * them (O(n log k), no allocation), then heap-sorts idx into best-first order.
 */
static inline int ranks_before(const float *x, int32_t i, int32_t j) {
  const float a = x[i], b = x[j];
  if (a > b) return 1;
  if (a < b) return 0;
  const int anan = a != a, bnan = b != b;
  if (anan != bnan) return bnan; /* a number ranks before NaN */
  return i < j;
}

/* Restores the heap below position p of idx[0..len): parents rank after their children. */
static void sift_down(const float *x, int32_t *idx, int64_t p, int64_t len) {
  for (;;) {
    int64_t worst = p;
    const int64_t c1 = 2 * p + 1, c2 = 2 * p + 2;
    if (c1 < len && ranks_before(x, idx[worst], idx[c1])) worst = c1;
    if (c2 < len && ranks_before(x, idx[worst], idx[c2])) worst = c2;
    if (worst == p) return;
    const int32_t tmp = idx[p];
    idx[p] = idx[worst];
    idx[worst] = tmp;
    p = worst;
  }
}

static sr_status cpu_topk(const float *x, int64_t n, int k, int32_t *idx) {
  if (n < 0 || n > INT32_MAX || k < 0 || k > n)
    return sr__seterr(SR_ERR_SHAPE, "topk: need 0 <= k <= n <= 2^31-1, got k=%d n=%lld", k,
                      (long long)n);
  if (k == 0) return SR_OK;
  if (!x || !idx) return sr__seterr(SR_ERR_INTERNAL, "topk: NULL buffer");
  for (int32_t i = 0; i < k; i++) idx[i] = i;
  for (int64_t p = k / 2 - 1; p >= 0; p--) sift_down(x, idx, p, k);
  for (int64_t i = k; i < n; i++) {
    if (ranks_before(x, (int32_t)i, idx[0])) {
      idx[0] = (int32_t)i;
      sift_down(x, idx, 0, k);
    }
  }
  /* Heap sort: the root (worst remaining) goes to the end, so idx ends best-first. */
  for (int64_t end = k - 1; end > 0; end--) {
    const int32_t tmp = idx[0];
    idx[0] = idx[end];
    idx[end] = tmp;
    sift_down(x, idx, 0, end);
  }
  return SR_OK;
}

/* ---- memory: host memory, fp32 storage, so most of these are copies ---------------------- */

static sr_status cpu_alloc(size_t bytes, void **p) {
  *p = sr__alloc(bytes > 0 ? bytes : 64);
  return *p ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
}

static void cpu_free(void *p) { sr__free(p); }

static sr_status cpu_copy(float *dst, const float *src, size_t n) {
  if (n > 0 && dst != src) memcpy(dst, src, n * sizeof(float));
  return SR_OK;
}

static sr_status cpu_store(void *dst, const float *src, size_t n) { return cpu_copy(dst, src, n); }

static sr_status cpu_gather(void *dst, const void *pool, const int32_t *slots, int64_t n,
                            size_t item_elems) {
  float *d = dst;
  const float *p = pool;
#pragma omp parallel for schedule(static) num_threads(team_for(n * (int64_t)item_elems, n))
  for (int64_t i = 0; i < n; i++)
    memcpy(d + (size_t)i * item_elems, p + (size_t)slots[i] * item_elems,
           item_elems * sizeof(float));
  return SR_OK;
}

static sr_status cpu_sync(void) { return SR_OK; }

static sr_status cpu_unstore(float *dst, const void *src, size_t n) {
  return cpu_copy(dst, src, n);
}

static int cmp_i32(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Block-Sparse rows: force, select with cpu_topk, sort ascending; one row per thread. */
static sr_status cpu_topk_rows(float *s, int64_t rows, int64_t ld, const int64_t *causal,
                               const int32_t *keep, int K, int32_t *idx, int32_t *csr) {
  sr_status st = SR_OK;
#pragma omp parallel for schedule(dynamic, 4) num_threads(team_for(rows * ld, rows))
  for (int64_t i = 0; i < rows; i++) {
    float *row = s + i * ld;
    const int64_t c = causal[i];
    row[0] = INFINITY;
    row[c - 1] = INFINITY;
    if (c >= 2) row[c - 2] = INFINITY;
    int32_t *out = idx + i * K;
    sr_status ts = cpu_topk(row, c, keep[i], out);
    if (ts != SR_OK) {
#pragma omp critical
      st = ts;
      continue;
    }
    qsort(out, (size_t)keep[i], sizeof(int32_t), cmp_i32);
  }
  for (int64_t i = 0, at = 0; csr && st == SR_OK && i < rows; at += keep[i], i++)
    memcpy(csr + at, idx + i * K, (size_t)keep[i] * sizeof(int32_t));
  return st;
}

static const sr_backend sr__cpu_backend = {
    .name = "cpu",
    .elem_bytes = sizeof(float),
    .alloc = cpu_alloc,
    .free = cpu_free,
    .store = cpu_store,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .gather = cpu_gather,
    .unstore = cpu_unstore,
    .sync = cpu_sync,
    .topk_rows = cpu_topk_rows,
    .attn_fwd = sr__cpu_attn_fwd,
    .merge = cpu_merge,
    .pool_mean = cpu_pool_mean,
    .block_scores = cpu_block_scores,
    .topk = cpu_topk,
    .est_scores = sr__cpu_est_scores,
    .est_rowmax = sr__cpu_est_rowmax,
    .est_rowsum = sr__cpu_est_rowsum,
    .est_accum = sr__cpu_est_accum,
    .decode_fwd = sr__cpu_decode_fwd,
    .page_minmax = sr__cpu_page_minmax,
    .page_scores = sr__cpu_page_scores,
    .page_topk = sr__cpu_page_topk,
    .est_colmax = sr__cpu_est_colmax,
    .upload = sr__cpu_copy_bytes,
    .download = sr__cpu_copy_bytes,
};

/* SR_CPU_ATTN_LISTS=1 (a test hook, docs/DESIGN.md "Device work lists"): the same table with
 * attn_lists (cpu_lists.c), so that CPU ranks take the runtime's device-list path. */
const sr_backend *sr_backend_cpu(void) {
  static sr_backend with_lists;
  const char *e = getenv("SR_CPU_ATTN_LISTS");
  if (!e || !*e || strcmp(e, "0") == 0) return &sr__cpu_backend;
  if (!with_lists.attn_lists) {
    with_lists = sr__cpu_backend;
    with_lists.attn_lists = sr__cpu_attn_lists;
  }
  return &with_lists;
}
