/*
 * sr_select.c — what every selection method shares: the CSR's allocation and release, and the
 * last key block a q-block can see. The methods themselves are in runtime/methods/.
 */
#include "sr_select.h"
#include "sr_internal.h"

#include <limits.h>
#include <stdlib.h>

void sr_selection_free(sr_selection *sel) {
  if (sel->col_be && sel->col_be->free) sel->col_be->free(sel->col_dev);
  sr__free(sel->row_ptr);
  sr__free(sel->col);
  sr__free(sel->vrow_ptr);
  sr__free(sel->vcol);
  *sel = (sr_selection){0};
}

/* Last key block visible from the q-block starting at qpos (bq rows). */
int64_t sr__diag_block(const sr_plan *p, int64_t qpos) { return (qpos + p->bq - 1) / p->bk; }

sr_status sr__selection_alloc_rows(const sr_plan *p, sr_selection *sel) {
  *sel = (sr_selection){.q_heads = p->q_heads, .nqb = p->nqb_local};
  /* col holds key-block ids as int32 and rows are counted by MPI as int: sr_plan_init bounds
   * kv_heads x nkb_global and q_heads x nqb_global by INT32_MAX. */
  SR_ASSERT(p->nkb_global <= INT32_MAX && (int64_t)p->q_heads * p->nqb_local <= INT32_MAX);
  sel->row_ptr = sr__calloc((size_t)p->q_heads * (size_t)p->nqb_local + 1, sizeof(int64_t));
  if (!sel->row_ptr) return sr__seterr(SR_ERR_NOMEM, "out of memory for the selection");
  return SR_OK;
}

