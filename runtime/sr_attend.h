/*
 * sr_attend.h — turns a selection into per-source work lists and computes attention as the
 * ring delivers KV: local blocks straight into the accumulators, every later source into a
 * partial (out, lse) that is merged with the log-sum-exp rule.
 */
#ifndef SR_ATTEND_H
#define SR_ATTEND_H

#include "kernels.h"
#include "sr_exchange.h"
#include "sr_plan.h"
#include "sr_select.h"

typedef struct sr_attend {
  const sr_plan *plan;
  const sr_xplan *x;      /* the exchange plan the ring runs (pool sizes per source) */
  const sr_backend *be;
  const void *q;          /* [q_heads][n_local][d] backend memory, storage type */
  int64_t *qpos;          /* [nqb_local] */
  int nsrc;               /* = nranks */
  int64_t **row_ptr;      /* per source: [q_heads*nqb_local + 1] */
  int32_t **slot;         /* per source: [nnz_s] */
  int64_t **kpos;         /* per source: [nnz_s] */
  int64_t *nnz;           /* per source */
  int32_t **colrow;       /* per source: pool rows of its column chunks (kernels.h)      */
  int64_t *ncolrow;       /* per source */
  float *out, *lse;       /* accumulators [q_heads][n_local][d], [q_heads][n_local] (backend) */
  float *part_out, *part_lse; /* backend scratch for non-local sources */
  float scale;
  uint64_t pairs_computed;    /* visible (q, k) pairs over all sources, this rank */
  int dev_lists;              /* 1: row_ptr/slot/kpos are backend memory (attn_lists), owned
                                 by the backend; 0: host arrays owned here */
} sr_attend;

/* Splits the selection by source rank, mapping blocks to slots with x->slot_of. out/lse are
 * the caller's accumulators (written entirely by the local step). Where the backend has
 * attn_lists and the selection has whole blocks only, the lists are built in backend memory
 * (valid until the next sr_attend_init); otherwise on the host. */
sr_status sr_attend_init(sr_attend *a, const sr_plan *p, const sr_backend *be, const void *q,
                         const sr_selection *sel, const sr_xplan *x, float *out, float *lse);
void sr_attend_free(sr_attend *a);
/* The sr_step_fn for sr_ring_run (ctx = sr_attend*). */
sr_status sr_attend_step(void *ctx, int step, int src, const void *k, const void *v);

/* Visible causal (q, k) pairs between q-block starting at qpos (bq rows) and k-block starting at
 * kpos (bk keys). */
int64_t sr_block_pairs(int64_t qpos, int bq, int64_t kpos, int bk);

#endif
