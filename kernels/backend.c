/*
 * backend.c — backend lookup that does not depend on which backends were compiled in.
 * When the CUDA backend is not built, sr_backend_cuda() says so (backend: auto then falls back
 * to the CPU; backend: cuda is an error naming the reason).
 */
#include "kernels.h"
#include "sr_internal.h"

/* Shapes and CSR sanity shared by every backend (see kernels.h). */
sr_status sr__attn_args_check(const sr_attn_args *a) {
  if (!a) return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: NULL arguments");
  if (a->q_heads <= 0 || a->d <= 0 || a->bq <= 0 || a->bk <= 0 || a->nqb < 0 || a->nq < 0)
    return sr__seterr(SR_ERR_SHAPE,
                      "attn_fwd: bad shape q_heads=%d d=%d bq=%d bk=%d nqb=%d nq=%lld",
                      a->q_heads, a->d, a->bq, a->bk, a->nqb, (long long)a->nq);
  if (a->nq > (int64_t)a->nqb * a->bq)
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: nq=%lld exceeds nqb*bq=%lld", (long long)a->nq,
                      (long long)a->nqb * a->bq);
  if (a->nq == 0 || a->nqb == 0) return SR_OK;
  if (!a->q || !a->qpos || !a->row_ptr || !a->out || !a->lse)
    return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: NULL q/qpos/row_ptr/out/lse");
  /* Lists built by attn_lists live in backend memory (checked while they were built). */
  if (a->lists_dev) {
    if (a->nnz < 0 || a->ncolrow != 0 || (a->nnz > 0 && (!a->slot || !a->kpos || !a->k || !a->v)))
      return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: device lists with nnz=%lld, %lld column rows",
                        (long long)a->nnz, (long long)a->ncolrow);
    return SR_OK;
  }
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  if (a->row_ptr[0] != 0)
    return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: row_ptr[0]=%lld, expected 0",
                      (long long)a->row_ptr[0]);
  for (int64_t r = 0; r < rows; r++)
    if (a->row_ptr[r + 1] < a->row_ptr[r])
      return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: row_ptr decreases at row %lld",
                        (long long)r);
  const int64_t nnz = a->row_ptr[rows];
  if (nnz > 0 && (!a->slot || !a->kpos || !a->k || !a->v))
    return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: NULL slot/kpos/k/v with %lld entries",
                      (long long)nnz);
  for (int64_t e = 0; e < nnz; e++) {
    if (a->slot[e] < 0)
      return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: negative slot %d at entry %lld",
                        (int)a->slot[e], (long long)e);
    /* A column chunk: -kpos keys (1..bk) at colrow[slot .. slot + cnt). */
    if (a->kpos[e] < 0) {
      const int64_t cnt = -a->kpos[e];
      if (cnt > a->bk || !a->colrow || (int64_t)a->slot[e] + cnt > a->ncolrow)
        return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: column chunk of %lld keys at entry %lld "
                          "(bk %d, %lld column rows)", (long long)cnt, (long long)e, a->bk,
                          (long long)a->ncolrow);
    }
  }
  for (int64_t c = 0; c < a->ncolrow; c++)
    if (a->colrow[c] < 0)
      return sr__seterr(SR_ERR_INTERNAL, "attn_fwd: negative column row %d at %lld",
                        (int)a->colrow[c], (long long)c);
  return SR_OK;
}

#ifndef SR_CUDA
const sr_backend *sr_backend_cuda(int local_rank) {
  (void)local_rank;
  sr__seterr(SR_ERR_BACKEND, "backend cuda: this sparsering was built without CUDA "
                             "(configure with nvcc available, -DSR_CUDA=ON)");
  return NULL;
}
#endif
