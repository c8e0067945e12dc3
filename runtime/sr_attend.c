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
#include "sr_pairs.h"

static int cmp_i32(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Ranks whose column lists one thread fills at once (a stack array). */
#define SR_MAX_RANKS_FILL 4096

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

int64_t sr_block_pairs(int64_t qpos, int bq, int64_t kpos, int bk) {
  return sr_pairs_of_blocks(qpos, bq, kpos, bk);
}

void sr_attend_free(sr_attend *a) {
  if (a->row_ptr && !a->dev_lists)
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

/* Columns of one row from every source, as runs of consecutive entries of the sources' shared
 * column arrays (upos: positions, ascending per (source, q-head) segment starting at base[s]).
 * emit(s, first, count) is called per chunk of at most bk. */
typedef struct col_walk {
  int64_t *cur, *rs, *rl; /* per source: cursor, run start, run length */
} col_walk;

#define COL_RUNS(p, sel, r, owner, upos, base, w, EMIT)                                           \
  do {                                                                                           \
    for (int s_ = 0; s_ < (p)->nranks; s_++) (w).cur[s_] = (base)[s_], (w).rl[s_] = 0;          \
    for (int64_t e_ = (sel)->vrow_ptr[r]; e_ < (sel)->vrow_ptr[(r) + 1]; e_++) {                 \
      const int64_t pos_ = (sel)->vcol[e_];                                                      \
      const int s_ = (owner)[pos_ / (p)->bk];                                                    \
      while ((upos)[s_][(w).cur[s_]] < pos_) (w).cur[s_]++;                                      \
      const int64_t ix_ = (w).cur[s_];                                                           \
      if ((w).rl[s_] > 0 && ix_ == (w).rs[s_] + (w).rl[s_] && (w).rl[s_] < (p)->bk) {            \
        (w).rl[s_]++;                                                                            \
      } else {                                                                                   \
        if ((w).rl[s_] > 0) {                                                                    \
          const int es_ = s_;                                                                    \
          const int64_t ef_ = (w).rs[s_], ec_ = (w).rl[s_];                                      \
          EMIT;                                                                                  \
        }                                                                                        \
        (w).rs[s_] = ix_, (w).rl[s_] = 1;                                                        \
      }                                                                                          \
    }                                                                                            \
    for (int s_ = 0; s_ < (p)->nranks; s_++)                                                     \
      if ((w).rl[s_] > 0) {                                                                      \
        const int es_ = s_;                                                                      \
        const int64_t ef_ = (w).rs[s_], ec_ = (w).rl[s_];                                        \
        EMIT;                                                                                    \
      }                                                                                          \
  } while (0)

sr_status sr_attend_init(sr_attend *a, const sr_plan *p, const sr_backend *be, const void *q,
                         const sr_selection *sel, const sr_xplan *x, float *out, float *lse) {
  *a = (sr_attend){
      .plan = p, .x = x, .be = be, .q = q, .out = out, .lse = lse, .nsrc = p->nranks};
  const double tp = sr__now();
  a->scale = 1.0f / sqrtf((float)p->d);
  const int64_t rows = (int64_t)p->q_heads * p->nqb_local;
  const int P = p->nranks, H = p->q_heads;
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
  /* Column sharing: a q-head's rows take their columns from one list per (source, q-head),
   * the union of the head's columns from that source (for Vertical-Slash: its verticals). A
   * row's chunks are runs of that list, so the work lists hold q_heads x V pool rows instead
   * of one copy per row. */
  int32_t **upos = cols ? sr__calloc((size_t)P, sizeof(int32_t *)) : NULL;
  int64_t *ucnt = cols ? sr__calloc((size_t)P * H + 1, sizeof(int64_t)) : NULL; /* [s][h] */
  int64_t *ubase = cols ? sr__calloc((size_t)P * H + 1, sizeof(int64_t)) : NULL;
  const int32_t *owner = NULL;
  bool oom = false, bad = false;
  if (!a->qpos || !a->row_ptr || !a->slot || !a->kpos || !a->nnz || !a->colrow || !a->ncolrow ||
      (cols && (!upos || !ucnt || !ubase)))
    goto nomem;
  for (int64_t m = 0; m < p->nqb_local; m++)
    a->qpos[m] = sr_plan_qblock_global(p, p->rank, m) * p->bq;
  /* Owner of every key block, from the exchange plan (the lists below run over every selected
   * pair: 16.8 million at 128K dense with 128-blocks and 32 heads; rows are filled in parallel). */
  owner = x->owner;

  /* Whole blocks only, and a backend that builds the lists itself: hand it the selection. */
  if (!cols && be->attn_lists && P <= SR_LISTS_MAX_SRC) {
    int64_t off[SR_LISTS_MAX_SRC];
    const sr_lists_args la = {.q_heads = p->q_heads, .group = p->group,
                              .nqb = (int)p->nqb_local, .bq = p->bq, .bk = p->bk, .nsrc = P,
                              .kv_heads = p->kv_heads, .nkb = p->nkb_global,
                              .row_ptr = sel->row_ptr, .col = sel->all_causal ? NULL : sel->col,
                              .col_dev = sel->all_causal ? NULL : sel->col_dev,
                              .owner = owner, .slot_of = x->slot_of, .qpos = a->qpos};
    sr_dev_lists dl = {.nnz = a->nnz, .off = off};
    sr_status st = be->attn_lists(&la, &dl);
    if (st != SR_OK) {
      sr_attend_free(a);
      return st;
    }
    a->dev_lists = 1;
    for (int s = 0; s < P; s++) {
      a->row_ptr[s] = (int64_t *)dl.row_ptr + (size_t)s * (size_t)(rows + 1);
      a->slot[s] = (int32_t *)dl.slot + off[s];
      a->kpos[s] = (int64_t *)dl.kpos + off[s];
    }
    a->pairs_computed = dl.pairs;
    sr__prof("attend: work lists (device)", tp);
    goto part;
  }

  if (cols) {
    /* The unions: mark the head's columns, listing each the first time it is seen; sort the
     * list (at most the head's verticals) and count it per source. */
    int32_t **ul = calloc((size_t)H, sizeof *ul);
    int64_t *uln = calloc((size_t)H, sizeof *uln);
    if (!ul || !uln) oom = true;
#pragma omp parallel if (!oom)
    {
      uint8_t *mark = calloc((size_t)p->n, 1);
      int32_t *list = malloc((size_t)p->n * sizeof *list);
      if (!mark || !list) {
#pragma omp atomic write
        oom = true;
      }
#pragma omp for schedule(dynamic, 1)
      for (int h = 0; h < H; h++) {
        if (!mark || !list) continue;
        int64_t nl = 0;
        for (int64_t r = (int64_t)h * p->nqb_local; r < (int64_t)(h + 1) * p->nqb_local; r++)
          for (int64_t e = sel->vrow_ptr[r]; e < sel->vrow_ptr[r + 1]; e++) {
            const int32_t pos = sel->vcol[e];
            if (!mark[pos]) {
              mark[pos] = 1;
              list[nl++] = pos;
            }
          }
        qsort(list, (size_t)nl, sizeof *list, cmp_i32);
        ul[h] = malloc((size_t)(nl > 0 ? nl : 1) * sizeof **ul);
        if (!ul[h]) {
#pragma omp atomic write
          oom = true;
        } else {
          memcpy(ul[h], list, (size_t)nl * sizeof *list);
        }
        uln[h] = nl;
        for (int64_t i = 0; i < nl; i++) {
          mark[list[i]] = 0;
          ucnt[(int64_t)owner[list[i] / p->bk] * H + h]++;
        }
      }
      free(mark);
      free(list);
    }
    for (int s = 0; s < P && !oom; s++) {
      int64_t t = 0;
      for (int h = 0; h < H; h++) {
        ubase[(int64_t)s * H + h] = t;
        t += ucnt[(int64_t)s * H + h];
      }
      a->ncolrow[s] = t;
      if (t > INT32_MAX) bad = true;
      a->colrow[s] = sr__alloc((size_t)(t > 0 ? t : 1) * sizeof(int32_t));
      /* One sentinel past the end: the run walk stops on it. */
      upos[s] = sr__alloc((size_t)(t + 1) * sizeof(int32_t));
      if (!a->colrow[s] || !upos[s]) oom = true;
      else upos[s][t] = INT32_MAX;
    }
#pragma omp parallel for schedule(dynamic, 1) if (!oom && !bad)
    for (int h = 0; h < H; h++) {
      if (oom || bad || P > SR_MAX_RANKS_FILL) continue;
      const int kvh = h / p->group;
      int64_t fill[SR_MAX_RANKS_FILL];
      for (int s = 0; s < P; s++) fill[s] = ubase[(int64_t)s * H + h];
      for (int64_t i = 0; i < uln[h]; i++) {
        const int64_t pos = ul[h][i];
        const int s = owner[pos / p->bk];
        const int64_t f = fill[s]++;
        const int64_t row = column_row(p, x, s, kvh, pos);
        if (row < 0 || row > INT32_MAX) {
#pragma omp atomic write
          bad = true;
          continue;
        }
        upos[s][f] = (int32_t)pos;
        a->colrow[s][f] = (int32_t)row;
      }
    }
    for (int h = 0; ul && h < H; h++) free(ul[h]);
    free(ul);
    free(uln);
    if (P > SR_MAX_RANKS_FILL) bad = true;
    if (oom) goto nomem;
    if (bad) goto badcol;
  }

  /* Entries per source and row: the blocks, then the column runs in chunks of up to bk. */
  for (int s = 0; s < P; s++) {
    a->row_ptr[s] = sr__calloc((size_t)rows + 1, sizeof(int64_t));
    if (!a->row_ptr[s]) goto nomem;
  }
#pragma omp parallel
  {
    col_walk w = {malloc((size_t)P * sizeof(int64_t)), malloc((size_t)P * sizeof(int64_t)),
                  malloc((size_t)P * sizeof(int64_t))};
    int64_t *base = malloc((size_t)P * sizeof(int64_t));
    if (!w.cur || !w.rs || !w.rl || !base) {
#pragma omp atomic write
      oom = true;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      if (!base) continue;
      for (int64_t e = sel->row_ptr[r]; e < sel->row_ptr[r + 1]; e++)
        a->row_ptr[owner[sel->col[e]]][r + 1]++;
      if (!cols) continue;
      const int h = (int)(r / p->nqb_local);
      for (int s = 0; s < P; s++) base[s] = ubase[(int64_t)s * H + h];
      COL_RUNS(p, sel, r, owner, upos, base, w, {
        (void)ef_;
        (void)ec_;
        a->row_ptr[es_][r + 1]++;
      });
    }
    free(w.cur), free(w.rs), free(w.rl), free(base);
  }
  if (oom) goto nomem;
  for (int s = 0; s < P; s++) {
    for (int64_t r = 0; r < rows; r++) a->row_ptr[s][r + 1] += a->row_ptr[s][r];
    a->nnz[s] = a->row_ptr[s][rows];
    size_t n = (size_t)(a->nnz[s] > 0 ? a->nnz[s] : 1);
    a->slot[s] = sr__alloc(n * sizeof(int32_t));
    a->kpos[s] = sr__alloc(n * sizeof(int64_t));
    if (!a->colrow[s]) a->colrow[s] = sr__alloc(sizeof(int32_t));
    if (!a->slot[s] || !a->kpos[s] || !a->colrow[s]) goto nomem;
  }
  /* Each row writes only its own ranges of every source's lists. */
  uint64_t pairs = 0;
#pragma omp parallel reduction(+ : pairs)
  {
    int64_t *fill = malloc((size_t)P * 2 * sizeof *fill);
    col_walk w = {malloc((size_t)P * sizeof(int64_t)), malloc((size_t)P * sizeof(int64_t)),
                  malloc((size_t)P * sizeof(int64_t))};
    if (!fill || !w.cur || !w.rs || !w.rl) {
#pragma omp atomic write
      oom = true;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      if (!fill || !w.cur || !w.rs || !w.rl) continue;
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
      /* Column chunks: every column precedes the q-block, so all bq rows see each key. */
      const int h = (int)(r / p->nqb_local);
      int64_t *base = fill + P;
      for (int s = 0; s < P; s++) base[s] = ubase[(int64_t)s * H + h];
      COL_RUNS(p, sel, r, owner, upos, base, w, {
        const int64_t f_ = fill[es_]++;
        a->slot[es_][f_] = (int32_t)ef_;
        a->kpos[es_][f_] = -ec_;
        pairs += (uint64_t)(ec_ * p->bq);
      });
    }
    free(fill);
    free(w.cur), free(w.rs), free(w.rl);
  }
  for (int t = 0; upos && t < P; t++) sr__free(upos[t]);
  sr__free(upos), sr__free(ucnt), sr__free(ubase);
  upos = NULL, ucnt = NULL, ubase = NULL;
  if (oom) goto nomem;
  a->pairs_computed = pairs;
  sr__prof("attend: work lists", tp);
part:
  if (P > 1) {
    size_t nrow = (size_t)p->q_heads * (size_t)p->n_local;
    if (be->alloc(nrow * (size_t)p->d * sizeof(float), (void **)&a->part_out) != SR_OK ||
        be->alloc(nrow * sizeof(float), (void **)&a->part_lse) != SR_OK)
      goto nomem;
  }
  return SR_OK;
badcol:
  for (int t = 0; upos && t < P; t++) sr__free(upos[t]);
  sr__free(upos), sr__free(ucnt), sr__free(ubase);
  sr_attend_free(a);
  return sr__seterr(SR_ERR_INTERNAL, "a selected key column has no place in the exchange plan "
                    "(or the column lists pass 32 bits)");
nomem:
  for (int t = 0; upos && t < P; t++) sr__free(upos[t]);
  sr__free(upos), sr__free(ucnt), sr__free(ubase);
  sr_attend_free(a);
  return sr__seterr(SR_ERR_NOMEM, "out of memory building attention work lists");
}

sr_status sr_attend_step(void *ctx, int step, int src, const void *k, const void *v) {
  sr_attend *a = ctx;
  const sr_plan *p = a->plan;
  const bool local = step == 0;
  if (!local && a->nnz[src] == 0) return SR_OK;
  /* Rows in the pools k and v point at (sr_ring_run): a shard of kv_heads x nkb_local blocks
   * (the local one, or one forwarded by the dense ring), or the blocks and columns asked of
   * src (selected exchange). */
  const sr_xplan *x = a->x;
  const size_t pool_elems = local || x->mode == SR_EXCHANGE_DENSE_RING
                                ? (size_t)x->kv_heads * (size_t)x->nkb_local * x->item_elems
                                : sr_xplan_half_elems(x, src);
  const int64_t kv_rows = (int64_t)(pool_elems / (size_t)p->d);
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
      .lists_dev = a->dev_lists,
      .nnz = a->nnz[src],
      .kv_rows = kv_rows,
  };
  const double t0 = sr__now();
  SR_TRY(a->be->attn_fwd(&args));
  sr__prof("attend: attn_fwd queued", t0);
  if (!local)
    SR_TRY(a->be->merge(a->out, a->lse, a->part_out, a->part_lse,
                        (int64_t)p->q_heads * p->n_local, p->d));
  return SR_OK;
}
