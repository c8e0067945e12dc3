/*
 * cpu_lists.c — attn_lists on the host: the CPU backend's version of the op the CUDA backend
 * runs on the device (kernels.h "Work lists in backend memory"; kernels/cuda/sr_cuda_lists.cu).
 *
 * The runtime builds CPU work lists itself (runtime/sr_attend.c), so the CPU backend's table
 * leaves attn_lists out. With SR_CPU_ATTN_LISTS=1 in the environment, sr_backend_cpu() returns
 * a table that has it: CPU ranks then run the runtime's device-list path (sr_attend hands the
 * selection to the backend, per-source lists at offsets of one backend array, Block-Sparse ids
 * kept by topk_rows), which the tests compare with the host path on 1 to 4 ranks — the path a
 * multi-GPU run takes, checked where no GPU is. Same order as the host split, so the same
 * output bit for bit.
 */
#include "cpu_internal.h"
#include "sr_internal.h"
#include "sr_pairs.h"

#include <stdlib.h>
#include <string.h>

/* The lists of the last build (backend memory = host memory here), kept until the next. */
static struct {
  int64_t *rp, *kpos;
  int32_t *slot;
  size_t rp_cap, kpos_cap, slot_cap;
} L;

static int grow(void **p, size_t *cap, size_t bytes) {
  if (*cap >= bytes) return 1;
  void *q = realloc(*p, bytes);
  if (!q) return 0;
  *p = q;
  *cap = bytes;
  return 1;
}

sr_status sr__cpu_attn_lists(const sr_lists_args *a, sr_dev_lists *out) {
  if (!a || !out || !a->row_ptr || !a->owner || !a->slot_of || !a->qpos || !out->nnz || !out->off)
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: NULL arguments");
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  const int P = a->nsrc;
  if (P < 1 || P > SR_LISTS_MAX_SRC || a->group < 1 || a->nkb < 0 || rows >= INT32_MAX)
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: bad shape (%d sources, %lld rows)", P,
                      (long long)rows);
  const int64_t nnz = a->row_ptr[rows], ld = rows + 1;
  const int32_t *col = a->col_dev ? a->col_dev : a->col; /* backend memory is host memory */
  const size_t n1 = (size_t)(nnz > 0 ? nnz : 1);
  if (!grow((void **)&L.rp, &L.rp_cap, (size_t)P * (size_t)ld * sizeof(int64_t)) ||
      !grow((void **)&L.kpos, &L.kpos_cap, n1 * sizeof(int64_t)) ||
      !grow((void **)&L.slot, &L.slot_cap, n1 * sizeof(int32_t)))
    return sr__seterr(SR_ERR_NOMEM, "attn_lists: out of memory for %lld entries", (long long)nnz);
  int64_t cnt[SR_LISTS_MAX_SRC] = {0};
  for (int s = 0; s < P; s++) L.rp[(size_t)s * (size_t)ld] = 0;
  /* Count per (source, row) and check the ids. */
  for (int64_t r = 0; r < rows; r++) {
    int64_t c[SR_LISTS_MAX_SRC] = {0};
    for (int64_t e = a->row_ptr[r]; e < a->row_ptr[r + 1]; e++) {
      const int64_t j = col ? col[e] : e - a->row_ptr[r];
      if (j < 0 || j >= a->nkb)
        return sr__seterr(SR_ERR_INTERNAL, "attn_lists: a selected key block is out of range");
      c[a->owner[j]]++;
    }
    for (int s = 0; s < P; s++) {
      cnt[s] += c[s];
      L.rp[(size_t)s * (size_t)ld + (size_t)r + 1] = cnt[s];
    }
  }
  int64_t off = 0;
  for (int s = 0; s < P; s++) {
    out->nnz[s] = cnt[s];
    out->off[s] = off;
    off += cnt[s];
  }
  /* Fill in the selection's order. */
  uint64_t pairs = 0;
  for (int64_t r = 0; r < rows; r++) {
    const int m = (int)(r % a->nqb), kvh = (int)(r / a->nqb) / a->group;
    int64_t f[SR_LISTS_MAX_SRC];
    for (int s = 0; s < P; s++) f[s] = out->off[s] + L.rp[(size_t)s * (size_t)ld + (size_t)r];
    for (int64_t e = a->row_ptr[r]; e < a->row_ptr[r + 1]; e++) {
      const int64_t j = col ? col[e] : e - a->row_ptr[r];
      const int64_t at = f[a->owner[j]]++;
      L.slot[at] = a->slot_of[(int64_t)kvh * a->nkb + j];
      L.kpos[at] = j * a->bk;
      pairs += (uint64_t)sr_pairs_of_blocks(a->qpos[m], a->bq, j * a->bk, a->bk);
    }
  }
  out->row_ptr = L.rp;
  out->slot = L.slot;
  out->kpos = L.kpos;
  out->pairs = pairs;
  return SR_OK;
}
