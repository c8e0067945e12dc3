/*
 * sr_cuda_internal.h — what the files of the CUDA backend share (not installed, CUDA C++).
 *
 * Host arrays that kernels read (CSR lists, slot lists, top-k bounds) travel through
 * sr__cuda_upload(): it copies them into a pinned staging ring on the host and from there,
 * asynchronously on the compute stream, into a device scratch area that grows as needed. A
 * staging slot is reused only after the event recorded behind its last copy has completed,
 * so the host never waits for compute to upload the next launch's lists, and the caller may
 * free or change its host array as soon as the op returns.
 */
#ifndef SR_CUDA_INTERNAL_H
#define SR_CUDA_INTERNAL_H

#include <cuda_runtime.h>

extern "C" {
#include "kernels.h"
#include "sr_internal.h"
}
#include "sr_cuda.h"

/* Device scratch areas, one per purpose (an op may use several at once). */
enum {
  SR_SCRATCH_ATTN = 0,
  SR_SCRATCH_GATHER,
  SR_SCRATCH_TOPK,
  SR_SCRATCH_TOPK_IDX,
  SR_SCRATCH_STORE,    /* store and unstore: one chunk of fp32 values */
  SR_SCRATCH_EST,      /* estimate ops: uploaded run starts, row maxima and inverses */
  SR_SCRATCH_EST_OUT,  /* estimate ops: device sums (int64) and maxima on their way back */
  SR_SCRATCH_DECODE,   /* decode_fwd: the split partials (m, s, acc) */
  SR_SCRATCH_DECODE_UP, /* upload: staged bytes on their way to the caller's buffer */
  SR_SCRATCH_LISTS_IN, /* attn_lists: the uploaded selection, owners, slots, q positions */
  SR_SCRATCH_LISTS,    /* attn_lists: the lists built (live until the next build) */
  SR_SCRATCH_LISTS_TMP, /* attn_lists: the scan's temporary storage */
  SR_SCRATCH_N
};

/* One host array to upload; *dev receives the address of its device copy. */
/* Pieces of one device area start on 16-byte boundaries. */
static inline size_t sr__cuda_align16(size_t x) { return (x + 15) & ~(size_t)15; }

typedef struct sr_cuda_piece {
  const void *host;
  size_t bytes;
  void **dev;
} sr_cuda_piece;

/* Copies n host arrays, packed at 16-byte boundaries, into device scratch area `which` (grown
 * as needed) with one asynchronous copy on the compute stream. Kernels launched after it on
 * the stream see the data; the host arrays may be reused as soon as this returns. */
sr_status sr__cuda_upload(int which, const sr_cuda_piece *pieces, int n);

/* A device scratch area of at least `bytes` (contents undefined), stream-ordered. */
sr_status sr__cuda_scratch(int which, size_t bytes, void **dev);

/* The attn_fwd entry of the table (sr_cuda_attn.cu) and its one-time set-up. */
sr_status sr__cuda_attn_fwd(const sr_attn_args *a);
sr_status sr__cuda_attn_init(void);

/* The decode ops of the table (sr_cuda_decode.cu; kernels.h "Decode"). */
sr_status sr__cuda_decode_fwd(const sr_decode_args *a);
sr_status sr__cuda_page_minmax(const void *k, int64_t nseg, int64_t seg_rows, int d, int64_t lp,
                               int64_t p0, int64_t np, int len, void *pmin, void *pmax);
sr_status sr__cuda_page_scores(const float *q, int nseq, int q_heads, int kv_heads, int per_qhead,
                               const void *pmin, const void *pmax, int64_t lp, int64_t nvalid,
                               int d, float *s);
sr_status sr__cuda_page_topk(const float *s, int64_t nlists, int64_t lp, int64_t nvalid, int k,
                             int32_t *own_row, int32_t *own_len, float *cand);
sr_status sr__cuda_est_colmax(const float *L, int W, int64_t nk, const float *gmax_host,
                              const float *inv_host, int round_bf16, float *colmax_host);
sr_status sr__cuda_upload_bytes(void *dst, const void *src_host, size_t bytes);
sr_status sr__cuda_download_bytes(void *dst_host, const void *src, size_t bytes);

/* attn_lists and event_times (sr_cuda_lists.cu). sr__cuda_ev_mark records the begin (end 0)
 * or the end (end 1) of a device interval of one kind on the compute stream. */
enum { SR_EV_LISTS = 0, SR_EV_ATTN = 1 };
sr_status sr__cuda_attn_lists(const sr_lists_args *a, sr_dev_lists *out);
sr_status sr__cuda_event_times(double *lists_s, double *kernel_s);
sr_status sr__cuda_ev_mark(int kind, int end);

/* Checks the launch that was just made. */
#define SR_CUDA_LAUNCHED(what) SR_TRY(sr__cuda_check(cudaGetLastError(), (what), __FILE__, __LINE__))

#endif
