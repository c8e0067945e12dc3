/*
 * block_sparse.c — Block-Sparse (docs/METHODS.md §2.3), as the paper's code (minference/block.py)
 * defines it, per q-head:
 *   qb[m] = mean of q rows in block m, kb[j] = mean of k rows in block j (no 1/sqrt(d));
 *   P = qb . kb^T; P[m, diag] = P[m, diag-1] = +inf; P[:, 0] = +inf; future blocks -inf;
 *   keep the top K = min(top_chunks, nblocks) of row m, of which the causal min(m+1, K).
 * Here "diag" is the last key block a q-block can see, so bq != bk also works; with bq == bk
 * it is block m exactly as in the paper. Top-k ties go to the lower block id; since the
 * scores of a block depend only on its own rows, the selection is identical for any rank
 * count. Summary: the key-block means of the whole sequence, all-gathered.
 */
#include "sr_method.h"
#include "sr_internal.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void sr_summaries_free(sr_summaries *sum) {
  sr__free(sum->kmean);
  *sum = (sr_summaries){0};
}

double sr_block_sparse_sparsity(int64_t nblocks, int64_t k) {
  double N = (double)nblocks, K = (double)(k < nblocks ? k : nblocks);
  return 1.0 - (K * (K + 1) / 2 + (N - K) * K) / (N * (N + 1) / 2);
}

int sr_block_sparse_budget(int64_t nblocks, double target) {
  /* Sparsity decreases monotonically in k: binary search the crossing, then take the closer
   * of its two neighbours (as the paper's Table 3 budgets do). */
  int64_t lo = 3, hi = nblocks > 3 ? nblocks : 3;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (sr_block_sparse_sparsity(nblocks, mid) > target) lo = mid + 1;
    else hi = mid;
  }
  int64_t best = lo;
  if (lo > 3 && fabs(sr_block_sparse_sparsity(nblocks, lo - 1) - target) <=
                    fabs(sr_block_sparse_sparsity(nblocks, lo) - target))
    best = lo - 1;
  return (int)best;
}

sr_status sr_select_block_sparse(const sr_plan *p, const sr_backend *be, const void *q,
                                 const sr_summaries *sum, int top_chunks, sr_selection *sel) {
  if (top_chunks < 3)
    return sr__seterr(SR_ERR_CONFIG, "attention.top_chunks: %d is below 3", top_chunks);
  SR_TRY(sr__selection_alloc_rows(p, sel));
  const int64_t nqb = p->nqb_local, nkb = p->nkb_global;
  const int64_t K = top_chunks < nkb ? top_chunks : nkb; /* an int: <= top_chunks */
  sel->top_chunks = (int)K;
  const int64_t rows = (int64_t)p->q_heads * nqb;
  /* Row lengths are known before scoring: min(causal blocks, K). */
  for (int64_t r = 0; r < rows; r++) {
    int64_t qpos = sr_plan_qblock_global(p, p->rank, r % nqb) * p->bq;
    int64_t causal = sr__diag_block(p, qpos) + 1;
    sel->row_ptr[r + 1] = sel->row_ptr[r] + (causal < K ? causal : K);
  }
  sel->nnz = sel->row_ptr[rows];
  sel->col = sr__alloc((size_t)(sel->nnz > 0 ? sel->nnz : 1) * sizeof(int32_t));
  /* Scores are computed a tile of q-blocks at a time to bound memory at long N. Means and
   * scores live in backend memory; only the chosen ids come back to the host. */
  const int64_t tile = 256;
  float *qmean = NULL, *kmean = NULL, *scores = NULL;
  int32_t *idx = sr__alloc((size_t)tile * (size_t)K * sizeof(int32_t));
  int64_t *causal = sr__alloc((size_t)tile * sizeof(int64_t));
  int32_t *keep = sr__alloc((size_t)tile * sizeof(int32_t));
  sr_status st = SR_OK;
  if (!sel->col || !idx || !causal || !keep) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the Block-Sparse selection");
    goto done;
  }
  const size_t kfl = (size_t)p->kv_heads * (size_t)nkb * (size_t)p->d;
  if ((st = be->alloc((size_t)p->q_heads * (size_t)nqb * (size_t)p->d * sizeof(float),
                      (void **)&qmean)) != SR_OK ||
      (st = be->alloc(kfl * sizeof(float), (void **)&kmean)) != SR_OK ||
      (st = be->alloc((size_t)tile * (size_t)nkb * sizeof(float), (void **)&scores)) != SR_OK ||
      (st = be->copy_in(kmean, sum->kmean, kfl)) != SR_OK ||
      (st = be->pool_mean(q, p->q_heads, p->n_local, p->d, p->bq, qmean)) != SR_OK)
    goto done;
  /* A backend that builds work lists itself also keeps the ids: no upload of them later. */
  if (be->attn_lists) {
    if ((st = be->alloc((size_t)(sel->nnz > 0 ? sel->nnz : 1) * sizeof(int32_t),
                        (void **)&sel->col_dev)) != SR_OK)
      goto done;
    sel->col_be = be;
  }
  for (int h = 0; h < p->q_heads && st == SR_OK; h++) {
    const float *kb = kmean + (size_t)(h / p->group) * (size_t)nkb * (size_t)p->d;
    for (int64_t m0 = 0; m0 < nqb && st == SR_OK; m0 += tile) {
      int64_t nt = nqb - m0 < tile ? nqb - m0 : tile;
      /* Only causal blocks are candidates; future blocks would be -inf and never visited. */
      for (int64_t i = 0; i < nt; i++) {
        int64_t m = m0 + i, r = h * nqb + m;
        causal[i] = sr__diag_block(p, sr_plan_qblock_global(p, p->rank, m) * p->bq) + 1;
        keep[i] = (int32_t)(sel->row_ptr[r + 1] - sel->row_ptr[r]);
      }
      st = be->block_scores(qmean + ((size_t)h * nqb + m0) * p->d, nt, kb, nkb, p->d, scores);
      if (st == SR_OK)
        st = be->topk_rows(scores, nt, nkb, causal, keep, (int)K, idx,
                           sel->col_dev ? sel->col_dev + sel->row_ptr[h * nqb + m0] : NULL);
      for (int64_t i = 0; i < nt && st == SR_OK; i++)
        memcpy(sel->col + sel->row_ptr[h * nqb + m0 + i], idx + (size_t)i * K,
               (size_t)keep[i] * sizeof(int32_t));
    }
  }
done:
  be->free(qmean);
  be->free(kmean);
  be->free(scores);
  sr__free(idx);
  sr__free(causal);
  sr__free(keep);
  if (st != SR_OK) sr_selection_free(sel);
  return st;
}

sr_status sr_summaries_gather(const sr_plan *p, const sr_backend *be, MPI_Comm comm,
                              const void *k_local, sr_summaries *sum) {
  *sum = (sr_summaries){.kv_heads = p->kv_heads, .d = p->d, .nkb = p->nkb_global};
  const size_t local_floats = (size_t)p->kv_heads * (size_t)p->nkb_local * (size_t)p->d;
  float *mine_dev = NULL;
  float *mine = sr__alloc(local_floats * sizeof(float));
  float *all = sr__alloc(local_floats * (size_t)p->nranks * sizeof(float));
  sum->kmean = sr__alloc(local_floats * (size_t)p->nranks * sizeof(float));
  sr_status st = SR_OK;
  if (!mine || !all || !sum->kmean)
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for key-block summaries");
  if (st == SR_OK) st = be->alloc(local_floats * sizeof(float), (void **)&mine_dev);
  if (st == SR_OK) st = be->pool_mean(k_local, p->kv_heads, p->n_local, p->d, p->bk, mine_dev);
  if (st == SR_OK) st = be->copy_out(mine, mine_dev, local_floats);
  be->free(mine_dev);
  st = sr_comm_agree(comm, st);
  /* Small (N/bk x kv_heads x d floats): host memory over MPI on every backend. */
  /* An MPI count: sr_plan_init refuses block_sparse plans where it passes INT32_MAX
   * ("summary floats per rank"); this stays as the check at the point of use. */
  if (st == SR_OK && local_floats > (size_t)INT_MAX)
    st = sr__seterr(SR_ERR_SHAPE, "key-block summaries of %zu bytes per rank are too large",
                    local_floats * sizeof(float));
  if (st == SR_OK)
    st = sr__mpi_check(MPI_Allgather(mine, (int)local_floats, MPI_FLOAT, all, (int)local_floats,
                                     MPI_FLOAT, comm),
                       "MPI_Allgather(summaries)", __FILE__, __LINE__);
  if (st == SR_OK) {
    /* [rank][kv_head][local block][d] -> [kv_head][global block][d] */
    for (int r = 0; r < p->nranks; r++)
      for (int h = 0; h < p->kv_heads; h++)
        for (int64_t b = 0; b < p->nkb_local; b++) {
          int64_t j = sr_plan_kblock_global(p, r, b);
          memcpy(sum->kmean + ((size_t)h * p->nkb_global + j) * p->d,
                 all + (((size_t)r * p->kv_heads + h) * p->nkb_local + b) * p->d,
                 (size_t)p->d * sizeof(float));
        }
  }
  sr__free(mine);
  sr__free(all);
  if (st != SR_OK) sr_summaries_free(sum);
  return st;
}

/* ---- the table entry ---- */

static sr_status bs_summarise(const sr_method_in *in, void **state) {
  sr_summaries *sum = calloc(1, sizeof *sum);
  sr_status st = sum ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory for summaries");
  st = sr_comm_agree(in->comm, st);
  if (st != SR_OK) {
    free(sum);
    return st;
  }
  st = sr_summaries_gather(in->p, in->be, in->comm, in->k, sum);
  if (st != SR_OK) {
    free(sum);
    return st;
  }
  *state = sum;
  return SR_OK;
}

static void bs_free(void *state) {
  if (!state) return;
  sr_summaries_free(state);
  free(state);
}

/* Budget: explicit top_chunks, or the paper's formula solved for the target sparsity. */
static sr_status bs_select(const sr_method_in *in, void *state, sr_selection *sel) {
  int K = in->cfg->top_chunks;
  if (K == 0) K = sr_block_sparse_budget(in->p->nkb_global, in->cfg->sparsity);
  return sr_select_block_sparse(in->p, in->be, in->q, state, K, sel);
}

static double bs_sparsity(const sr_plan *p, const sr_selection *sel, double all) {
  (void)all;
  return sr_block_sparse_sparsity(p->nkb_global, sel->top_chunks);
}

const sr_method_ops sr_method_block_sparse = {
    .id = SR_METHOD_BLOCK_SPARSE,
    .name = "block_sparse",
    .phase = "prefill",
    .summarises = "mean of every key block, all-gathered",
    .selects = "top-K key blocks per (q-head, q-block) by mean(q block) . mean(k block)",
    .formula = "1 - [K(K+1)/2 + (N-K)K] / [N(N+1)/2], N key blocks",
    .summarise = bs_summarise,
    .select = bs_select,
    .free_state = bs_free,
    .sparsity_paper = bs_sparsity,
};
