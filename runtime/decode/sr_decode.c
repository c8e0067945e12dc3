/*
 * sr_decode.c — the decode loop of one layer (sr_decode.h): the cache, the preparation of each
 * method, the steps, the cross-rank merge and the quality check against exact dense decode.
 *
 * A step on one rank, for every sequence at once:
 *   1. the token's page summary is refreshed on the page's owner (quest);
 *   2. selection: quest scores the rank's valid pages and keeps its local top-k (page_topk);
 *      with P > 1 the candidates (score, global page id) are all-gathered and every rank takes
 *      the same exact global top-k; snapkv / ada_snapkv use their kept tokens (fixed at the end
 *      of the prompt) and every decode token; dense uses every row;
 *   3. decode_fwd over the rank's share of the keys: partial (out, lse) per (sequence, q-head);
 *   4. P > 1: the partials are gathered on rank 0 and merged in rank order (log-sum-exp).
 * The new token's K/V are input (a pure function of the config), so they are staged in their
 * owner's decode pages when the layer starts; a step makes its token visible by extending the
 * current page (the tail entry) and, for quest, refreshing that page's min/max.
 */
#include "sr_decode.h"

#include "sr_ckpt.h"
#include "sr_internal.h"
#include "sr_synth.h"
#include "sr_verify.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MPI_TRY(call, what) sr__mpi_check((call), (what), __FILE__, __LINE__)

void sr_decode_out_free(sr_decode_out *o) {
  free(o->out);
  free(o->lse);
  free(o->sel_ptr);
  free(o->sel_idx);
  *o = (sr_decode_out){0};
}

/* The cache of one layer on this rank (sr_decode.h). */
typedef struct cache {
  const sr_backend *be;
  const sr_plan *p;
  int B, H, G, group, d, P, rank;
  int64_t n, nl, ppl;   /* prompt tokens, prompt rows here, prompt pages here        */
  int64_t slots;        /* decode page slots here                                    */
  int64_t seg_rows, lp; /* rows and pages per segment                                */
  void *k, *v;          /* [B*G][seg_rows][d] storage                               */
  void *pmin, *pmax;    /* quest: [B*G][lp][d] storage                              */
  int32_t *page_row;    /* [lp] backend: 16 i (the rows of local page i)             */
  int32_t *page_len;    /* [lp] backend: 16                                          */
  int32_t *gpage;       /* [lp] host: global page id of local page i                 */
} cache;

static void cache_free(cache *c) {
  if (c->be) {
    c->be->free(c->k);
    c->be->free(c->v);
    c->be->free(c->pmin);
    c->be->free(c->pmax);
    c->be->free(c->page_row);
    c->be->free(c->page_len);
  }
  free(c->gpage);
  *c = (cache){0};
}

/* Local page of global page gp on its owner (*owner set). */
static int64_t local_page(const cache *c, int64_t gp, int *owner) {
  const int64_t np = c->n / SR_PAGE;
  if (gp < np) {
    *owner = sr_plan_owner_of_pos(c->p, gp * SR_PAGE);
    return sr_plan_local_row(c->p, gp * SR_PAGE) / SR_PAGE;
  }
  const int64_t j = gp - np;
  *owner = (int)(j % c->P);
  return c->ppl + j / c->P;
}

/* Owner and segment row of token position pos (prompt or decode). */
static int64_t token_row(const cache *c, int64_t pos, int *owner) {
  if (pos < c->n) {
    *owner = sr_plan_owner_of_pos(c->p, pos);
    return sr_plan_local_row(c->p, pos);
  }
  const int64_t j = (pos - c->n) / SR_PAGE;
  *owner = (int)(j % c->P);
  return c->nl + (j / c->P) * SR_PAGE + (pos - c->n) % SR_PAGE;
}

/* Valid (complete, before the current page) local pages at a step whose current page is the
 * decode page jcur: every prompt page, and the rank's decode pages j < jcur. */
static int64_t valid_pages(const cache *c, int64_t jcur) {
  const int64_t mine = jcur > c->rank ? (jcur - c->rank + c->P - 1) / c->P : 0;
  return c->ppl + mine;
}

static sr_status cache_init(cache *c, const sr_config *cfg, const sr_plan *p, const sr_backend *be) {
  *c = (cache){.be = be, .p = p, .B = cfg->decode_batch, .H = p->q_heads, .G = p->kv_heads,
               .group = p->group, .d = p->d, .P = p->nranks, .rank = p->rank, .n = p->n,
               .nl = p->n_local};
  if (p->chunk_tokens % SR_PAGE != 0)
    return sr__seterr(SR_ERR_SHAPE, "decode: a rank's chunk of %lld tokens (seq_len %lld over %d "
                      "chunks) is not whole pages of %d tokens; choose seq_len so that "
                      "seq_len / %d is a multiple of 16", (long long)p->chunk_tokens,
                      (long long)p->n, p->nchunks, SR_PAGE, p->nchunks);
  const int64_t T = cfg->decode_steps, J = (T + SR_PAGE - 1) / SR_PAGE;
  c->ppl = c->nl / SR_PAGE;
  c->slots = (J + c->P - 1) / c->P;
  c->seg_rows = c->nl + c->slots * SR_PAGE;
  c->lp = c->seg_rows / SR_PAGE;
  if (c->seg_rows > INT32_MAX / 2)
    return sr__seterr(SR_ERR_SHAPE, "decode: %lld cache rows per rank exceed the 32-bit entry "
                      "rows; use more ranks", (long long)c->seg_rows);
  const size_t eb = be->elem_bytes;
  const size_t elems = (size_t)c->B * c->G * (size_t)c->seg_rows * c->d;
  SR_TRY(be->alloc(elems * eb, &c->k));
  SR_TRY(be->alloc(elems * eb, &c->v));
  SR_TRY(be->alloc((size_t)c->lp * sizeof(int32_t), (void **)&c->page_row));
  SR_TRY(be->alloc((size_t)c->lp * sizeof(int32_t), (void **)&c->page_len));
  int32_t *tmp = malloc((size_t)c->lp * 2 * sizeof(int32_t));
  c->gpage = malloc((size_t)c->lp * sizeof(int32_t));
  if (!tmp || !c->gpage) {
    free(tmp);
    return sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the page table");
  }
  for (int64_t i = 0; i < c->lp; i++) {
    tmp[i] = (int32_t)(SR_PAGE * i);
    tmp[c->lp + i] = SR_PAGE;
    c->gpage[i] = i < c->ppl ? (int32_t)(sr_plan_global_pos(p, c->rank, i * SR_PAGE) / SR_PAGE)
                             : (int32_t)(c->n / SR_PAGE + (i - c->ppl) * c->P + c->rank);
  }
  sr_status st = be->upload(c->page_row, tmp, (size_t)c->lp * sizeof(int32_t));
  if (st == SR_OK) st = be->upload(c->page_len, tmp + c->lp, (size_t)c->lp * sizeof(int32_t));
  free(tmp);
  return st;
}

/* Copies sequence b's prompt rows (kv: [2][G][nl][d]) into its segments, and stages its decode
 * tokens (positions n .. n + T - 1) in the rank's decode pages. */
static sr_status cache_fill(cache *c, const sr_decode_io *io, int layer, int b, const void *kv,
                            int64_t T, float *stage) {
  const sr_backend *be = c->be;
  const size_t eb = be->elem_bytes, d = (size_t)c->d;
  const int32_t zero = 0;
  for (int g = 0; g < c->G; g++) {
    const size_t seg = ((size_t)b * c->G + (size_t)g) * (size_t)c->seg_rows * d;
    for (int w = 0; w < 2; w++) {
      const char *src = (const char *)kv + ((size_t)w * c->G + (size_t)g) * (size_t)c->nl * d * eb;
      void *dst = (char *)(w ? c->v : c->k) + seg * eb;
      if (c->nl > 0) SR_TRY(be->gather(dst, src, &zero, 1, (size_t)c->nl * d));
      /* decode pages of this rank */
      const size_t rows = (size_t)c->slots * SR_PAGE;
      if (rows == 0) continue;
      memset(stage, 0, rows * d * sizeof(float));
      for (int64_t s = 0; s < c->slots; s++) {
        const int64_t j = s * c->P + c->rank, pos0 = c->n + j * SR_PAGE;
        const int64_t cnt = pos0 + SR_PAGE <= c->n + T ? SR_PAGE : c->n + T - pos0;
        if (cnt <= 0) continue;
        SR_TRY(io->rows(io->ctx, layer, b, w ? 'v' : 'k', g, pos0, cnt,
                        stage + (size_t)s * SR_PAGE * d));
      }
      SR_TRY(be->store((char *)dst + (size_t)c->nl * d * eb, stage, rows * d));
    }
  }
  return SR_OK;
}

/* ---- SnapKV / Ada-SnapKV: importance of the prompt tokens from the last-W window ---------- */

/* Collective. imp_i64 [G][n] (snapkv: fixed-point sums over the window and the group) or
 * imp_f32 [G][n] (ada: max over the window and the group), identical on every rank. */
static sr_status snap_importance(const sr_config *cfg, const cache *c, MPI_Comm comm,
                                 const sr_decode_io *io, int layer, int b, const void *kv,
                                 int ada, int64_t *imp_i64, float *imp_f32) {
  const sr_backend *be = c->be;
  const sr_plan *p = c->p;
  const int64_t n = c->n, nl = c->nl, d = c->d;
  const int W = (int)(cfg->last_q < n ? cfg->last_q : n);
  const int64_t q0 = n - W;
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  const int nruns = sr_plan_runs(p, p->rank, starts);
  const int64_t run_len = p->chunk_tokens;
  sr_status st = SR_OK;
  float *qw = calloc((size_t)c->H * W * d, sizeof(float));
  float *mx = malloc((size_t)W * sizeof(float)), *gmax = malloc((size_t)W * sizeof(float));
  float *inv = malloc((size_t)W * sizeof(float));
  int64_t *sums = malloc((size_t)W * sizeof(int64_t)), *tot = malloc((size_t)W * sizeof(int64_t));
  int64_t *vloc = malloc((size_t)(nl > 0 ? nl : 1) * sizeof(int64_t));
  int64_t *slash = calloc((size_t)n, sizeof(int64_t));
  float *cmax = malloc((size_t)(nl > 0 ? nl : 1) * sizeof(float));
  float *qwd = NULL, *L = NULL;
  if (!qw || !mx || !gmax || !inv || !sums || !tot || !vloc || !slash || !cmax)
    st = sr__seterr(SR_ERR_NOMEM, "%s: out of memory for the window estimate",
                    ada ? "ada_snapkv" : "snapkv");
  if (st == SR_OK) st = be->alloc((size_t)W * d * sizeof(float), (void **)&qwd);
  if (st == SR_OK) st = be->alloc((size_t)W * (size_t)(nl > 0 ? nl : 1) * sizeof(float), (void **)&L);
  /* The window's queries live on their owners: each reads its rows, the sum broadcasts them. */
  for (int r = 0; r < nruns && st == SR_OK; r++) {
    const int64_t lo = starts[r] > q0 ? starts[r] : q0;
    const int64_t hi = starts[r] + run_len < n ? starts[r] + run_len : n;
    for (int h = 0; h < c->H && st == SR_OK && lo < hi; h++)
      st = io->rows(io->ctx, layer, b, 'q', h, lo, hi - lo,
                    qw + ((size_t)h * W + (size_t)(lo - q0)) * d);
  }
  st = sr_comm_agree(comm, st);
  if (st == SR_OK && c->P > 1)
    st = sr_comm_agree(comm, MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, qw, (int)(c->H * W * d),
                                                   MPI_FLOAT, MPI_SUM, comm),
                                     "MPI_Allreduce(window queries)"));
  if (st == SR_OK) {
    if (ada)
      for (size_t i = 0; i < (size_t)c->G * n; i++) imp_f32[i] = 0.0f;
    else
      memset(imp_i64, 0, (size_t)c->G * n * sizeof(int64_t));
  }
  const float scale = 1.0f / sqrtf((float)d);
  const size_t eb = be->elem_bytes;
  for (int h = 0; h < c->H && st == SR_OK; h++) {
    const int g = h / c->group;
    const void *k = (const char *)kv + (size_t)g * nl * d * eb;
    st = be->copy_in(qwd, qw + (size_t)h * W * d, (size_t)W * d);
    if (st == SR_OK && nl > 0) st = be->est_scores(qwd, W, q0, k, nl, starts, run_len, (int)d, scale, L);
    for (int i = 0; i < W; i++) mx[i] = -INFINITY;
    if (st == SR_OK && nl > 0) st = be->est_rowmax(L, W, nl, mx);
    st = sr_comm_agree(comm, st);
    if (st == SR_OK)
      st = sr_comm_agree(comm, MPI_TRY(MPI_Allreduce(mx, gmax, W, MPI_FLOAT, MPI_MAX, comm),
                                       "MPI_Allreduce(row max)"));
    memset(sums, 0, (size_t)W * sizeof(int64_t));
    if (st == SR_OK && nl > 0) st = be->est_rowsum(L, W, nl, gmax, sums);
    st = sr_comm_agree(comm, st);
    if (st == SR_OK)
      st = sr_comm_agree(comm, MPI_TRY(MPI_Allreduce(sums, tot, W, MPI_INT64_T, MPI_SUM, comm),
                                       "MPI_Allreduce(row sum)"));
    if (st != SR_OK) break;
    for (int i = 0; i < W; i++) inv[i] = tot[i] > 0 ? (float)(4294967296.0 / (double)tot[i]) : 0.0f;
    if (nl == 0) continue;
    if (ada) {
      for (int64_t j = 0; j < nl; j++) cmax[j] = 0.0f;
      st = be->est_colmax(L, W, nl, gmax, inv, 1, cmax);
      for (int r = 0; r < nruns && st == SR_OK; r++)
        for (int64_t j = 0; j < run_len; j++) {
          float *x = &imp_f32[(size_t)g * n + (size_t)(starts[r] + j)];
          const float v = cmax[r * run_len + j];
          if (v > *x) *x = v;
        }
    } else {
      memset(vloc, 0, (size_t)nl * sizeof(int64_t));
      st = be->est_accum(L, W, nl, q0, starts, run_len, gmax, inv, 1, n, vloc, slash);
      for (int r = 0; r < nruns && st == SR_OK; r++)
        for (int64_t j = 0; j < run_len; j++)
          imp_i64[(size_t)g * n + (size_t)(starts[r] + j)] += vloc[r * run_len + j];
    }
    st = sr_comm_agree(comm, st);
  }
  /* Each position was filled by its owner only: the sum over ranks is the whole array. */
  if (st == SR_OK && c->P > 1) {
    if (ada)
      st = MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, imp_f32, (int)(c->G * n), MPI_FLOAT, MPI_SUM, comm),
                   "MPI_Allreduce(importance)");
    else
      st = MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, imp_i64, (int)(c->G * n), MPI_INT64_T, MPI_SUM, comm),
                   "MPI_Allreduce(importance)");
    st = sr_comm_agree(comm, st);
  }
  be->free(qwd);
  be->free(L);
  free(qw);
  free(mx);
  free(gmax);
  free(inv);
  free(sums);
  free(tot);
  free(vloc);
  free(slash);
  free(cmax);
  return st;
}

/* ---- the layer --------------------------------------------------------------------------- */

typedef struct kept {
  int32_t *pos;  /* [B*G][n] ascending kept prompt positions (snapkv family) */
  int64_t *cnt;  /* [B*G] */
} kept;

/* Entries of the kept prompt rows on this rank: runs of consecutive local rows, <= 16 each. */
static sr_status kept_entries(const cache *c, const kept *kp, int32_t **row, int32_t **len,
                              int64_t *stride) {
  const int64_t nlist = (int64_t)c->B * c->G;
  int64_t *cnt = calloc((size_t)nlist, sizeof(int64_t));
  int32_t *rows = malloc((size_t)(c->nl > 0 ? c->nl : 1) * sizeof(int32_t));
  if (!cnt || !rows) {
    free(cnt);
    free(rows);
    return sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the kept tokens");
  }
  int64_t maxe = 0;
  /* two passes: count entries, then fill */
  for (int pass = 0; pass < 2; pass++) {
    for (int64_t l = 0; l < nlist; l++) {
      int64_t nr = 0;
      for (int64_t i = 0; i < kp->cnt[l]; i++) {
        int owner;
        const int64_t r = token_row(c, kp->pos[(size_t)l * c->n + i], &owner);
        if (owner == c->rank) rows[nr++] = (int32_t)r;
      }
      /* ascending within a chunk already; sorted across the zigzag chunks */
      for (int64_t a = 1; a < nr; a++) {
        int32_t v = rows[a];
        int64_t z = a - 1;
        while (z >= 0 && rows[z] > v) {
          rows[z + 1] = rows[z];
          z--;
        }
        rows[z + 1] = v;
      }
      int64_t e = 0;
      for (int64_t a = 0; a < nr;) {
        int64_t z = a + 1;
        while (z < nr && z - a < SR_PAGE && rows[z] == rows[z - 1] + 1) z++;
        if (pass == 1) {
          (*row)[l * *stride + e] = rows[a];
          (*len)[l * *stride + e] = (int32_t)(z - a);
        }
        e++;
        a = z;
      }
      if (pass == 0) {
        cnt[l] = e;
        if (e > maxe) maxe = e;
      } else {
        for (; e < *stride; e++) {
          (*row)[l * *stride + e] = 0;
          (*len)[l * *stride + e] = 0;
        }
      }
    }
    if (pass == 0) {
      *stride = maxe;
      *row = malloc((size_t)(nlist * maxe > 0 ? nlist * maxe : 1) * sizeof(int32_t));
      *len = malloc((size_t)(nlist * maxe > 0 ? nlist * maxe : 1) * sizeof(int32_t));
      if (!*row || !*len) {
        free(cnt);
        free(rows);
        return sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the kept entries");
      }
    }
  }
  free(cnt);
  free(rows);
  return SR_OK;
}

/* The q-heads whose decode query replays a needle's question (sr_decode.h): the q row at the
 * first query position of needle t mod count of the head's kv-head, when it has needles. */
typedef struct needles {
  sr_needle *nd; /* [B][G][max] */
  int *cnt;      /* [B][G] */
  int max;
} needles;

static sr_status make_queries(const sr_config *cfg, const cache *c, const sr_decode_io *io,
                              int layer, int64_t T, const needles *nd, float *q) {
  for (int64_t t = 0; t < T; t++)
    for (int b = 0; b < c->B; b++)
      for (int h = 0; h < c->H; h++) {
        const int g = h / c->group, k = nd->cnt[b * c->G + g];
        const int64_t pos = k > 0 ? nd->nd[((size_t)b * c->G + g) * nd->max + (size_t)(t % k)].qpos
                                  : c->n + t;
        SR_TRY(io->rows(io->ctx, layer, b, 'q', h, pos, 1,
                        q + (((size_t)t * c->B + b) * c->H + h) * c->d));
      }
  (void)cfg;
  return SR_OK;
}

/* Per step and list, the global page ids quest attended (ascending, current page last
 * excluded): [T][nlist][pb]; count per (t, list) in qn. */
typedef struct quest_hist {
  int32_t *ids;
  int32_t *n;
  int64_t pb, nlist;
} quest_hist;

/* Is key position pos attended by list l at step t? */
static int attended(const sr_config *cfg, const cache *c, const kept *kp, const quest_hist *qh,
                    int64_t t, int64_t list, int64_t kvlist, int64_t pos) {
  const int64_t L = c->n + t + 1;
  if (pos >= L) return 0;
  switch (cfg->method) {
  case SR_METHOD_QUEST: {
    const int64_t cur = (c->n + t) / SR_PAGE, pg = pos / SR_PAGE;
    if (pg == cur) return 1;
    const int32_t *ids = qh->ids + ((size_t)t * qh->nlist + (size_t)list) * qh->pb;
    int64_t lo = 0, hi = qh->n[t * qh->nlist + list];
    while (lo < hi) { /* ascending ids */
      int64_t m = (lo + hi) / 2;
      if (ids[m] < pg) lo = m + 1;
      else hi = m;
    }
    return lo < qh->n[t * qh->nlist + list] && ids[lo] == pg;
  }
  case SR_METHOD_SNAPKV:
  case SR_METHOD_ADA_SNAPKV: {
    if (pos >= c->n) return 1;
    const int32_t *k = kp->pos + (size_t)kvlist * c->n;
    int64_t lo = 0, hi = kp->cnt[kvlist];
    while (lo < hi) {
      int64_t m = (lo + hi) / 2;
      if (k[m] < pos) lo = m + 1;
      else hi = m;
    }
    return lo < kp->cnt[kvlist] && k[lo] == pos;
  }
  default:
    return 1;
  }
}

static int cmp_i32a(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Collective. Exact dense decode in float64 for sampled steps, against the merged outputs
 * (rank 0): relative error, recall (the dense probability mass on the attended keys) and the
 * needle hits. Each rank regenerates the keys it owns from the input (not the cache). */
static sr_status check_quality(const sr_config *cfg, const cache *c, MPI_Comm comm,
                               const sr_decode_io *io, int layer, int64_t T, const float *q,
                               const float *out_h /* rank 0 [T][B][H][d] */,
                               const float *lse_h, const kept *kp, const quest_hist *qh,
                               const needles *nd, sr_layer_result *r) {
  const int64_t d = c->d;
  /* Sampled steps: verify.rows of them spread evenly (-1: all), first and last included. */
  int64_t ns = cfg->verify_rows < 0 || cfg->verify_rows >= T ? T : cfg->verify_rows;
  if (ns < 1) ns = 1;
  const int Bv = c->B < 4 ? c->B : 4;
  int64_t *steps = malloc((size_t)ns * sizeof(int64_t));
  const size_t rec = (size_t)(d + 3); /* m, s, s_attended, o[d] */
  const size_t nrec = (size_t)ns * Bv * c->H;
  double *part = calloc(nrec * rec, sizeof(double));
  double *all = c->rank == 0 ? calloc(nrec * rec * (size_t)c->P, sizeof(double)) : NULL;
  const int64_t Lmax = c->n + T;
  float *kr = malloc((size_t)SR_PAGE * 64 * d * sizeof(float));
  float *vr = malloc((size_t)SR_PAGE * 64 * d * sizeof(float));
  sr_status st = SR_OK;
  if (!steps || !part || (c->rank == 0 && !all) || !kr || !vr)
    st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the quality check");
  if (st == SR_OK) {
    for (int64_t i = 0; i < ns; i++) steps[i] = ns == 1 ? T - 1 : i * (T - 1) / (ns - 1);
    for (size_t i = 0; i < nrec; i++) part[i * rec] = -INFINITY;
  }
  /* Keys this rank owns, in chunks of 1024 positions: prompt runs, then decode pages. */
  for (int b = 0; b < Bv && st == SR_OK; b++)
    for (int g = 0; g < c->G && st == SR_OK; g++) {
      const int64_t chunk = SR_PAGE * 64;
      for (int64_t p0 = 0; p0 < Lmax && st == SR_OK; p0 += chunk) {
        const int64_t p1 = p0 + chunk < Lmax ? p0 + chunk : Lmax;
        /* runs of positions owned here inside [p0, p1) */
        for (int64_t a = p0; a < p1 && st == SR_OK;) {
          int owner;
          token_row(c, a, &owner);
          int64_t z = a + 1;
          int o2;
          while (z < p1 && (token_row(c, z, &o2), o2 == owner)) z++;
          if (owner == c->rank) {
            st = io->rows(io->ctx, layer, b, 'k', g, a, z - a, kr);
            if (st == SR_OK) st = io->rows(io->ctx, layer, b, 'v', g, a, z - a, vr);
            const int64_t nsj = st == SR_OK ? ns * c->group : 0;
            /* every (sampled step, q-head of the group) owns its record: threads over them */
#pragma omp parallel for schedule(dynamic, 1)
            for (int64_t sj = 0; sj < nsj; sj++) {
              const int64_t si = sj / c->group;
              const int j = (int)(sj % c->group);
              const int64_t t = steps[si], L = c->n + t + 1;
              {
                const int h = g * c->group + j;
                const float *qq = q + (((size_t)t * c->B + b) * c->H + h) * d;
                double *pr = part + (((size_t)si * Bv + b) * c->H + h) * rec;
                const int64_t list = cfg->share_pages ? (int64_t)b * c->G + g : (int64_t)b * c->H + h;
                for (int64_t x = a; x < z && x < L; x++) {
                  const float *kk = kr + (size_t)(x - a) * d, *vv = vr + (size_t)(x - a) * d;
                  double dot = 0;
                  for (int64_t e = 0; e < d; e++) dot += (double)qq[e] * (double)kk[e];
                  dot /= sqrt((double)d);
                  const int at = attended(cfg, c, kp, qh, t, list, (int64_t)b * c->G + g, x);
                  if (dot > pr[0]) {
                    const double f = pr[0] == -INFINITY ? 0 : exp(pr[0] - dot);
                    pr[1] *= f;
                    pr[2] *= f;
                    for (int64_t e = 0; e < d; e++) pr[3 + e] *= f;
                    pr[0] = dot;
                  }
                  const double w = exp(dot - pr[0]);
                  pr[1] += w;
                  if (at) pr[2] += w;
                  for (int64_t e = 0; e < d; e++) pr[3 + e] += w * (double)vv[e];
                }
              }
            }
          }
          a = z;
        }
      }
    }
  st = sr_comm_agree(comm, st);
  if (st == SR_OK)
    st = sr_comm_agree(comm, MPI_TRY(MPI_Gather(part, (int)(nrec * rec), MPI_DOUBLE, all,
                                                (int)(nrec * rec), MPI_DOUBLE, 0, comm),
                                     "MPI_Gather(quality)"));
  double qv[8] = {0}; /* rows, relerr_sum, relerr_max, recall_sum, recall_min, needles, hits, lse_maxerr */
  if (st == SR_OK && c->rank == 0) {
    qv[4] = INFINITY;
    double *hre = calloc((size_t)c->H, sizeof(double)), *hrc = calloc((size_t)c->H, sizeof(double));
    int64_t *hn = calloc((size_t)c->H, sizeof(int64_t));
    for (size_t i = 0; i < nrec && hre && hrc && hn; i++) {
      const int64_t si = (int64_t)(i / ((size_t)Bv * c->H)), b = (int64_t)(i / c->H) % Bv,
                    h = (int64_t)(i % c->H), t = steps[si];
      double M = -INFINITY;
      for (int rk = 0; rk < c->P; rk++) M = fmax(M, all[((size_t)rk * nrec + i) * rec]);
      double S = 0, Sa = 0, o[512];
      for (int64_t e = 0; e < d; e++) o[e] = 0;
      for (int rk = 0; rk < c->P; rk++) {
        const double *pr = all + ((size_t)rk * nrec + i) * rec;
        if (pr[0] == -INFINITY) continue;
        const double f = exp(pr[0] - M);
        S += pr[1] * f;
        Sa += pr[2] * f;
        for (int64_t e = 0; e < d; e++) o[e] += pr[3 + e] * f;
      }
      const float *got = out_h + (((size_t)t * c->B + b) * c->H + h) * d;
      double num = 0, den = 0;
      for (int64_t e = 0; e < d; e++) {
        const double ref = o[e] / S;
        num += (got[e] - ref) * (got[e] - ref);
        den += ref * ref;
      }
      const double re = den > 0 ? sqrt(num / den) : sqrt(num);
      const double rc = Sa / S;
      const double le = fabs((double)lse_h[((size_t)t * c->B + b) * c->H + h] - (M + log(S)));
      qv[0] += 1;
      qv[1] += re;
      if (re > qv[2] || isnan(re)) qv[2] = re;
      qv[3] += rc;
      if (rc < qv[4]) qv[4] = rc;
      if (cfg->method == SR_METHOD_DENSE && le > qv[7]) qv[7] = le;
      hre[h] = fmax(hre[h], re);
      hrc[h] += rc;
      hn[h]++;
      /* needle: every key of the replayed needle's span attended */
      const int g = (int)(h / c->group), k = nd->cnt[b * c->G + g];
      if (k > 0) {
        const sr_needle *ne = &nd->nd[((size_t)b * c->G + g) * nd->max + (size_t)(t % k)];
        const int64_t list = cfg->share_pages ? b * c->G + g : b * c->H + h;
        int hit = 1;
        for (int64_t x = ne->kpos; x < ne->kpos + ne->span && hit; x++)
          hit = attended(cfg, c, kp, qh, t, list, b * c->G + g, x);
        qv[5] += 1;
        qv[6] += hit;
      }
    }
    if (hre && hrc && hn) {
      r->head_relerr = hre;
      r->head_recall = hrc;
      for (int h = 0; h < c->H; h++) hrc[h] = hn[h] ? hrc[h] / (double)hn[h] : 0;
    } else {
      free(hre);
      free(hrc);
      st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the quality metrics");
    }
    free(hn);
  }
  st = sr_comm_agree(comm, st);
  if (st == SR_OK) st = sr_comm_agree(comm, MPI_TRY(MPI_Bcast(qv, 8, MPI_DOUBLE, 0, comm), "MPI_Bcast"));
  if (st == SR_OK) {
    r->verified = 1;
    r->rows_checked = (int64_t)qv[0];
    r->relerr_mean = qv[0] > 0 ? qv[1] / qv[0] : 0;
    r->relerr_max = qv[2];
    r->recall_mean = qv[0] > 0 ? qv[3] / qv[0] : 0;
    r->recall_min = qv[4];
    r->needles = (int64_t)qv[5];
    r->needle_hits = (int64_t)qv[6];
    r->lse_maxerr = qv[7];
  }
  free(steps);
  free(part);
  free(all);
  free(kr);
  free(vr);
  return st;
}

/* Merges P partial (out, lse) rows in rank order: parts [P][rows][d], lse [P][rows]. */
static void merge_ranks(int P, int64_t rows, int d, const float *po, const float *pl, float *out,
                        float *lse) {
  for (int64_t i = 0; i < rows; i++) {
    float M = -INFINITY;
    for (int r = 0; r < P; r++) M = fmaxf(M, pl[(size_t)r * rows + i]);
    float *o = out + (size_t)i * d;
    if (M == -INFINITY) {
      for (int e = 0; e < d; e++) o[e] = 0.0f;
      lse[i] = -INFINITY;
      continue;
    }
    double S = 0.0, od[512];
    for (int e = 0; e < d; e++) od[e] = 0.0;
    for (int r = 0; r < P; r++) {
      const float l = pl[(size_t)r * rows + i];
      if (l == -INFINITY) continue;
      const double f = exp((double)l - (double)M);
      S += f;
      const float *x = po + ((size_t)r * rows + i) * d;
      for (int e = 0; e < d; e++) od[e] += f * (double)x[e];
    }
    for (int e = 0; e < d; e++) o[e] = (float)(od[e] / S);
    lse[i] = (float)((double)M + log(S));
  }
}

sr_status sr_decode_layer(const sr_config *cfg, const sr_plan *p, const sr_backend *be,
                          MPI_Comm comm, const sr_decode_io *io, int layer, sr_decode_out *o,
                          sr_layer_result *r) {
  *o = (sr_decode_out){0};
  const int64_t T = cfg->decode_steps;
  const int B = cfg->decode_batch, method = cfg->method;
  const int quest = method == SR_METHOD_QUEST;
  const int snap = method == SR_METHOD_SNAPKV || method == SR_METHOD_ADA_SNAPKV;
  const int per_qhead = quest && !cfg->share_pages;
  cache c;
  kept kp = {0};
  needles nd = {0};
  quest_hist qh = {0};
  float *stage = NULL, *q_h = NULL, *q_d = NULL, *out_d = NULL, *lse_d = NULL;
  float *out_h = NULL, *lse_h = NULL, *part_h = NULL, *gath = NULL, *scores = NULL, *cand = NULL;
  int32_t *own_row = NULL, *own_len = NULL, *own_row_h = NULL, *own_len_h = NULL;
  float *cand_h = NULL, *cand_all = NULL;
  int32_t *id_h = NULL, *id_all = NULL, *pick = NULL;
  int64_t own_stride = 0;
  sr_status st = cache_init(&c, cfg, p, be);
  st = sr_comm_agree(comm, st);
  if (st != SR_OK) {
    cache_free(&c);
    return st;
  }
  const int64_t d = c.d, H = c.H, G = c.G;
  const int64_t nlist = (int64_t)B * (per_qhead ? H : G);
  const int64_t rows = (int64_t)B * H; /* output rows per step */
  const int64_t pb = quest ? sr_decode_quest_budget(cfg) / SR_PAGE : 0;
  const int64_t cap = snap ? sr_decode_capacity(cfg) : 0;
  double t0 = sr__now();

  /* ---- prompt, staged decode tokens, needles, queries ---- */
  const size_t stage_rows = (size_t)(c.slots * SR_PAGE > 1024 ? c.slots * SR_PAGE : 1024);
  stage = malloc(stage_rows * (size_t)d * sizeof(float));
  q_h = malloc((size_t)T * rows * d * sizeof(float));
  nd.max = cfg->synth.needles > 0 ? (int)cfg->synth.needles : 1;
  nd.nd = calloc((size_t)B * G * nd.max, sizeof(sr_needle));
  nd.cnt = calloc((size_t)B * G, sizeof(int));
  if (snap) {
    kp.pos = malloc((size_t)B * G * c.n * sizeof(int32_t));
    kp.cnt = calloc((size_t)B * G, sizeof(int64_t));
  }
  if (!stage || !q_h || !nd.nd || !nd.cnt || (snap && (!kp.pos || !kp.cnt)))
    st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for %lld steps of %d sequences",
                    (long long)T, B);
  st = sr_comm_agree(comm, st);
  double prefill_s = 0, prepare_s = 0;
  int64_t *imp_i = NULL;
  float *imp_f = NULL;
  if (st == SR_OK && quest) {
    const size_t pe = (size_t)B * G * (size_t)c.lp * d * be->elem_bytes;
    st = be->alloc(pe, &c.pmin);
    if (st == SR_OK) st = be->alloc(pe, &c.pmax);
  }
  if (st == SR_OK && snap) {
    if (method == SR_METHOD_ADA_SNAPKV) imp_f = malloc((size_t)G * c.n * sizeof(float));
    else imp_i = malloc((size_t)G * c.n * sizeof(int64_t));
    if (!imp_f && !imp_i) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for importance");
  }
  st = sr_comm_agree(comm, st);
  for (int b = 0; b < B && st == SR_OK; b++) {
    const void *kv = NULL;
    double ps = 0;
    st = io->prompt(io->ctx, layer, b, &kv, &ps);
    if (st != SR_OK) break; /* agreed by the callback */
    prefill_s += ps;
    double tp = sr__now();
    st = sr_comm_agree(comm, cache_fill(&c, io, layer, b, kv, T, stage));
    sr__prof("decode: cache fill", tp);
    if (st == SR_OK && quest && c.ppl > 0)
      st = be->page_minmax((const char *)c.k + (size_t)b * G * c.seg_rows * d * be->elem_bytes, G,
                           c.seg_rows, (int)d, c.lp, 0, c.ppl, SR_PAGE,
                           (char *)c.pmin + (size_t)b * G * c.lp * d * be->elem_bytes,
                           (char *)c.pmax + (size_t)b * G * c.lp * d * be->elem_bytes);
    if (st == SR_OK && snap) {
      st = snap_importance(cfg, &c, comm, io, layer, b, kv, method == SR_METHOD_ADA_SNAPKV, imp_i,
                           imp_f);
      if (st == SR_OK && method == SR_METHOD_SNAPKV) {
        for (int g = 0; g < G && st == SR_OK; g++) {
          const int64_t got = sr_snapkv_choose(imp_i + (size_t)g * c.n, c.n, cap,
                                               kp.pos + ((size_t)b * G + g) * c.n);
          if (got < 0) st = sr__seterr(SR_ERR_NOMEM, "snapkv: out of memory");
          kp.cnt[b * G + g] = got;
        }
      } else if (st == SR_OK) {
        st = sr_ada_choose(imp_f, (int)G, c.n, cap, kp.pos + (size_t)b * G * c.n, kp.cnt + b * G);
      }
    }
    if (st == SR_OK) st = be->sync();
    st = sr_comm_agree(comm, st);
    sr__prof("decode: prepare", tp);
    prepare_s += sr__now() - tp;
  }
  free(imp_i);
  free(imp_f);
  /* needles of every (sequence, kv-head) and the queries of every step */
  if (st == SR_OK && io->needles)
    for (int b = 0; b < B; b++)
      for (int g = 0; g < G; g++)
        nd.cnt[b * G + g] = io->needles(io->ctx, layer, b, g, nd.nd + ((size_t)b * G + g) * nd.max,
                                        nd.max);
  if (st == SR_OK) st = make_queries(cfg, &c, io, layer, T, &nd, q_h);
  st = sr_comm_agree(comm, st);
  r->t[SR_PH_GENERATE] = sr__now() - t0 - prepare_s - prefill_s;
  r->t[SR_PH_SUMMARISE] = prepare_s;
  r->t[SR_PH_VERIFY] = 0;

  /* ---- device buffers ---- */
  if (st == SR_OK) st = be->alloc((size_t)T * rows * d * sizeof(float), (void **)&q_d);
  if (st == SR_OK) st = be->copy_in(q_d, q_h, (size_t)T * rows * d);
  const int64_t out_steps = c.P == 1 ? T : 1; /* one rank: every step's output stays on device */
  if (st == SR_OK) st = be->alloc((size_t)out_steps * rows * d * sizeof(float), (void **)&out_d);
  if (st == SR_OK) st = be->alloc((size_t)out_steps * rows * sizeof(float), (void **)&lse_d);
  if (st == SR_OK && c.rank == 0) {
    out_h = malloc((size_t)T * rows * d * sizeof(float));
    lse_h = malloc((size_t)T * rows * sizeof(float));
    if (!out_h || !lse_h) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for outputs");
    else {
      sr__poison_f32(out_h, (size_t)T * rows * d);
      sr__poison_f32(lse_h, (size_t)T * rows);
    }
  }
  if (st == SR_OK && c.P > 1) {
    part_h = malloc((size_t)rows * (d + 1) * sizeof(float));
    if (c.rank == 0) gath = malloc((size_t)c.P * rows * (d + 1) * sizeof(float));
    if (!part_h || (c.rank == 0 && !gath)) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory");
  }
  if (st == SR_OK && quest) {
    qh.pb = pb;
    qh.nlist = nlist;
    qh.ids = malloc((size_t)T * nlist * (pb > 0 ? pb : 1) * sizeof(int32_t));
    qh.n = calloc((size_t)T * nlist, sizeof(int32_t));
    if (!qh.ids || !qh.n) st = sr__seterr(SR_ERR_NOMEM, "quest: out of memory for the page history");
    /* own entries of every step stay on the device (one rank: they are the selection) */
    own_stride = pb;
    const size_t ne = (size_t)(c.P == 1 ? T : 1) * nlist * (pb > 0 ? pb : 1);
    if (st == SR_OK) st = be->alloc(ne * sizeof(int32_t), (void **)&own_row);
    if (st == SR_OK) st = be->alloc(ne * sizeof(int32_t), (void **)&own_len);
    if (st == SR_OK) st = be->alloc((size_t)nlist * c.lp * sizeof(float), (void **)&scores);
    if (st == SR_OK) st = be->alloc((size_t)nlist * (pb > 0 ? pb : 1) * sizeof(float), (void **)&cand);
    if (st == SR_OK && c.P > 1) {
      const size_t nc = (size_t)nlist * pb;
      own_row_h = malloc(nc * sizeof(int32_t));
      own_len_h = malloc(nc * sizeof(int32_t));
      cand_h = malloc(nc * sizeof(float));
      id_h = malloc(nc * sizeof(int32_t));
      cand_all = malloc(nc * c.P * sizeof(float));
      id_all = malloc(nc * c.P * sizeof(int32_t));
      pick = malloc((size_t)pb * sizeof(int32_t));
      if (!own_row_h || !own_len_h || !cand_h || !id_h || !cand_all || !id_all || !pick)
        st = sr__seterr(SR_ERR_NOMEM, "quest: out of memory for the candidates");
    }
  }
  if (st == SR_OK && snap) {
    int32_t *rw = NULL, *ln = NULL;
    st = kept_entries(&c, &kp, &rw, &ln, &own_stride);
    const size_t ne = (size_t)(nlist * own_stride > 0 ? nlist * own_stride : 1);
    if (st == SR_OK) st = be->alloc(ne * sizeof(int32_t), (void **)&own_row);
    if (st == SR_OK) st = be->alloc(ne * sizeof(int32_t), (void **)&own_len);
    if (st == SR_OK && nlist * own_stride > 0) st = be->upload(own_row, rw, ne * sizeof(int32_t));
    if (st == SR_OK && nlist * own_stride > 0) st = be->upload(own_len, ln, ne * sizeof(int32_t));
    free(rw);
    free(ln);
  }
  st = sr_comm_agree(comm, st);

  /* ---- the steps ---- */
  uint64_t keys_attended = 0, keys_dense = 0, kv_rows = 0, bytes_sent = 0;
  double sel_s = 0, merge_s = 0;
  const double ts0 = sr__now();
  const float scale = 1.0f / sqrtf((float)d);
  for (int64_t t = 0; t < T && st == SR_OK; t++) {
    /* Test hook (docs/CHECKPOINT.md): "decode_mid" is the middle step of every layer. */
    if (t == T / 2) sr_ckpt_point("decode_mid", layer, c.rank);
    const int64_t pos = c.n + t, jcur = t / SR_PAGE;
    const int cur_owner = (int)(jcur % c.P);
    const int64_t cur_lp = c.ppl + jcur / c.P;
    const int32_t tail_len = cur_owner == c.rank ? (int32_t)(pos % SR_PAGE + 1) : 0;
    const int64_t nvalid = valid_pages(&c, jcur);
    sr_decode_args a = {.nseq = B, .q_heads = (int)H, .kv_heads = (int)G, .d = (int)d,
                        .per_qhead = per_qhead, .q = q_d + (size_t)t * rows * d, .k = c.k,
                        .v = c.v, .seg_rows = c.seg_rows, .tail_row = (int32_t)(SR_PAGE * cur_lp),
                        .tail_len = tail_len, .scale = scale,
                        .out = out_d + (size_t)(c.P == 1 ? t : 0) * rows * d,
                        .lse = lse_d + (size_t)(c.P == 1 ? t : 0) * rows};
    double tq = sr__now();
    if (method == SR_METHOD_DENSE) {
      a.nshared = nvalid;
      a.shared_row = c.page_row;
      a.shared_len = c.page_len;
    } else if (snap) {
      a.own_stride = own_stride;
      a.own_row = own_row;
      a.own_len = own_len;
      a.nshared = nvalid - c.ppl;
      a.shared_row = c.page_row + c.ppl;
      a.shared_len = c.page_len + c.ppl;
    } else { /* quest */
      if (tail_len > 0)
        st = be->page_minmax(c.k, (int64_t)B * G, c.seg_rows, (int)d, c.lp, cur_lp, 1, tail_len,
                             c.pmin, c.pmax);
      if (st == SR_OK)
        st = be->page_scores(a.q, B, (int)H, (int)G, per_qhead, c.pmin, c.pmax, c.lp, nvalid,
                             (int)d, scores);
      const size_t slice = (size_t)(c.P == 1 ? t : 0) * nlist * pb;
      if (st == SR_OK)
        st = be->page_topk(scores, nlist, c.lp, nvalid, (int)pb, own_row + slice, own_len + slice,
                           cand);
      if (st == SR_OK && c.P > 1) {
        /* exact global top-k over every rank's candidates (score, global page id) */
        const size_t nc = (size_t)nlist * pb;
        st = be->download(own_row_h, own_row, nc * sizeof(int32_t));
        if (st == SR_OK) st = be->download(own_len_h, own_len, nc * sizeof(int32_t));
        if (st == SR_OK) st = be->download(cand_h, cand, nc * sizeof(float));
        for (size_t i = 0; st == SR_OK && i < nc; i++)
          id_h[i] = own_len_h[i] > 0 ? c.gpage[own_row_h[i] / SR_PAGE] : -1;
        st = sr_comm_agree(comm, st);
        double tm = sr__now();
        if (st == SR_OK)
          st = sr_comm_agree(comm, MPI_TRY(MPI_Allgather(cand_h, (int)nc, MPI_FLOAT, cand_all,
                                                         (int)nc, MPI_FLOAT, comm),
                                           "MPI_Allgather(quest candidates)"));
        if (st == SR_OK)
          st = sr_comm_agree(comm, MPI_TRY(MPI_Allgather(id_h, (int)nc, MPI_INT32_T, id_all,
                                                         (int)nc, MPI_INT32_T, comm),
                                           "MPI_Allgather(quest pages)"));
        merge_s += sr__now() - tm;
        bytes_sent += (uint64_t)nc * 8u * (uint64_t)(c.P - 1);
        for (int64_t l = 0; l < nlist && st == SR_OK; l++) {
          /* candidates of list l from every rank, contiguous per rank */
          float *cs = malloc((size_t)c.P * pb * sizeof(float));
          int32_t *is = malloc((size_t)c.P * pb * sizeof(int32_t));
          if (!cs || !is) st = sr__seterr(SR_ERR_NOMEM, "quest: out of memory");
          for (int rk = 0; st == SR_OK && rk < c.P; rk++) {
            memcpy(cs + (size_t)rk * pb, cand_all + ((size_t)rk * nlist + l) * pb, pb * sizeof(float));
            memcpy(is + (size_t)rk * pb, id_all + ((size_t)rk * nlist + l) * pb, pb * sizeof(int32_t));
          }
          int64_t got = st == SR_OK ? sr_decode_topk_merge(cs, is, (int64_t)c.P * pb, pb, pick) : 0;
          if (got < 0) st = sr__seterr(SR_ERR_NOMEM, "quest: out of memory");
          int64_t e = 0;
          for (int64_t i = 0; st == SR_OK && i < got; i++) {
            int owner;
            const int64_t lpg = local_page(&c, pick[i], &owner);
            if (owner == c.rank) {
              own_row_h[l * pb + e] = (int32_t)(SR_PAGE * lpg);
              own_len_h[l * pb + e] = SR_PAGE;
              e++;
            }
          }
          for (; e < pb; e++) {
            own_row_h[l * pb + e] = 0;
            own_len_h[l * pb + e] = 0;
          }
          if (st == SR_OK) {
            qsort(pick, (size_t)got, sizeof *pick, cmp_i32a);
            memcpy(qh.ids + ((size_t)t * nlist + l) * pb, pick, (size_t)got * sizeof(int32_t));
            qh.n[t * nlist + l] = (int32_t)got;
          }
          free(cs);
          free(is);
        }
        if (st == SR_OK) st = be->upload(own_row, own_row_h, nc * sizeof(int32_t));
        if (st == SR_OK) st = be->upload(own_len, own_len_h, nc * sizeof(int32_t));
      }
      a.own_stride = pb;
      a.own_row = own_row + slice;
      a.own_len = own_len + slice;
    }
    st = sr_comm_agree(comm, st);
    sel_s += sr__now() - tq;
    if (st == SR_OK) st = be->decode_fwd(&a);
    if (st == SR_OK && c.P > 1) {
      /* partials to rank 0, merged in rank order */
      st = be->copy_out(part_h, a.out, (size_t)rows * d);
      if (st == SR_OK) st = be->copy_out(part_h + (size_t)rows * d, a.lse, (size_t)rows);
      st = sr_comm_agree(comm, st);
      double tm = sr__now();
      if (st == SR_OK)
        st = sr_comm_agree(comm, MPI_TRY(MPI_Gather(part_h, (int)(rows * (d + 1)), MPI_FLOAT, gath,
                                                    (int)(rows * (d + 1)), MPI_FLOAT, 0, comm),
                                         "MPI_Gather(partial outputs)"));
      merge_s += sr__now() - tm;
      bytes_sent += c.rank == 0 ? 0 : (uint64_t)rows * (d + 1) * 4u;
      if (st == SR_OK && c.rank == 0) {
        /* gath: [P][rows*d out][rows lse] -> split views */
        float *po = malloc((size_t)c.P * rows * d * sizeof(float));
        float *pl = malloc((size_t)c.P * rows * sizeof(float));
        if (!po || !pl) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory merging");
        for (int rk = 0; st == SR_OK && rk < c.P; rk++) {
          const float *src = gath + (size_t)rk * rows * (d + 1);
          memcpy(po + (size_t)rk * rows * d, src, (size_t)rows * d * sizeof(float));
          memcpy(pl + (size_t)rk * rows, src + (size_t)rows * d, (size_t)rows * sizeof(float));
        }
        if (st == SR_OK)
          merge_ranks(c.P, rows, (int)d, po, pl, out_h + (size_t)t * rows * d,
                      lse_h + (size_t)t * rows);
        free(po);
        free(pl);
      }
      st = sr_comm_agree(comm, st);
    }
    /* counters (global, from the selection every rank knows) */
    const uint64_t L = (uint64_t)(pos + 1);
    keys_dense += (uint64_t)B * H * L;
    if (method == SR_METHOD_DENSE) {
      keys_attended += (uint64_t)B * H * L;
      if (c.rank == 0) kv_rows += (uint64_t)B * G * L;
    } else if (snap) {
      for (int64_t l = 0; l < (int64_t)B * G; l++) {
        keys_attended += (uint64_t)(kp.cnt[l] + t + 1) * (uint64_t)c.group;
        if (c.rank == 0) kv_rows += (uint64_t)(kp.cnt[l] + t + 1);
      }
    } else {
      const uint64_t per = (uint64_t)(pb < (int64_t)(pos / SR_PAGE) ? pb : pos / SR_PAGE) * SR_PAGE +
                           (uint64_t)(pos % SR_PAGE + 1);
      keys_attended += (uint64_t)B * H * per;
      if (c.rank == 0) kv_rows += (uint64_t)nlist * per;
    }
    if (cfg->progress && c.rank == 0 && T >= 64 && (t + 1) % (T / 4) == 0) {
      printf("# layer %d: decode step %lld/%lld (%.3f s)\n", layer, (long long)(t + 1), (long long)T,
             sr__now() - ts0);
      fflush(stdout);
    }
  }
  if (st == SR_OK) st = be->sync();
  st = sr_comm_agree(comm, st);
  const double steps_s = sr__now() - ts0;

  /* ---- outputs to rank 0, the one-rank quest history ---- */
  if (st == SR_OK && c.P == 1) {
    st = be->copy_out(out_h, out_d, (size_t)T * rows * d);
    if (st == SR_OK) st = be->copy_out(lse_h, lse_d, (size_t)T * rows);
    if (st == SR_OK && quest) {
      const size_t ne = (size_t)T * nlist * pb;
      int32_t *rw = malloc(ne * sizeof(int32_t)), *ln = malloc(ne * sizeof(int32_t));
      if (!rw || !ln) st = sr__seterr(SR_ERR_NOMEM, "quest: out of memory for the history");
      if (st == SR_OK) st = be->download(rw, own_row, ne * sizeof(int32_t));
      if (st == SR_OK) st = be->download(ln, own_len, ne * sizeof(int32_t));
      for (int64_t tl = 0; st == SR_OK && tl < T * nlist; tl++) {
        int32_t *ids = qh.ids + (size_t)tl * pb;
        int64_t m = 0;
        for (int64_t i = 0; i < pb; i++)
          if (ln[(size_t)tl * pb + i] > 0) ids[m++] = c.gpage[rw[(size_t)tl * pb + i] / SR_PAGE];
        qsort(ids, (size_t)m, sizeof *ids, cmp_i32a);
        qh.n[tl] = (int32_t)m;
      }
      free(rw);
      free(ln);
    }
  }
  st = sr_comm_agree(comm, st);

  /* ---- quality ---- */
  if (st == SR_OK && cfg->verify_rows != 0) {
    double tv = sr__now();
    st = check_quality(cfg, &c, comm, io, layer, T, q_h, out_h, lse_h, &kp, &qh, &nd, r);
    r->t[SR_PH_VERIFY] = sr__now() - tv;
    const double limit = sr_verify_limit(cfg, be->elem_bytes);
    if (st == SR_OK && limit > 0 && !(r->relerr_max <= limit))
      st = sr__seterr(SR_ERR_VERIFY, "verification failed: layer %d: decode relative error %.3g "
                      "> verify.max_relerr %.3g (%s, %s storage); nothing of this layer is "
                      "written and the output is not published", layer, r->relerr_max, limit,
                      sr_method_name(cfg->method), be->elem_bytes == 4 ? "fp32" : "bf16");
  }

  /* ---- rank 0: the output arrays in file order ---- */
  if (st == SR_OK && c.rank == 0) {
    o->batch = B;
    o->steps = T;
    o->out = malloc((size_t)T * rows * d * sizeof(float));
    o->lse = malloc((size_t)T * rows * sizeof(float));
    if (!o->out || !o->lse) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for outputs");
    for (int64_t t = 0; st == SR_OK && t < T; t++)
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
          const size_t src = ((size_t)t * B + b) * H + h, dst = ((size_t)h * B + b) * T + t;
          memcpy(o->out + dst * d, out_h + src * d, (size_t)d * sizeof(float));
          o->lse[dst] = lse_h[src];
        }
    if (st == SR_OK && (quest || snap)) {
      o->sel_ptr = calloc((size_t)H * B + 1, sizeof(int64_t));
      if (!o->sel_ptr) st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the selection");
      for (int64_t h = 0; st == SR_OK && h < H; h++)
        for (int64_t b = 0; b < B; b++) {
          int64_t cnt = 0;
          if (quest)
            for (int64_t t = 0; t < T; t++)
              cnt += qh.n[t * nlist + (per_qhead ? b * H + h : b * G + h / c.group)] + 1;
          else
            cnt = kp.cnt[b * G + h / c.group];
          o->sel_ptr[h * B + b + 1] = o->sel_ptr[h * B + b] + cnt;
        }
      o->sel_nnz = st == SR_OK ? o->sel_ptr[H * B] : 0;
      if (st == SR_OK && !(o->sel_idx = malloc((size_t)(o->sel_nnz > 0 ? o->sel_nnz : 1) *
                                               sizeof(int32_t))))
        st = sr__seterr(SR_ERR_NOMEM, "decode: out of memory for the selection");
      for (int64_t h = 0; st == SR_OK && h < H; h++)
        for (int64_t b = 0; b < B; b++) {
          int32_t *dst = o->sel_idx + o->sel_ptr[h * B + b];
          if (quest) {
            for (int64_t t = 0; t < T; t++) {
              const int64_t l = per_qhead ? b * H + h : b * G + h / c.group;
              const int32_t m = qh.n[t * nlist + l];
              memcpy(dst, qh.ids + ((size_t)t * nlist + l) * pb, (size_t)m * sizeof(int32_t));
              dst[m] = (int32_t)((c.n + t) / SR_PAGE); /* the current page, last */
              dst += m + 1;
            }
          } else {
            const int64_t l = b * G + h / c.group;
            memcpy(dst, kp.pos + (size_t)l * c.n, (size_t)kp.cnt[l] * sizeof(int32_t));
          }
        }
    }
  }
  st = sr_comm_agree(comm, st);

  /* ---- metrics ---- */
  r->t[SR_PH_SELECT] = sel_s;
  r->t[SR_PH_EXCHANGE] = merge_s;
  /* the steps' time not spent selecting or merging (host timers: never below 0) */
  r->t[SR_PH_COMPUTE] = steps_s - sel_s - merge_s > 0 ? steps_s - sel_s - merge_s : 0;
  r->t[SR_PH_ATTENTION] = steps_s;
  r->t[SR_PH_DOWNLOAD] = 0;
  r->decode = 1;
  r->decode_steps = T;
  r->decode_batch = B;
  r->prefill_s = prefill_s;
  r->step_s = steps_s / (double)T;
  r->pairs_computed = keys_attended;
  r->pairs_causal = keys_dense;
  r->kv_bytes_read = (double)kv_rows * 2.0 * (double)d * (double)be->elem_bytes;
  r->bytes_sent = bytes_sent;
  r->decode_budget = quest ? pb * SR_PAGE : cap;
  r->nnz_blocks = 0;
  r->nnz_columns = 0;
  if (snap && c.rank == 0) {
    double kept_sum = 0;
    for (int64_t l = 0; l < (int64_t)B * G; l++) kept_sum += (double)kp.cnt[l];
    r->paper_pairs = kept_sum;
  }
  /* the paper's formulas: quest 1 - budget/n, snapkv 1 - C/n, ada 1 - kept/(n kv_heads) */
  r->sparsity_paper = quest ? 1.0 - (double)(pb * SR_PAGE) / (double)c.n
                      : method == SR_METHOD_SNAPKV ? 1.0 - (double)cap / (double)c.n
                      : method == SR_METHOD_ADA_SNAPKV
                          ? 1.0 - (c.rank == 0 ? r->paper_pairs : 0) / ((double)c.n * G * B)
                          : 0.0;
  free(stage);
  free(q_h);
  free(out_h);
  free(lse_h);
  free(part_h);
  free(gath);
  free(own_row_h);
  free(own_len_h);
  free(cand_h);
  free(cand_all);
  free(id_h);
  free(id_all);
  free(pick);
  be->free(q_d);
  be->free(out_d);
  be->free(lse_d);
  be->free(own_row);
  be->free(own_len);
  be->free(scores);
  be->free(cand);
  free(kp.pos);
  free(kp.cnt);
  free(nd.nd);
  free(nd.cnt);
  free(qh.ids);
  free(qh.n);
  cache_free(&c);
  if (st != SR_OK) sr_decode_out_free(o);
  return st;
}
