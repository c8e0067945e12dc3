/*
 * sr_select.h — the selection: for every (q-head, local q-block) a sorted list of global key
 * block ids (CSR), forced blocks included, as produced by a method.
 *
 * Row r = h * nqb_local + m. Column ids are global key-block indices in ascending order, all
 * causal (block start <= last query position of the q-block).
 */
#ifndef SR_SELECT_H
#define SR_SELECT_H

#include "sr_plan.h"
#include "kernels.h"

#include <stdint.h>

typedef struct sr_selection {
  int q_heads;
  int64_t nqb;        /* local q-blocks per head */
  int64_t *row_ptr;   /* [q_heads*nqb + 1] */
  int32_t *col;       /* [nnz] global key-block ids */
  int64_t nnz;
  int top_chunks;     /* budget K actually used (block_sparse), 0 for dense */
  int all_causal;     /* 1: every causal block, col[e] = e - row_ptr[r] (dense)  */
  int32_t *col_dev;   /* [nnz] or NULL: col in backend memory too (Block-Sparse on a backend
                         with attn_lists), freed with col_be */
  const struct sr_backend *col_be;
  /* Key columns (vertical_slash, flexprefill), a second CSR over the same rows; NULL/0 for
   * methods that select whole blocks only. Every column of row (h, m) is a global key
   * position before the q-block's first query and outside every block of the row, in
   * ascending order, so it is visible to every query of the block. */
  int64_t *vrow_ptr;  /* [q_heads*nqb + 1] or NULL */
  int32_t *vcol;      /* [nv] global key positions */
  int64_t nv;
  /* What the method's own sparsity formula counts on this rank (docs/METHODS.md §3): for
   * Vertical-Slash and FlexPrefill whole bq x bk tiles plus bq per column; summed over ranks
   * by the caller. */
  double paper_pairs;
  double budget_v, budget_s; /* verticals / slashes per q-head, mean over q-heads (VS, Flex) */
} sr_selection;

/* Key-block summaries of the whole sequence, all-gathered: mean of each key block per kv-head,
 * [kv_heads][nkb_global][d] in global block order. */
typedef struct sr_summaries {
  int kv_heads, d;
  int64_t nkb;
  float *kmean; /* host */
} sr_summaries;

/* Dense: every causal block. */
sr_status sr_select_dense(const sr_plan *p, sr_selection *sel);

/* Block-Sparse (docs/METHODS.md §2.3): per q-head, s[m][j] = mean(q block m) . mean(k block j)
 * (unscaled); forced: block 0, the diagonal block and the block below it; future blocks are
 * never chosen; the top K by score (ties: lower block id) for K = min(top_chunks, nkb_global),
 * keeping min(causal blocks, K) per q-block. q is this rank's [q_heads][n_local][d] in backend
 * memory (storage type); the selection itself is host memory. */
sr_status sr_select_block_sparse(const sr_plan *p, const sr_backend *be, const void *q,
                                 const sr_summaries *sum, int top_chunks, sr_selection *sel);

/* Paper's analytic Block-Sparse sparsity for nblocks blocks and budget k (docs/METHODS.md §3):
 * 1 - [k(k+1)/2 + (N-k)k] / [N(N+1)/2], with k clipped to N. */
double sr_block_sparse_sparsity(int64_t nblocks, int64_t k);
/* The budget k in [3, nblocks] whose analytic sparsity is closest to target. */
int sr_block_sparse_budget(int64_t nblocks, double target);

void sr_selection_free(sr_selection *sel);
/* For the methods: zeroed row_ptr for this rank's rows (q_heads, nqb set). */
sr_status sr__selection_alloc_rows(const sr_plan *p, sr_selection *sel);
/* Last key block visible from the q-block starting at qpos (bq rows). */
int64_t sr__diag_block(const sr_plan *p, int64_t qpos);



#include "sr_comm.h"
/* Collective. Pools this rank's keys [kv_heads][n_local][d] (backend memory) into block means
 * and all-gathers them over MPI into sum->kmean (host, global block order). */
sr_status sr_summaries_gather(const sr_plan *p, const sr_backend *be, MPI_Comm comm,
                              const void *k_local, sr_summaries *sum);
void sr_summaries_free(sr_summaries *sum);
#endif
