/*
 * vs_common.c — the estimate, pick and index conversion that Vertical-Slash and FlexPrefill
 * share (sr_vs.h, docs/METHODS.md §2.1-2.2).
 */
#include "sr_vs.h"
#include "sr_internal.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void sr_vs_est_free(sr_vs_est *est) {
  sr__free(est->vert);
  sr__free(est->slash);
  *est = (sr_vs_est){0};
}

void sr_vs_pattern_free(sr_vs_pattern *pt) {
  for (int h = 0; pt->v && h < pt->q_heads; h++) {
    sr__free(pt->v[h]);
    sr__free(pt->s[h]);
  }
  sr__free(pt->v);
  sr__free(pt->s);
  sr__free(pt->nv);
  sr__free(pt->ns);
  *pt = (sr_vs_pattern){0};
}

/* ---- the estimate (collective) ----------------------------------------------------------- */

#define MPI_TRY(call, what) sr__mpi_check((call), (what), __FILE__, __LINE__)

/* The score buffer (W x local keys, backend memory: 128 MB at 128K tokens on one GPU) is kept
 * from one layer to the next: allocating it per layer cost as much as a third of the
 * estimate on a GPU. Released at exit. */
static struct {
  const sr_backend *be;
  void *p;
  size_t bytes;
} score_cache;

static void score_cache_release(void) {
  if (score_cache.p) score_cache.be->free(score_cache.p);
  score_cache.p = NULL;
  score_cache.bytes = 0;
}

static sr_status score_buffer(const sr_backend *be, size_t bytes, float **L) {
  if (score_cache.p && score_cache.be == be && score_cache.bytes >= bytes) {
    *L = score_cache.p;
    return SR_OK;
  }
  static int registered = 0;
  if (!registered) registered = atexit(score_cache_release) == 0;
  score_cache_release();
  SR_TRY(be->alloc(bytes, &score_cache.p));
  score_cache.be = be;
  score_cache.bytes = bytes;
  *L = score_cache.p;
  return SR_OK;
}

sr_status sr_vs_estimate(const sr_method_in *in, int W_cfg, int round_bf16, sr_vs_est *est) {
  const sr_plan *p = in->p;
  const sr_backend *be = in->be;
  const int64_t n = p->n, nl = p->n_local, d = p->d;
  const int H = p->q_heads, W = (int)(W_cfg < n ? W_cfg : n);
  const int64_t q0 = n - W; /* first window query */
  const size_t eb = be->elem_bytes;
  *est = (sr_vs_est){.q_heads = H, .W = W, .n = n};
  const double t_all = sr__now();
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  const int nruns = sr_plan_runs(p, p->rank, starts);
  const int64_t run_len = p->chunk_tokens;
  float *qw = NULL, *qwd = NULL, *L = NULL, *mx = NULL, *gmax = NULL, *inv = NULL;
  int64_t *sums = NULL, *tot = NULL, *vloc = NULL;
  sr_status st = SR_OK;

  /* Every MPI count below is an int. */
  if ((int64_t)H * W * d > INT_MAX || (int64_t)H * n > INT_MAX)
    st = sr__seterr(SR_ERR_SHAPE, "the estimate of %d q-heads x %lld tokens (window %d) exceeds "
                    "32-bit MPI counts", H, (long long)n, W);
  if (st == SR_OK) {
    qw = sr__calloc((size_t)H * W * d, sizeof(float));
    mx = sr__alloc((size_t)W * sizeof(float));
    gmax = sr__alloc((size_t)W * sizeof(float));
    inv = sr__alloc((size_t)W * sizeof(float));
    sums = sr__alloc((size_t)W * sizeof(int64_t));
    tot = sr__alloc((size_t)W * sizeof(int64_t));
    vloc = sr__alloc((size_t)nl * sizeof(int64_t));
    /* calloc: fresh zero pages from the system, not a second pass over q_heads x N int64. */
    est->slash = calloc((size_t)H * n, sizeof(int64_t));
    /* Each rank fills the positions it owns; the rest stay 0 for the sum over ranks. */
    est->vert = p->nranks > 1 ? calloc((size_t)H * n, sizeof(int64_t))
                              : malloc((size_t)H * n * sizeof(int64_t));
    if (!qw || !mx || !gmax || !inv || !sums || !tot || !vloc || !est->slash || !est->vert)
      st = sr__seterr(SR_ERR_NOMEM, "out of memory for the Vertical-Slash estimate");
  }
  if (st == SR_OK) st = be->alloc((size_t)W * d * sizeof(float), (void **)&qwd);
  if (st == SR_OK) st = score_buffer(be, (size_t)W * nl * sizeof(float), &L);
  sr__prof("estimate: alloc", t_all);
  double tp = sr__now();
  /* The window rows this rank holds (a run is consecutive positions). */
  for (int c = 0; c < nruns && st == SR_OK; c++) {
    const int64_t lo = starts[c] > q0 ? starts[c] : q0;
    const int64_t hi = starts[c] + run_len < n ? starts[c] + run_len : n;
    if (lo >= hi) continue;
    const int64_t r0 = c * run_len + (lo - starts[c]);
    for (int h = 0; h < H && st == SR_OK; h++)
      st = be->unstore(qw + ((size_t)h * W + (size_t)(lo - q0)) * d,
                       (const char *)in->q + ((size_t)h * nl + (size_t)r0) * d * eb,
                       (size_t)(hi - lo) * d);
  }
  st = sr_comm_agree(in->comm, st);
  /* Each window element is nonzero on exactly one rank: the sum is exact. */
  if (st == SR_OK)
    st = sr_comm_agree(in->comm, MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, qw, (int)(H * W * d),
                                                       MPI_FLOAT, MPI_SUM, in->comm),
                                         "MPI_Allreduce(window queries)"));
  sr__prof("estimate: alloc + window rows", tp);
  tp = sr__now();
  const float scale = 1.0f / sqrtf((float)d);
  for (int h = 0; h < H && st == SR_OK; h++) {
    const void *k = (const char *)in->k + (size_t)(h / p->group) * nl * d * eb;
    st = be->copy_in(qwd, qw + (size_t)h * W * d, (size_t)W * d);
    if (st == SR_OK) st = be->est_scores(qwd, W, q0, k, nl, starts, run_len, (int)d, scale, L);
    if (st == SR_OK) st = be->est_rowmax(L, W, nl, mx);
    st = sr_comm_agree(in->comm, st);
    if (st == SR_OK)
      st = sr_comm_agree(in->comm, MPI_TRY(MPI_Allreduce(mx, gmax, W, MPI_FLOAT, MPI_MAX,
                                                         in->comm), "MPI_Allreduce(row max)"));
    if (st == SR_OK) st = be->est_rowsum(L, W, nl, gmax, sums);
    st = sr_comm_agree(in->comm, st);
    if (st == SR_OK)
      st = sr_comm_agree(in->comm, MPI_TRY(MPI_Allreduce(sums, tot, W, MPI_INT64_T, MPI_SUM,
                                                         in->comm), "MPI_Allreduce(row sum)"));
    if (st != SR_OK) break;
    for (int i = 0; i < W; i++)
      inv[i] = tot[i] > 0 ? (float)(4294967296.0 / (double)tot[i]) : 0.0f;
    memset(vloc, 0, (size_t)nl * sizeof(int64_t));
    st = be->est_accum(L, W, nl, q0, starts, run_len, gmax, inv, round_bf16, n, vloc,
                       est->slash + (size_t)h * n);
    for (int c = 0; c < nruns && st == SR_OK; c++) /* local rows -> global positions */
      memcpy(est->vert + (size_t)h * n + starts[c], vloc + (size_t)c * run_len,
             (size_t)run_len * sizeof(int64_t));
    st = sr_comm_agree(in->comm, st);
  }
  sr__prof("estimate: per-head ops", tp);
  tp = sr__now();
  /* Verticals: each position was filled by its owner only (zeros elsewhere); slashes: every
   * rank has a part of each offset. Integer sums: exact in any order. One rank: nothing to do. */
  if (st == SR_OK && p->nranks > 1)
    st = sr_comm_agree(in->comm, MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, est->vert, (int)(H * n),
                                                       MPI_INT64_T, MPI_SUM, in->comm),
                                         "MPI_Allreduce(vertical sums)"));
  if (st == SR_OK && p->nranks > 1)
    st = sr_comm_agree(in->comm, MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, est->slash, (int)(H * n),
                                                       MPI_INT64_T, MPI_SUM, in->comm),
                                         "MPI_Allreduce(slash sums)"));
  sr__prof("estimate: reductions", tp);
  tp = sr__now();
  be->free(qwd); /* L stays in score_cache */
  sr__free(qw);
  sr__free(mx);
  sr__free(gmax);
  sr__free(inv);
  sr__free(sums);
  sr__free(tot);
  sr__free(vloc);
  if (st != SR_OK) sr_vs_est_free(est);
  sr__prof("estimate: free", tp);
  return st;
}

/* ---- top-k, cover, pick ---------------------------------------------------------------------- */

/* i ranks before j: larger value, then lower index. */
static inline int before(const int64_t *x, int32_t i, int32_t j) {
  return x[i] > x[j] || (x[i] == x[j] && i < j);
}

static void sift(const int64_t *x, int32_t *h, int64_t p, int64_t len) {
  for (;;) {
    int64_t w = p, c1 = 2 * p + 1, c2 = c1 + 1;
    if (c1 < len && before(x, h[w], h[c1])) w = c1;
    if (c2 < len && before(x, h[w], h[c2])) w = c2;
    if (w == p) return;
    int32_t t = h[p];
    h[p] = h[w];
    h[w] = t;
    p = w;
  }
}

void sr_vs_topk(const int64_t *x, int64_t n, int64_t k, int32_t *idx) {
  if (k <= 0) return;
  /* A heap of the best k so far whose root is the worst of them. */
  for (int64_t i = 0; i < k; i++) idx[i] = (int32_t)i;
  for (int64_t q = k / 2 - 1; q >= 0; q--) sift(x, idx, q, k);
  for (int64_t i = k; i < n; i++)
    if (before(x, (int32_t)i, idx[0])) {
      idx[0] = (int32_t)i;
      sift(x, idx, 0, k);
    }
  for (int64_t end = k - 1; end > 0; end--) {
    int32_t t = idx[0];
    idx[0] = idx[end];
    idx[end] = t;
    sift(x, idx, 0, end);
  }
}

static int cmp_desc_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x < y) - (x > y);
}

int64_t sr_flex_cover(const int64_t *x, int64_t n, double total, double alpha) {
  if (n <= 0) return 0;
  int64_t *s = malloc((size_t)n * sizeof *s);
  if (!s) return n; /* no memory: the safe answer is everything */
  memcpy(s, x, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_desc_i64);
  double run = 0;
  int64_t cnt = 0;
  for (int64_t i = 0; i < n; i++) {
    run += (double)s[i] / total;
    if (run <= alpha) cnt++;
    else break;
  }
  free(s);
  return cnt + 1 < n ? cnt + 1 : n;
}

static int cmp_asc_i32(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}
static int cmp_desc_i32(const void *a, const void *b) { return cmp_asc_i32(b, a); }

sr_status sr_vs_pick(const int64_t *vert, const int64_t *slash, int64_t n, int64_t V, int64_t S,
                     int32_t *v, int64_t *nv, int32_t *s, int64_t *ns) {
  V = V < n ? V : n;
  S = S < n ? S : n;
  int64_t *x = malloc((size_t)n * sizeof *x);
  if (!x) return SR_ERR_NOMEM;
  memcpy(x, vert, (size_t)n * sizeof *x);
  for (int64_t j = 0; j < 4 && j < n; j++) x[j] = INT64_MAX; /* the first 4 tokens */
  sr_vs_topk(x, n, V, v);
  qsort(v, (size_t)V, sizeof *v, cmp_asc_i32);
  memcpy(x, slash, (size_t)n * sizeof *x);
  for (int64_t o = 0; o < 64 && o < n; o++) x[o] = INT64_MAX; /* the 64 most local diagonals */
  sr_vs_topk(x, n, S, s);
  qsort(s, (size_t)S, sizeof *s, cmp_desc_i32);
  free(x);
  *nv = V;
  *ns = S;
  return SR_OK;
}

/* ---- index conversion -------------------------------------------------------------------- */

void sr_vs_convert(int64_t qs, int bq, int bk, const int32_t *s, int64_t ns, const int32_t *v,
                   int64_t nv, int32_t *tiles, int64_t *ntiles, int32_t *cols, int64_t *ncols) {
  const int64_t qe = qs + bq;
  int64_t nt = 0, lo = -1, hi = -2;
  /* Offsets descending = key ranges ascending: merge touching block ranges as they come. */
  for (int64_t i = 0; i < ns; i++) {
    const int64_t o = s[i];
    if (o >= qe) continue; /* the diagonal lies before key 0 for every row of the block */
    const int64_t klo = qs - o > 0 ? qs - o : 0, khi = qe - 1 - o;
    const int64_t blo = klo / bk, bhi = khi / bk;
    if (hi < lo) {
      lo = blo, hi = bhi;
    } else if (blo <= hi + 1) {
      if (bhi > hi) hi = bhi;
    } else {
      for (int64_t b = lo; b <= hi; b++) tiles[nt++] = (int32_t)b;
      lo = blo, hi = bhi;
    }
  }
  if (hi >= lo)
    for (int64_t b = lo; b <= hi; b++) tiles[nt++] = (int32_t)b;
  /* Columns: before the block and outside every tile (both lists ascending). */
  int64_t nc = 0, t = 0;
  for (int64_t i = 0; i < nv; i++) {
    const int64_t c = v[i];
    if (c >= qs) break;
    const int64_t b = c / bk;
    while (t < nt && tiles[t] < b) t++;
    if (t < nt && tiles[t] == b) continue;
    cols[nc++] = (int32_t)c;
  }
  *ntiles = nt;
  *ncols = nc;
}

sr_status sr_vs_select(const sr_plan *p, const sr_vs_pattern *pt, sr_selection *sel) {
  double tp = sr__now();
  SR_TRY(sr__selection_alloc_rows(p, sel));
  const int64_t nqb = p->nqb_local, rows = (int64_t)p->q_heads * nqb;
  int64_t maxv = 1;
  for (int h = 0; h < p->q_heads; h++) maxv = pt->nv[h] > maxv ? pt->nv[h] : maxv;
  sel->vrow_ptr = sr__calloc((size_t)rows + 1, sizeof(int64_t));
  int64_t *vcnt = sel->vrow_ptr;
  if (!vcnt) {
    sr_selection_free(sel);
    return sr__seterr(SR_ERR_NOMEM, "out of memory for the Vertical-Slash selection");
  }
  bool oom = false;
  /* Pass 1 counts, pass 2 fills: the conversion is cheap next to a second copy of the lists. */
  for (int pass = 0; pass < 2 && !oom; pass++) {
#pragma omp parallel
    {
      int32_t *tb = pass == 0 ? malloc((size_t)p->nkb_global * sizeof *tb) : NULL;
      int32_t *cb = pass == 0 ? malloc((size_t)maxv * sizeof *cb) : NULL;
      if (pass == 0 && (!tb || !cb)) {
#pragma omp atomic write
        oom = true;
      }
#pragma omp for schedule(dynamic, 16)
      for (int64_t r = 0; r < rows; r++) {
        if (pass == 0 && (!tb || !cb)) continue;
        const int h = (int)(r / nqb);
        const int64_t qs = sr_plan_qblock_global(p, p->rank, r % nqb) * p->bq;
        int64_t nt, nc;
        if (pass == 0) {
          sr_vs_convert(qs, p->bq, p->bk, pt->s[h], pt->ns[h], pt->v[h], pt->nv[h], tb, &nt, cb,
                        &nc);
          sel->row_ptr[r + 1] = nt;
          vcnt[r + 1] = nc;
        } else {
          sr_vs_convert(qs, p->bq, p->bk, pt->s[h], pt->ns[h], pt->v[h], pt->nv[h],
                        sel->col + sel->row_ptr[r], &nt, sel->vcol + sel->vrow_ptr[r], &nc);
        }
      }
      free(tb);
      free(cb);
    }
    if (pass == 0 && !oom) {
      double pairs = 0;
      for (int64_t r = 0; r < rows; r++) {
        pairs += (double)sel->row_ptr[r + 1] * p->bq * p->bk + (double)vcnt[r + 1] * p->bq;
        sel->row_ptr[r + 1] += sel->row_ptr[r];
        vcnt[r + 1] += vcnt[r];
      }
      sel->paper_pairs = pairs;
      sel->nnz = sel->row_ptr[rows];
      sel->nv = vcnt[rows];
      sel->col = sr__alloc((size_t)(sel->nnz > 0 ? sel->nnz : 1) * sizeof(int32_t));
      sel->vcol = sr__alloc((size_t)(sel->nv > 0 ? sel->nv : 1) * sizeof(int32_t));
      if (!sel->col || !sel->vcol) oom = true;
    }
  }
  if (oom) {
    sr_selection_free(sel);
    return sr__seterr(SR_ERR_NOMEM, "out of memory for the Vertical-Slash selection");
  }
  double sv = 0, ss = 0;
  for (int h = 0; h < p->q_heads; h++) sv += (double)pt->nv[h], ss += (double)pt->ns[h];
  sel->budget_v = sv / p->q_heads;
  sel->budget_s = ss / p->q_heads;
  sr__prof("select: conversion", tp);
  return SR_OK;
}

double sr_vs_sparsity(const sr_plan *p, const sr_selection *sel, double all) {
  (void)sel;
  return 1.0 - all / ((double)p->q_heads * (double)p->n * (double)(p->n + 1) / 2.0);
}

/* ---- budgets from the paper's Table 3 ------------------------------------------------------ */

static const double grid_sp[10] = {0.95, 0.933, 0.9, 0.867, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3};
static const double vs_len[4] = {16384, 32768, 65536, 128000};
static const double vs_tab[4][10] = {
    {164, 240, 315, 400, 448, 576, 768, 1024, 1536, 2304},
    {290, 384, 448, 576, 704, 1024, 1536, 2304, 3584, 4608},
    {400, 448, 544, 640, 960, 1280, 2304, 4096, 6144, 8192},
    {480, 768, 1024, 1536, 2048, 3584, 5632, 10240, 13312, 18432}};

/* The budget of one length row at sparsity sp: linear between grid points; outside the grid
 * the budget fraction scales with the density (1 - sp). */
static double row_budget(const double *row, double sp) {
  if (sp >= grid_sp[0]) return row[0] * (1 - sp) / (1 - grid_sp[0]);
  if (sp <= grid_sp[9]) return row[9] * (1 - sp) / (1 - grid_sp[9]);
  int i = 0;
  while (!(sp <= grid_sp[i] && sp >= grid_sp[i + 1])) i++;
  const double t = (grid_sp[i] - sp) / (grid_sp[i] - grid_sp[i + 1]);
  return row[i] + t * (row[i + 1] - row[i]);
}

int64_t sr_vs_budget(int64_t n, double sp) {
  double b;
  const double ln = (double)n;
  if (ln <= vs_len[0]) b = row_budget(vs_tab[0], sp) * ln / vs_len[0];
  else if (ln >= vs_len[3]) b = row_budget(vs_tab[3], sp) * ln / vs_len[3];
  else {
    int i = 0;
    while (ln > vs_len[i + 1]) i++;
    const double t = log(ln / vs_len[i]) / log(vs_len[i + 1] / vs_len[i]);
    b = row_budget(vs_tab[i], sp) + t * (row_budget(vs_tab[i + 1], sp) - row_budget(vs_tab[i], sp));
  }
  int64_t v = (int64_t)llround(b);
  return v < 64 ? 64 : v;
}

static const double flex_len[3] = {16384, 32768, 65536};
static const double flex_tab[3][7][2] = {
    {{0, 164}, {0, 240}, {0, 315}, {0, 400}, {.55, 512}, {.71, 512}, {.88, 512}},
    {{0, 290}, {0, 384}, {.45, 512}, {.6, 512}, {.7, 512}, {.8, 512}, {.92, 512}},
    {{0, 400}, {.45, 512}, {.55, 512}, {.7, 512}, {.77, 512}, {.85, 512}, {.94, 512}}};

void sr_flex_params(int64_t n, double sp, double *alpha, int64_t *min_budget) {
  /* The nearest length (in log n) and the nearest of the 7 sparsities of the table; the floor
   * scales with n / length so that its fraction of the sequence stays the table's. */
  int li = 0;
  for (int i = 1; i < 3; i++)
    if (fabs(log((double)n / flex_len[i])) < fabs(log((double)n / flex_len[li]))) li = i;
  int si = 0;
  for (int i = 1; i < 7; i++)
    if (fabs(sp - grid_sp[i]) < fabs(sp - grid_sp[si])) si = i;
  *alpha = flex_tab[li][si][0];
  int64_t mb = (int64_t)llround(flex_tab[li][si][1] * (double)n / flex_len[li]);
  *min_budget = mb < 64 ? 64 : mb;
}
