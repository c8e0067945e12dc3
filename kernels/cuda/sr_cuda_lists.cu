/*
 * sr_cuda_lists.cu — attn_lists and event_times of the CUDA backend.
 *
 * attn_lists builds the per-source work lists of a block selection on the device (kernels.h
 * "Work lists in backend memory"): what the runtime's host code does entry by entry, without
 * staging 12 bytes per entry through pinned memory. Three passes on the compute stream:
 *   count  one warp per row: for each source, a ballot over 32 entries at a time counts the
 *          row's entries from that source into cnt[s][r + 1];
 *   scan   an inclusive scan per source (CUB) turns the counts into row_ptr[s][0..rows];
 *   fill   one warp per row again: ballot compaction writes each entry at its place in its
 *          source's lists, in the selection's order, and sums the visible (q, k) pairs.
 * A last one-thread kernel gathers the entries per source, their offsets, the pairs and a
 * range flag into one small array; the host downloads it (the one wait of the op).
 *
 * event_times sums CUDA-event intervals recorded around every attn_lists build and every
 * attention kernel (sr__cuda_ev_mark), for the run report's per-phase device times.
 */
#include <cub/device/device_scan.cuh>

#include "sr_cuda_internal.h"
#include "sr_pairs.h"

#define LW 8         /* warps per CTA of the count and fill kernels */
#define MAX_SRC SR_LISTS_MAX_SRC

/* ---- event intervals --------------------------------------------------------------------- */

#define EV_CAP 512
static struct {
  cudaEvent_t ev[2][EV_CAP][2]; /* [kind][i][begin/end] */
  int n[2];
  double acc[2]; /* seconds of intervals already folded in */
  int ready;
} E;

static sr_status ev_fold(int kind) {
  for (int i = 0; i < E.n[kind]; i++) {
    float ms = 0.0f;
    SR_CUDA(cudaEventSynchronize(E.ev[kind][i][1]));
    SR_CUDA(cudaEventElapsedTime(&ms, E.ev[kind][i][0], E.ev[kind][i][1]));
    E.acc[kind] += 1e-3 * ms;
  }
  E.n[kind] = 0;
  return SR_OK;
}

/* Records the begin (end = 0) or end (end = 1) of an interval of `kind` on the compute
 * stream. */
sr_status sr__cuda_ev_mark(int kind, int end) {
  if (!E.ready) {
    for (int k = 0; k < 2; k++)
      for (int i = 0; i < EV_CAP; i++)
        for (int b = 0; b < 2; b++) SR_CUDA(cudaEventCreate(&E.ev[k][i][b]));
    E.ready = 1;
  }
  if (!end && E.n[kind] == EV_CAP) SR_TRY(ev_fold(kind)); /* full: fold the finished ones */
  const int i = end ? E.n[kind] - 1 : E.n[kind];
  if (i < 0) return SR_OK;
  SR_CUDA(cudaEventRecord(E.ev[kind][i][end], sr__cuda_compute_stream()));
  if (!end) E.n[kind]++;
  return SR_OK;
}

sr_status sr__cuda_event_times(double *lists_s, double *kernel_s) {
  SR_TRY(ev_fold(SR_EV_LISTS));
  SR_TRY(ev_fold(SR_EV_ATTN));
  if (lists_s) *lists_s = E.acc[SR_EV_LISTS];
  if (kernel_s) *kernel_s = E.acc[SR_EV_ATTN];
  E.acc[0] = E.acc[1] = 0.0;
  return SR_OK;
}

/* ---- the list builder -------------------------------------------------------------------- */

typedef struct lists_dev {
  int rows, nqb, group, bq, bk, nsrc;
  int64_t nkb;
  const int64_t *sel_ptr, *qpos;
  const int32_t *col, *owner, *slot_of; /* col NULL: every causal block */
  int64_t *rp;                          /* [nsrc][rows + 1] */
  int32_t *slot;
  int64_t *kpos;
  int64_t *info; /* [nsrc] nnz, [nsrc] off, pairs, bad */
} lists_dev;

static __device__ __forceinline__ int64_t col_of(const lists_dev &L, int64_t e, int64_t e0) {
  return L.col ? (int64_t)L.col[e] : e - e0;
}

static __global__ void __launch_bounds__(LW * 32) k_lists_count(lists_dev L) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * LW + (threadIdx.x >> 5);
  if (r >= L.rows) return;
  const int64_t e0 = L.sel_ptr[r], e1 = L.sel_ptr[r + 1];
  const int64_t ld = (int64_t)L.rows + 1;
  if (r == 0 && lane < L.nsrc) L.rp[(int64_t)lane * ld] = 0;
  if (r == 0 && lane + 32 < L.nsrc) L.rp[(int64_t)(lane + 32) * ld] = 0;
  if (L.nsrc == 1) {
    if (lane == 0) L.rp[r + 1] = e1 - e0;
    return;
  }
  int64_t c0 = 0, c1 = 0; /* lane s counts source s, lane s the source s + 32 in c1 */
  for (int64_t base = e0; base < e1; base += 32) {
    const int64_t e = base + lane;
    int o = -1;
    if (e < e1) {
      const int64_t j = col_of(L, e, e0);
      if (j >= 0 && j < L.nkb) o = L.owner[j];
    }
    for (int s = 0; s < L.nsrc; s++) {
      const int c = __popc(__ballot_sync(0xffffffffu, o == s));
      if (s == lane) c0 += c;
      if (s == lane + 32) c1 += c;
    }
  }
  if (lane < L.nsrc) L.rp[(int64_t)lane * ld + r + 1] = c0;
  if (lane + 32 < L.nsrc) L.rp[(int64_t)(lane + 32) * ld + r + 1] = c1;
}

static __global__ void k_lists_totals(lists_dev L) {
  const int64_t ld = (int64_t)L.rows + 1;
  int64_t off = 0;
  for (int s = 0; s < L.nsrc; s++) {
    const int64_t n = L.rp[(int64_t)s * ld + L.rows];
    L.info[s] = n;
    L.info[L.nsrc + s] = off;
    off += n;
  }
  L.info[2 * L.nsrc] = 0;     /* pairs, summed by the fill */
  L.info[2 * L.nsrc + 1] = 0; /* bad: a column out of range */
}

static __global__ void __launch_bounds__(LW * 32) k_lists_fill(lists_dev L) {
  __shared__ int64_t cur[LW][MAX_SRC];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t r = (int64_t)blockIdx.x * LW + w;
  if (r >= L.rows) return;
  const int64_t e0 = L.sel_ptr[r], e1 = L.sel_ptr[r + 1];
  const int64_t ld = (int64_t)L.rows + 1;
  const int m = (int)(r % L.nqb), kvh = (int)(r / L.nqb) / L.group;
  const int64_t qp = L.qpos[m];
  for (int s = lane; s < L.nsrc; s += 32)
    cur[w][s] = L.info[L.nsrc + s] + L.rp[(int64_t)s * ld + r];
  __syncwarp();
  unsigned long long pairs = 0;
  int bad = 0;
  for (int64_t base = e0; base < e1; base += 32) {
    const int64_t e = base + lane;
    int o = -1;
    int64_t j = 0;
    if (e < e1) {
      j = col_of(L, e, e0);
      if (j >= 0 && j < L.nkb) {
        o = L.owner[j];
        pairs += (unsigned long long)sr_pairs_of_blocks(qp, L.bq, j * L.bk, L.bk);
      } else {
        bad = 1;
      }
    }
    if (L.nsrc == 1) {
      if (o == 0) {
        const int64_t at = cur[w][0] + (e - e0);
        L.slot[at] = L.slot_of[(int64_t)kvh * L.nkb + j];
        L.kpos[at] = j * L.bk;
      }
      continue;
    }
    for (int s = 0; s < L.nsrc; s++) {
      const unsigned b = __ballot_sync(0xffffffffu, o == s);
      if (!b) continue;
      if (o == s) {
        const int64_t at = cur[w][s] + __popc(b & ((1u << lane) - 1u));
        L.slot[at] = L.slot_of[(int64_t)kvh * L.nkb + j];
        L.kpos[at] = j * L.bk;
      }
      __syncwarp();
      if (lane == 0) cur[w][s] += __popc(b);
      __syncwarp();
    }
  }
  for (int sh = 16; sh > 0; sh >>= 1) {
    pairs += __shfl_down_sync(0xffffffffu, pairs, sh);
    bad |= __shfl_down_sync(0xffffffffu, bad, sh);
  }
  if (lane == 0) {
    if (pairs) atomicAdd((unsigned long long *)&L.info[2 * L.nsrc], pairs);
    if (bad) L.info[2 * L.nsrc + 1] = 1;
  }
}

/* Several sources: count per (source, row), scan each source's counts into its row_ptr,
 * then fill. */
static sr_status split_sources(lists_dev &L, int nsrc, unsigned grid, size_t b_rp,
                               cudaStream_t st) {
  const int64_t ld = (int64_t)L.rows + 1;
  if (grid > 0) {
    k_lists_count<<<grid, LW * 32, 0, st>>>(L);
    SR_CUDA_LAUNCHED("attn_lists: count");
  } else {
    SR_CUDA(cudaMemsetAsync(L.rp, 0, b_rp, st));
  }
  /* Inclusive scan of each source's counts (element 0 is 0) gives its row_ptr. */
  size_t tmp_bytes = 0;
  SR_CUDA(cub::DeviceScan::InclusiveSum(NULL, tmp_bytes, L.rp, L.rp, (int)ld, st));
  void *tmp = NULL;
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_LISTS_TMP, tmp_bytes > 0 ? tmp_bytes : 16, &tmp));
  for (int s = 0; s < nsrc && grid > 0; s++)
    SR_CUDA(cub::DeviceScan::InclusiveSum(tmp, tmp_bytes, L.rp + (int64_t)s * ld,
                                          L.rp + (int64_t)s * ld, (int)ld, st));
  k_lists_totals<<<1, 1, 0, st>>>(L);
  SR_CUDA_LAUNCHED("attn_lists: totals");
  if (grid > 0) {
    k_lists_fill<<<grid, LW * 32, 0, st>>>(L);
    SR_CUDA_LAUNCHED("attn_lists: fill");
  }
  return SR_OK;
}

sr_status sr__cuda_attn_lists(const sr_lists_args *a, sr_dev_lists *out) {
  if (!a || !out || !a->row_ptr || !a->owner || !a->slot_of || !a->qpos || !out->nnz || !out->off)
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: NULL arguments");
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  if (a->nsrc < 1 || a->nsrc > MAX_SRC || a->group < 1 || a->nkb < 0 || rows >= INT32_MAX ||
      a->bq < 1 || a->bk < 1)
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: bad shape (%d sources, %lld rows)", a->nsrc,
                      (long long)rows);
  const int64_t nnz = a->row_ptr[rows];
  SR_TRY(sr__cuda_ev_mark(SR_EV_LISTS, 0));
  lists_dev L;
  L.rows = (int)rows;
  L.nqb = a->nqb;
  L.group = a->group;
  L.bq = a->bq;
  L.bk = a->bk;
  L.nsrc = a->nsrc;
  L.nkb = a->nkb;
  const int64_t ld = rows + 1;
  sr_cuda_piece in[5] = {
      {a->row_ptr, (size_t)ld * sizeof(int64_t), (void **)&L.sel_ptr},
      {a->qpos, (size_t)a->nqb * sizeof(int64_t), (void **)&L.qpos},
      {a->owner, (size_t)a->nkb * sizeof(int32_t), (void **)&L.owner},
      {a->slot_of, (size_t)a->kv_heads * (size_t)a->nkb * sizeof(int32_t), (void **)&L.slot_of},
      {a->col, (size_t)nnz * sizeof(int32_t), (void **)&L.col},
  };
  /* The ids: already in backend memory (col_dev), uploaded (col), or implied (dense). */
  const int up_col = !a->col_dev && a->col;
  SR_TRY(sr__cuda_upload(SR_SCRATCH_LISTS_IN, in, up_col ? 5 : 4));
  if (!up_col) L.col = a->col_dev;

  /* Outputs: [rp][info][slot][kpos], 16-byte aligned pieces of one scratch area. */
  const size_t b_rp = sr__cuda_align16((size_t)a->nsrc * (size_t)ld * sizeof(int64_t));
  const size_t b_info = sr__cuda_align16((size_t)(2 * a->nsrc + 2) * sizeof(int64_t));
  const size_t b_slot = sr__cuda_align16((size_t)nnz * sizeof(int32_t));
  const size_t b_kpos = (size_t)nnz * sizeof(int64_t);
  char *o = NULL;
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_LISTS, b_rp + b_info + b_slot + b_kpos + 16, (void **)&o));
  L.rp = (int64_t *)o;
  L.info = (int64_t *)(o + b_rp);
  L.slot = (int32_t *)(o + b_rp + b_info);
  L.kpos = (int64_t *)(o + b_rp + b_info + b_slot);

  cudaStream_t st = sr__cuda_compute_stream();
  const unsigned grid = (unsigned)((rows + LW - 1) / LW);
  if (a->nsrc == 1) { /* one source: its row_ptr is the selection's, entries start at 0 */
    L.rp = (int64_t *)L.sel_ptr;
    SR_CUDA(cudaMemsetAsync(L.info, 0, b_info, st));
    if (grid > 0) {
      k_lists_fill<<<grid, LW * 32, 0, st>>>(L);
      SR_CUDA_LAUNCHED("attn_lists: fill");
    }
  } else {
    SR_TRY(split_sources(L, a->nsrc, grid, b_rp, st));
  }
  SR_TRY(sr__cuda_ev_mark(SR_EV_LISTS, 1));
  int64_t info[2 * MAX_SRC + 2];
  SR_CUDA(cudaMemcpyAsync(info, L.info, (size_t)(2 * a->nsrc + 2) * sizeof(int64_t),
                          cudaMemcpyDeviceToHost, st));
  SR_CUDA(cudaStreamSynchronize(st));
  if (info[2 * a->nsrc + 1])
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: a selected key block is out of range");
  if (a->nsrc == 1) info[0] = nnz, info[1] = 0; /* not counted on the device */
  int64_t sum = 0;
  for (int s = 0; s < a->nsrc; s++) {
    out->nnz[s] = info[s];
    out->off[s] = info[a->nsrc + s];
    sum += info[s];
  }
  if (sum != nnz)
    return sr__seterr(SR_ERR_INTERNAL, "attn_lists: %lld entries split, %lld selected",
                      (long long)sum, (long long)nnz);
  out->row_ptr = L.rp;
  out->slot = L.slot;
  out->kpos = L.kpos;
  out->pairs = (uint64_t)info[2 * a->nsrc];
  return SR_OK;
}
