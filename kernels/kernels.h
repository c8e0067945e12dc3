/*
 * kernels.h — the backend table: every compute operation sparsering needs, behind function
 * pointers chosen at run time (backend: auto | cpu; cuda comes in its own issue).
 *
 * Memory: every pointer given to an op is *backend memory* (host memory for the CPU backend,
 * device memory for CUDA) unless its comment says "host". Q, K and V are held in the
 * backend's storage type (elem_bytes: fp32 on the CPU, bf16 on CUDA); everything computed
 * (out, lse, means, scores) is fp32. Ops may run asynchronously on the backend's stream;
 * `sync` waits for them (before host code reads a result or a timer stops).
 *
 * Layouts (all row-major):
 *   Q        [q_heads ][nq     ][d]   rows of this rank, in local order
 *   K, V     slot-addressed pool: slot s holds bk rows of d values at k + s*bk*d
 *            (the local shard [kv_heads][n_local][d] is such a pool with
 *             slot = kv_head * (n_local/bk) + local_block; received blocks are packed pools)
 *   out      [q_heads][nq][d],  lse [q_heads][nq]   (natural log; -INFINITY for empty rows)
 *
 * Work lists are CSR over (q-head, local q-block) rows: row r = h * nqb + m lists entries
 * row_ptr[r] .. row_ptr[r+1]-1; entry e names a KV slot (slot[e]) and the global position of
 * the first key of that slot (kpos[e]). Causality is applied per element: key position
 * kpos[e] + j is visible to query position qpos[m] + i iff kpos[e] + j <= qpos[m] + i and
 * kpos[e] + j < kv_limit. Rows i >= nq (the tail of a partial last q-block) are not written.
 * GQA: the kv head of q-head h is h / (q_heads / kv_heads); slots already name the kv-head's
 * data, so K/V are never copied per q-head.
 *
 * Column entries (Vertical-Slash, FlexPrefill: docs/METHODS.md §2.1). An entry with
 * kpos[e] < 0 is a chunk of cnt = -kpos[e] gathered key columns (1 <= cnt <= bk) instead of
 * a block: its keys are the pool rows colrow[slot[e]], ..., colrow[slot[e] + cnt - 1] (pool
 * row r is the d values at k + r*d, so slot s's block is rows s*bk .. s*bk+bk-1), and every
 * one of them is visible to every query row of the q-block (no causal mask, no kv_limit:
 * the selection only lists columns before the q-block's first query). The kernel gathers the
 * rows into a packed K/V tile and runs the same online softmax as for a block.
 */
#ifndef SR_KERNELS_H
#define SR_KERNELS_H

#include "sparsering.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sr_attn_args {
  int q_heads;        /* number of q-heads in q/out/lse                              */
  int d;              /* head dim                                                      */
  int bq, bk;         /* block sizes (rows per q-block, keys per slot)                */
  int nqb;            /* q-blocks per head                                             */
  int64_t nq;         /* valid query rows per head (<= nqb*bq); q/out/lse row stride   */
  const void *q;      /* [q_heads][nq][d] storage type                                 */
  const int64_t *qpos;/* [nqb] host: global position of the first row of each q-block  */
  const void *k, *v;  /* slot pools (storage type), slot s at element s*bk*d           */
  const int64_t *row_ptr; /* [q_heads*nqb + 1] host                                      */
  const int32_t *slot;    /* [nnz] host: slot of each entry                              */
  const int64_t *kpos;    /* [nnz] host: global position of the slot's first key; < 0:  */
                          /*   a column chunk of -kpos[e] keys (see above)               */
  const int32_t *colrow;  /* [ncolrow] host: pool rows of the column chunks (NULL if none) */
  int64_t ncolrow;
  int64_t kv_limit;   /* keys at positions >= kv_limit are masked (sequence length)   */
  float scale;        /* softmax scale, usually 1/sqrt(d)                              */
  float *out;         /* [q_heads][nq][d] written for every row (0 for empty rows)     */
  float *lse;         /* [q_heads][nq]    natural-log sum-exp, -INFINITY for empty rows */
  int lists_dev;      /* 1: row_ptr, slot, kpos are backend memory from attn_lists (the  */
  int64_t nnz;        /*    caller gives their nnz; no column chunks); 0: host arrays    */
  int64_t kv_rows;    /* rows of d elements in each of the k and v pools, or 0 if not    */
                      /*   known (kernels that copy whole tiles by TMA then do without)  */
} sr_attn_args;

/* ---- Work lists in backend memory (optional op attn_lists) ----
 * Splits a block selection by source rank into the per-source lists attn_fwd takes, as the
 * runtime's host code does (runtime/sr_attend.c): for row r = h * nqb + m and each entry e of
 * the selection's row, j = col[e] goes to source owner[j] with slot slot_of[(h / group) * nkb
 * + j] and kpos j * bk, in the selection's order. col NULL: every causal block, col[e] = e -
 * row_ptr[r]. */
#define SR_LISTS_MAX_SRC 64 /* sources attn_lists takes; more: the runtime builds on the host */
typedef struct sr_lists_args {
  int q_heads, group, nqb, bq, bk, nsrc;
  int kv_heads;
  int64_t nkb;              /* key blocks of the whole sequence                            */
  const int64_t *row_ptr;   /* host [q_heads*nqb + 1]: the selection                       */
  const int32_t *col;       /* host [nnz] global key-block ids, or NULL (every causal block) */
  const int32_t *col_dev;   /* backend [nnz]: the same ids already in backend memory (used
                               instead of col when not NULL)                                  */
  const int32_t *owner;     /* host [nkb]: source of each key block, 0 <= owner < nsrc       */
  const int32_t *slot_of;   /* host [kv_heads * nkb]: slot of each (kv-head, block)          */
  const int64_t *qpos;      /* host [nqb]: first query position of each q-block              */
} sr_lists_args;

typedef struct sr_dev_lists {
  const int64_t *row_ptr;   /* backend [nsrc][rows + 1], each source's counted from 0        */
  const int32_t *slot;      /* backend: every source's entries, source after source          */
  const int64_t *kpos;
  int64_t *nnz;             /* host [nsrc], the caller's array: entries per source           */
  int64_t *off;             /* host [nsrc], the caller's array: first entry of each source   */
  uint64_t pairs;           /* visible (q, k) pairs over all entries (sr_block_pairs)        */
} sr_dev_lists;

/* ---- Decode (one new token per sequence; docs/DESIGN.md "Decode") ----
 * The KV cache of a rank is a pool of segments, one per (sequence b, kv-head g): segment
 * s = b * kv_heads + g holds seg_rows rows of d values at k + s * seg_rows * d (v alike).
 * The keys a list attends are given as entries (row, len): segment rows row .. row + len - 1,
 * 0 <= len <= 16 (len 0: no rows; the entry is padding). A list's keys are the union of
 *   - its own entries:    own_row/own_len [nlists][own_stride] (own_stride may be 0),
 *   - the shared entries: shared_row/shared_len [nshared], the same for every list,
 *   - the tail entry:     rows tail_row .. tail_row + tail_len - 1 (tail_len may be 0).
 * The caller guarantees that no row appears twice in a list. Lists: per_qhead 0: list
 * l = b * kv_heads + g serves every q-head h of kv-head g (h / group == g: one read of the
 * keys serves the whole group); per_qhead 1: l = b * q_heads + h, segment b * kv_heads + h /
 * group. Output per (b, h): the exact softmax(scale * q . k) weighted mean of v over the
 * list's keys, and lse = log sum exp (natural log); (0, -INFINITY) for an empty list. */
typedef struct sr_decode_args {
  int nseq, q_heads, kv_heads, d;
  int per_qhead;
  const float *q;        /* [nseq][q_heads][d] fp32                                      */
  const void *k, *v;     /* [nseq * kv_heads][seg_rows][d] storage type                  */
  int64_t seg_rows;
  int64_t own_stride;    /* entries per list in own_row/own_len                          */
  const int32_t *own_row, *own_len;       /* [nlists][own_stride] backend memory        */
  int64_t nshared;
  const int32_t *shared_row, *shared_len; /* [nshared] backend memory                   */
  int32_t tail_row, tail_len;
  float scale;
  float *out;            /* [nseq][q_heads][d] fp32                                      */
  float *lse;            /* [nseq][q_heads]                                              */
} sr_decode_args;

typedef struct sr_backend {
  const char *name;
  size_t elem_bytes; /* bytes of one stored q/k/v element (4: fp32, 2: bf16) */

  /* ---- memory (all synchronous with respect to the host unless noted) ---- */
  /* Backend memory of `bytes` bytes (64-byte aligned on the CPU). */
  sr_status (*alloc)(size_t bytes, void **p);
  void (*free)(void *p); /* NULL is fine */
  /* Optional (NULL: the caller's own host allocation): host memory that copy_in / copy_out
   * move at the link's full speed (page-locked on CUDA; kept for reuse after host_free, so
   * a run pins its layer buffers once). host_free takes only what host_alloc gave. */
  sr_status (*host_alloc)(size_t bytes, void **p);
  void (*host_free)(void *p);
  /* n host floats -> backend storage type (rounding to bf16 on CUDA). */
  sr_status (*store)(void *dst, const float *src_host, size_t n);
  /* n fp32 values host -> backend memory, and backend -> host (waits for pending work). */
  sr_status (*copy_in)(float *dst, const float *src_host, size_t n);
  sr_status (*copy_out)(float *dst_host, const float *src, size_t n);
  /* Packs items: dst item i = pool item slots_host[i], each item_elems storage elements. */
  sr_status (*gather)(void *dst, const void *pool, const int32_t *slots_host, int64_t n,
                      size_t item_elems);
  /* n storage elements of backend memory -> n host floats (bf16 widened on CUDA). */
  sr_status (*unstore)(float *dst_host, const void *src, size_t n);
  /* Waits until every op issued so far has finished. */
  sr_status (*sync)(void);

  /* ---- compute ---- */
  /* Partial attention of the listed blocks (a flash-attention forward with online softmax).
   * Output is the exact softmax-weighted mean over the visible keys of the listed slots. */
  sr_status (*attn_fwd)(const sr_attn_args *a);
  /* Optional (NULL: the runtime builds the lists on the host). Builds the per-source lists
   * of a block selection in backend memory (sr_lists_args above); they stay valid until the
   * next attn_lists call. Waits for the build (one small download). */
  sr_status (*attn_lists)(const sr_lists_args *a, sr_dev_lists *out);
  /* Optional: device time (seconds, CUDA events) of the attn_lists builds and of the
   * attn_fwd kernels completed since the last call; resets. Waits for pending work. */
  sr_status (*event_times)(double *lists_s, double *kernel_s);
  /* Log-sum-exp merge: (acc_out, acc_lse) <- merge((acc_out, acc_lse), (part_out, part_lse))
   * for `rows` rows of d values. Rows whose lse is -INFINITY contribute nothing; a row with
   * both -INFINITY stays (0, -INFINITY). */
  sr_status (*merge)(float *acc_out, float *acc_lse, const float *part_out,
                     const float *part_lse, int64_t rows, int d);
  /* Mean pooling of blocks: x [heads][n][d] -> y [heads][ceil(n/b)][d]; a partial last
   * block is averaged over its valid rows. */
  sr_status (*pool_mean)(const void *x, int heads, int64_t n, int d, int b, float *y);
  /* Block scores for one head: s[m][j] = dot(a[m], bmat[j]) (unscaled), a [na][d],
   * bmat [nb][d], s [na][nb]. */
  sr_status (*block_scores)(const float *a, int64_t na, const float *bmat, int64_t nb, int d,
                            float *s);
  /* Host: indices of the k largest of x[0..n) (ties broken by the lower index), written to
   * idx in descending score order. k <= n. x and idx are host memory on every backend. */
  sr_status (*topk)(const float *x, int64_t n, int k, int32_t *idx);
  /* Block-Sparse rows of a score tile (docs/METHODS.md §2.3): for row i of s (backend memory,
   * row stride ld), the candidates are s[i][0..causal[i]) with entries 0, causal[i]-1 and
   * causal[i]-2 forced to +inf; the keep[i] best (ties: lower index) are written ascending to
   * idx_host[i*K ...]. causal, keep: host arrays of `rows`; keep[i] <= min(causal[i], K).
   * csr (backend memory, may be NULL): the same kept ids also written rows back to back (row i
   * at csr + keep[0] + ... + keep[i-1]), a slice of the selection's CSR that stays with the
   * backend. May overwrite s. */
  sr_status (*topk_rows)(float *s, int64_t rows, int64_t ld, const int64_t *causal_host,
                         const int32_t *keep_host, int K, int32_t *idx_host, int32_t *csr);

  /* ---- Vertical-Slash / FlexPrefill estimate (docs/METHODS.md §2.1-2.2) ----
   * One q-head at a time: the W window queries (the last W of the sequence, global positions
   * qpos0 .. qpos0+W-1, fp32 backend memory [W][d]) against this rank's nk keys of the q-head's
   * kv-head (storage type, [nk][d], backend memory). Local key j has global position
   * run_start[j / run_len] + j % run_len (run_start: host array of nk / run_len entries).
   * L [W][nk] fp32 backend memory. Every op is deterministic (the same value for the same
   * inputs, whatever nk is), so that the summed results do not depend on how the keys are
   * split over ranks. Sums are fixed point, units of 2^-SR_EST_FIX_BITS (integer addition is
   * associative: any split, any order, the same bits). */
  /* L[i][j] = scale * dot(qw[i], k[j]) (fp32, dims in ascending order), -INFINITY where the
   * key's position > qpos0 + i. */
  sr_status (*est_scores)(const float *qw, int W, int64_t qpos0, const void *k, int64_t nk,
                          const int64_t *run_start_host, int64_t run_len, int d, float scale,
                          float *L);
  /* max_host[i] = max_j L[i][j] (-INFINITY when the row has no visible key). */
  sr_status (*est_rowmax)(const float *L, int W, int64_t nk, float *max_host);
  /* sum_host[i] = sum_j fix(expf(L[i][j] - gmax_host[i])), fix(x) = (int64)(x * 2^32 + 0.5);
   * rows with gmax = -INFINITY give 0. */
  sr_status (*est_rowsum)(const float *L, int W, int64_t nk, const float *gmax_host,
                          int64_t *sum_host);
  /* A = expf(L[i][j] - gmax[i]) * inv_host[i] (fp32; rounded to bf16 when round_bf16), then
   *   vert_host[j]  += sum_i fix(A)                       for every local key j,
   *   slash_host[o] += sum_{i,j: o = qpos0+i-pos(j) >= 0} fix(A)   o in [0, n).
   * Both host arrays are added to (the caller zeroes them). */
  sr_status (*est_accum)(const float *L, int W, int64_t nk, int64_t qpos0,
                         const int64_t *run_start_host, int64_t run_len, const float *gmax_host,
                         const float *inv_host, int round_bf16, int64_t n, int64_t *vert_host,
                         int64_t *slash_host);
  /* ---- decode (docs/METHODS.md §2.4-2.6; kernels.h "Decode" above) ---- */
  /* Split-KV attention of one new query per (sequence, q-head) over listed cache rows. */
  sr_status (*decode_fwd)(const sr_decode_args *a);
  /* Quest page summaries: for every segment s < nseg and page p in [p0, p0 + np), pmin/pmax
   * [nseg][lp][d] (storage type) get the element-wise min / max of segment rows
   * [16p, 16p + len) of k ([nseg][seg_rows][d], storage type). 1 <= len <= 16. */
  sr_status (*page_minmax)(const void *k, int64_t nseg, int64_t seg_rows, int d, int64_t lp,
                           int64_t p0, int64_t np, int len, void *pmin, void *pmax);
  /* Quest page scores for the first nvalid pages of every list: list l = (sequence b, kv-head
   * g) (per_qhead 0: nlists = nseq * kv_heads, the score summed over the group's q-heads in
   * ascending order) or (b, q-head h) (per_qhead 1: nlists = nseq * q_heads, segment of kv-head
   * h / group). score(h, p) = sum_d max(q[b][h][d] * pmin[seg][p][d], q[b][h][d] *
   * pmax[seg][p][d]), dims in ascending order, fp32. s [nlists][lp] fp32; entries >= nvalid
   * are not written. q [nseq][q_heads][d] fp32. */
  sr_status (*page_scores)(const float *q, int nseq, int q_heads, int kv_heads, int per_qhead,
                           const void *pmin, const void *pmax, int64_t lp, int64_t nvalid, int d,
                           float *s);
  /* Per list l < nlists: the k best of s[l][0 .. nvalid) (larger score; ties: the lower page
   * index), written in ascending page order as decode entries own_row[l*k + i] = 16 * page,
   * own_len = 16, and cand[l*k + i] = the score; slots i >= min(k, nvalid) get len 0 and score
   * -INFINITY. own_row, own_len, cand: backend memory. */
  sr_status (*page_topk)(const float *s, int64_t nlists, int64_t lp, int64_t nvalid, int k,
                         int32_t *own_row, int32_t *own_len, float *cand);
  /* SnapKV-family estimate (same L as est_scores): colmax_host[j] = max(colmax_host[j],
   * max_i A[i][j]) with A as in est_accum (rounded to bf16 when round_bf16). Max is exact in any
   * order. */
  sr_status (*est_colmax)(const float *L, int W, int64_t nk, const float *gmax_host,
                          const float *inv_host, int round_bf16, float *colmax_host);
  /* bytes of host memory -> backend memory and back (index arrays). */
  sr_status (*upload)(void *dst, const void *src_host, size_t bytes);
  sr_status (*download)(void *dst_host, const void *src, size_t bytes);
} sr_backend;

/* Fixed-point scale of the estimate sums: fix(x) = (int64_t)(x * 2^32 + 0.5) for x in [0, 1]. */
#define SR_EST_FIX_BITS 32

#ifdef __cplusplus
extern "C" {
#endif

/* Checks the shapes and CSR of attn_fwd arguments (host arrays), serially, so that a backend's
 * parallel part cannot fail on input: SR_ERR_SHAPE / SR_ERR_INTERNAL with a one-line message. */
sr_status sr__attn_args_check(const sr_attn_args *a);

/* The CPU backend (always available). */
const sr_backend *sr_backend_cpu(void);

/* The CUDA backend when built with SR_CUDA and a device is usable, else NULL (the reason in
 * sr_last_error()). Binds this rank to device local_rank % device_count (one GPU per rank
 * when ranks per node <= GPUs per node). */
const sr_backend *sr_backend_cuda(int local_rank);

/* Threads used by the CPU backend (OpenMP); 0 means the OpenMP default. */
void sr_cpu_set_threads(int threads);

/* The CPU kernels' instruction path: "avx512", "avx2" (with FMA) or "portable", the best the
 * CPU supports, or SR_CPU_PATH from the environment when the CPU supports that one. Chosen
 * once per process, at the first call of a kernel or of this function. */
const char *sr_cpu_kernel_path(void);
/* Whether this CPU can run the named path. */
int sr_cpu_path_supported(const char *name);

#ifdef __cplusplus
}
#endif

#endif
