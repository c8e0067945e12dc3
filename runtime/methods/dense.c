/*
 * dense.c — dense causal attention: every key block a q-block can see. Exact; the reference the
 * sparse methods are measured against. No summary.
 */
#include "sr_method.h"
#include "sr_internal.h"

sr_status sr_select_dense(const sr_plan *p, sr_selection *sel) {
  SR_TRY(sr__selection_alloc_rows(p, sel));
  const int64_t rows = (int64_t)p->q_heads * p->nqb_local;
  for (int64_t r = 0; r < rows; r++) {
    int64_t qpos = sr_plan_qblock_global(p, p->rank, r % p->nqb_local) * p->bq;
    sel->row_ptr[r + 1] = sel->row_ptr[r] + sr__diag_block(p, qpos) + 1;
  }
  sel->nnz = sel->row_ptr[rows];
  sel->col = sr__alloc((size_t)(sel->nnz > 0 ? sel->nnz : 1) * sizeof(int32_t));
  if (!sel->col) {
    sr_selection_free(sel);
    return sr__seterr(SR_ERR_NOMEM, "out of memory for the dense selection (%lld blocks)",
                      (long long)sel->nnz);
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t e = sel->row_ptr[r]; e < sel->row_ptr[r + 1]; e++)
      sel->col[e] = (int32_t)(e - sel->row_ptr[r]);
  sel->all_causal = 1; /* lets a backend build the work lists without the columns */
  return SR_OK;
}


static sr_status dense_select(const sr_method_in *in, void *state, sr_selection *sel) {
  (void)state;
  return sr_select_dense(in->p, sel);
}

static double dense_sparsity(const sr_plan *p, const sr_selection *sel, double all) {
  (void)p, (void)sel, (void)all;
  return 0.0;
}

const sr_method_ops sr_method_dense = {
    .id = SR_METHOD_DENSE,
    .name = "dense",
    .phase = "prefill",
    .summarises = "nothing",
    .selects = "every causal key block",
    .formula = "0 (exact)",
    .select = dense_select,
    .sparsity_paper = dense_sparsity,
};
