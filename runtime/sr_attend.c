/*
 * sr_attend.c — per-source work lists and the ring callback (see sr_attend.h).
 *
 * Why split per source: a rank can only compute the blocks whose K/V it holds at that moment,
 * so the CSR for step t lists exactly the selected blocks owned by rank (r - t) mod P, with
 * slots pointing into that step's buffer. Local blocks are computed first (step 0), which
 * also initialises every accumulator row (rows with no local block get lse = -inf).
 */
#include "sr_attend.h"
#include "sr_internal.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Row i of the q-block sees min(max(a0 + i, 0), bk) keys of the k-block, a0 = qpos - kpos + 1:
 * none for i < i_lo, a0 + i for i_lo <= i < i_full, all bk from i_full on. */
int64_t sr_block_pairs(int64_t qpos, int bq, int64_t kpos, int bk) {
  const int64_t a0 = qpos - kpos + 1;
  int64_t i_lo = 1 - a0, i_full = bk - a0;
  i_lo = i_lo < 0 ? 0 : i_lo > bq ? bq : i_lo;
  i_full = i_full < i_lo ? i_lo : i_full > bq ? bq : i_full;
  const int64_t n = i_full - i_lo;
  return n * a0 + (i_lo + i_full - 1) * n / 2 + (int64_t)bk * (bq - i_full);
}

void sr_attend_free(sr_attend *a) {
  if (a->row_ptr)
    for (int s = 0; s < a->nsrc; s++) {
      sr__free(a->row_ptr[s]);
      sr__free(a->slot[s]);
      sr__free(a->kpos[s]);
      if (a->colrow) sr__free(a->colrow[s]);
    }
  sr__free(a->colrow);
  sr__free(a->ncolrow);
  sr__free(a->row_ptr);
  sr__free(a->slot);
  sr__free(a->kpos);
  sr__free(a->nnz);
  sr__free(a->qpos);
  if (a->be) {
    a->be->free(a->part_out);
    a->be->free(a->part_lse);
  }
  *a = (sr_attend){0};
}

/* Pool row of key column `pos` of kv-head kvh in the buffer of source s (kernels.h column
 * entries): the local shard and dense-ring buffers hold whole shards in the owner's layout; a
 * selected-mode buffer holds the requested blocks, then the requested columns. */
static int64_t column_row(const sr_plan *p, const sr_xplan *x, int s, int kvh, int64_t pos) {
  const int64_t bk = p->bk, b = pos / bk;
  if (s == p->rank || x->mode == SR_EXCHANGE_DENSE_RING)
    return (int64_t)kvh * p->n_local + sr_plan_local_row(p, pos);
  const int64_t id = (int64_t)kvh * p->nkb_global + b;
  int64_t lo = x->req_off[s], hi = x->req_off[s + 1];
  while (lo < hi) { /* is the block fetched anyway? */
    const int64_t mid = lo + (hi - lo) / 2;
    if (x->req_ids[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  if (lo < x->req_off[s + 1] && x->req_ids[lo] == id)
    return (int64_t)x->slot_of[id] * bk + pos % bk;
  const int64_t cid = (int64_t)kvh * p->n + pos;
  lo = x->creq_off[s], hi = x->creq_off[s + 1];
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (x->creq_ids[mid] < cid) lo = mid + 1;
    else hi = mid;
  }
  if (lo >= x->creq_off[s + 1] || x->creq_ids[lo] != cid) return -1; /* not requested: a bug */
  return (x->req_off[s + 1] - x->req_off[s]) * bk + (lo - x->creq_off[s]);
}

sr_status sr_attend_init(sr_attend *a, const sr_plan *p, const sr_backend *be, const void *q,
                         const sr_selection *sel, const sr_xplan *x, float *out, float *lse) {
  *a = (sr_attend){.plan = p, .be = be, .q = q, .out = out, .lse = lse, .nsrc = p->nranks};
  a->scale = 1.0f / sqrtf((float)p->d);
  const int64_t rows = (int64_t)p->q_heads * p->nqb_local;
  const int P = p->nranks;
  const bool cols = sel->vrow_ptr != NULL;
  /* int32 slots come from x->slot_of (bounded there); nqb and rows are passed to the kernels
   * as int: sr_plan_init bounds q_heads x nqb_global by INT32_MAX ("q_heads x q-blocks"). */
  SR_ASSERT(rows <= INT32_MAX);
  a->qpos = sr__alloc((size_t)p->nqb_local * sizeof(int64_t));
  a->row_ptr = sr__calloc((size_t)P, sizeof(int64_t *));
  a->slot = sr__calloc((size_t)P, sizeof(int32_t *));
  a->kpos = sr__calloc((size_t)P, sizeof(int64_t *));
  a->nnz = sr__calloc((size_t)P, sizeof(int64_t));
  a->colrow = sr__calloc((size_t)P, sizeof(int32_t *));
  a->ncolrow = sr__calloc((size_t)P, sizeof(int64_t));
  int64_t **cptr = cols ? sr__calloc((size_t)P, sizeof(int64_t *)) : NULL;
  int32_t *owner = NULL;
  bool oom = false, bad = false;
  if (!a->qpos || !a->row_ptr || !a->slot || !a->kpos || !a->nnz || !a->colrow || !a->ncolrow ||
      (cols && !cptr))
    goto nomem;
  for (int64_t m = 0; m < p->nqb_local; m++)
    a->qpos[m] = sr_plan_qblock_global(p, p->rank, m) * p->bq;
  /* Owner of every key block, looked up once (the lists below run over every selected pair:
   * 16.8 million at 128K dense with 128-blocks and 32 heads; rows are filled in parallel). */
  owner = malloc((size_t)p->nkb_global * sizeof *owner);
  if (!owner) goto nomem;
  for (int64_t j = 0; j < p->nkb_global; j++) owner[j] = sr_plan_kblock_owner(p, j, NULL);

  /* Entries per source and row: the blocks, then the columns in chunks of up to bk. */
  for (int s = 0; s < P; s++) {
    a->row_ptr[s] = sr__calloc((size_t)rows + 1, sizeof(int64_t));
    if (!a->row_ptr[s]) goto nomem;
    if (cols && !(cptr[s] = sr__calloc((size_t)rows + 1, sizeof(int64_t)))) goto nomem;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t e = sel->row_ptr[r]; e < sel->row_ptr[r + 1]; e++)
      a->row_ptr[owner[sel->col[e]]][r + 1]++;
    if (cols)
      for (int64_t e = sel->vrow_ptr[r]; e < sel->vrow_ptr[r + 1]; e++)
        cptr[owner[sel->vcol[e] / p->bk]][r + 1]++;
  }
  for (int s = 0; s < P; s++) {
    for (int64_t r = 0; r < rows; r++) {
      if (cols) {
        const int64_t c = cptr[s][r + 1];
        a->row_ptr[s][r + 1] += (c + p->bk - 1) / p->bk; /* chunks */
        cptr[s][r + 1] += cptr[s][r];
      }
      a->row_ptr[s][r + 1] += a->row_ptr[s][r];
    }
    a->nnz[s] = a->row_ptr[s][rows];
    a->ncolrow[s] = cols ? cptr[s][rows] : 0;
    if (a->ncolrow[s] > INT32_MAX) {
      sr_attend_free(a);
      free(owner);
      for (int t = 0; cptr && t < P; t++) sr__free(cptr[t]);
      sr__free(cptr);
      return sr__seterr(SR_ERR_SHAPE, "%lld key columns from one rank exceed the 32-bit "
                        "work-list limit; use fewer verticals or more ranks",
                        (long long)a->ncolrow[s]);
    }
    size_t n = (size_t)(a->nnz[s] > 0 ? a->nnz[s] : 1);
    a->slot[s] = sr__alloc(n * sizeof(int32_t));
    a->kpos[s] = sr__alloc(n * sizeof(int64_t));
    a->colrow[s] = sr__alloc((size_t)(a->ncolrow[s] > 0 ? a->ncolrow[s] : 1) * sizeof(int32_t));
    if (!a->slot[s] || !a->kpos[s] || !a->colrow[s]) goto nomem;
  }
  /* Each row writes only its own ranges of every source's lists. */
  uint64_t pairs = 0;
#pragma omp parallel reduction(+ : pairs)
  {
    int64_t *fill = malloc((size_t)P * 2 * sizeof *fill);
    if (!fill) {
#pragma omp atomic write
      oom = true;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      if (!fill) continue;
      int kvh = (int)((r / p->nqb_local) / p->group);
      int64_t m = r % p->nqb_local;
      for (int s = 0; s < P; s++) fill[s] = a->row_ptr[s][r];
      for (int64_t e = sel->row_ptr[r]; e < sel->row_ptr[r + 1]; e++) {
        int64_t j = sel->col[e];
        int s = owner[j];
        int64_t f = fill[s]++;
        a->slot[s][f] = x->slot_of[kvh * p->nkb_global + j];
        a->kpos[s][f] = j * p->bk;
        pairs += (uint64_t)sr_block_pairs(a->qpos[m], p->bq, j * p->bk, p->bk);
      }
      if (!cols) continue;
      /* Columns: rows of each source's pool, appended per source in position order; a chunk
       * entry per bk of them (every column precedes the q-block: all bq rows see it). */
      int64_t *cf = fill + P;
      for (int s = 0; s < P; s++) cf[s] = cptr[s][r];
      for (int64_t e = sel->vrow_ptr[r]; e < sel->vrow_ptr[r + 1]; e++) {
        const int64_t pos = sel->vcol[e];
        const int s = owner[pos / p->bk];
        const int64_t row = column_row(p, x, s, kvh, pos);
        if (row < 0 || row > INT32_MAX) {
#pragma omp atomic write
          bad = true;
          continue;
        }
        a->colrow[s][cf[s]++] = (int32_t)row;
      }
      for (int s = 0; s < P; s++)
        for (int64_t c0 = cptr[s][r]; c0 < cptr[s][r + 1]; c0 += p->bk) {
          const int64_t cnt = cptr[s][r + 1] - c0 < p->bk ? cptr[s][r + 1] - c0 : p->bk;
          const int64_t f = fill[s]++;
          a->slot[s][f] = (int32_t)c0;
          a->kpos[s][f] = -cnt;
          pairs += (uint64_t)(cnt * p->bq);
        }
    }
    free(fill);
  }
  free(owner);
  owner = NULL;
  for (int t = 0; cptr && t < P; t++) sr__free(cptr[t]);
  sr__free(cptr);
  cptr = NULL;
  if (oom) goto nomem;
  if (bad) {
    sr_attend_free(a);
    return sr__seterr(SR_ERR_INTERNAL, "a selected key column has no place in the exchange plan");
  }
  a->pairs_computed = pairs;
  if (P > 1) {
    size_t nrow = (size_t)p->q_heads * (size_t)p->n_local;
    if (be->alloc(nrow * (size_t)p->d * sizeof(float), (void **)&a->part_out) != SR_OK ||
        be->alloc(nrow * sizeof(float), (void **)&a->part_lse) != SR_OK)
      goto nomem;
  }
  return SR_OK;
nomem:
  free(owner);
  for (int t = 0; cptr && t < P; t++) sr__free(cptr[t]);
  sr__free(cptr);
  sr_attend_free(a);
  return sr__seterr(SR_ERR_NOMEM, "out of memory building attention work lists");
}

sr_status sr_attend_step(void *ctx, int step, int src, const void *k, const void *v) {
  sr_attend *a = ctx;
  const sr_plan *p = a->plan;
  const bool local = step == 0;
  if (!local && a->nnz[src] == 0) return SR_OK;
  sr_attn_args args = {
      .q_heads = p->q_heads,
      .d = p->d,
      .bq = p->bq,
      .bk = p->bk,
      .nqb = (int)p->nqb_local, /* <= q_heads x nqb_global <= INT32_MAX (sr_plan_init) */
      .nq = p->n_local,
      .q = a->q,
      .qpos = a->qpos,
      .k = k,
      .v = v,
      .row_ptr = a->row_ptr[src],
      .slot = a->slot[src],
      .kpos = a->kpos[src],
      .colrow = a->colrow[src],
      .ncolrow = a->ncolrow[src],
      .kv_limit = p->n,
      .scale = a->scale,
      .out = local ? a->out : a->part_out,
      .lse = local ? a->lse : a->part_lse,
  };
  SR_TRY(a->be->attn_fwd(&args));
  if (!local)
    SR_TRY(a->be->merge(a->out, a->lse, a->part_out, a->part_lse,
                        (int64_t)p->q_heads * p->n_local, p->d));
  return SR_OK;
}
