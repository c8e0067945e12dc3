/*
 * cpu_internal.h — pieces shared by the files of the CPU backend (not installed).
 *
 * The CPU kernels work in "lane-major" form: a tile of query rows is stored transposed,
 * [feature][lane] with one query row per lane, padded to SR_CPU_LANES lanes. Every
 * per-row quantity of the online softmax (running max, running sum, rescale factor) is then
 * a plain vector over lanes, and both products of attention become the same small kernel:
 *
 *     C[r][l] = colscale[l] * C[r][l] + sum_k A(r, k) * B[k][l]
 *
 * with A read as broadcast scalars at arbitrary strides (the K or V block exactly as it lies
 * in the slot pool, so nothing is copied or transposed per block) and B, C read as contiguous
 * 64-byte-aligned vectors over lanes. sr__cpu_gemm_lanes implements it with AVX-512
 * register tiles where the compiler targets AVX-512 and with plain loops elsewhere.
 */
#ifndef SR_CPU_INTERNAL_H
#define SR_CPU_INTERNAL_H

#include "kernels.h"
#include "sr_internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Lane padding of every lane-major buffer: 16 floats = one AVX-512 vector = one cache line. */
#define SR_CPU_LANES 16

/* Rounds n up to a multiple of SR_CPU_LANES. */
static inline int64_t sr__cpu_lanes_up(int64_t n) {
  return (n + SR_CPU_LANES - 1) / SR_CPU_LANES * SR_CPU_LANES;
}

/* Number of OpenMP threads the backend uses (sr_cpu_set_threads, else the OpenMP default). */
int sr__cpu_threads(void);

/* The attn_fwd entry of the table (cpu_attn.c). */
sr_status sr__cpu_attn_fwd(const sr_attn_args *a);
/* attn_lists on the host (cpu_lists.c; in the table only with SR_CPU_ATTN_LISTS=1). */
sr_status sr__cpu_attn_lists(const sr_lists_args *a, sr_dev_lists *out);
/* The estimate entries of the table (cpu_estimate.c). */
sr_status sr__cpu_est_scores(const float *qw, int W, int64_t qpos0, const void *k, int64_t nk,
                             const int64_t *run_start, int64_t run_len, int d, float scale,
                             float *L);
sr_status sr__cpu_est_rowmax(const float *L, int W, int64_t nk, float *max_host);
sr_status sr__cpu_est_rowsum(const float *L, int W, int64_t nk, const float *gmax,
                             int64_t *sum);
sr_status sr__cpu_est_accum(const float *L, int W, int64_t nk, int64_t qpos0,
                            const int64_t *run_start, int64_t run_len, const float *gmax,
                            const float *inv, int round_bf16, int64_t n, int64_t *vert,
                            int64_t *slash);
/* Decode ops (cpu_decode.c; kernels.h "Decode"). */
sr_status sr__cpu_decode_fwd(const sr_decode_args *a);
sr_status sr__cpu_page_minmax(const void *k, int64_t nseg, int64_t seg_rows, int d, int64_t lp,
                              int64_t p0, int64_t np, int len, void *pmin, void *pmax);
sr_status sr__cpu_page_scores(const float *q, int nseq, int q_heads, int kv_heads, int per_qhead,
                              const void *pmin, const void *pmax, int64_t lp, int64_t nvalid,
                              int d, float *s);
sr_status sr__cpu_page_topk(const float *s, int64_t nlists, int64_t lp, int64_t nvalid, int k,
                            int32_t *own_row, int32_t *own_len, float *cand);
sr_status sr__cpu_est_colmax(const float *L, int W, int64_t nk, const float *gmax_host,
                             const float *inv_host, int round_bf16, float *colmax_host);
sr_status sr__cpu_copy_bytes(void *dst, const void *src, size_t bytes);

/*
 * C[r][l] = f * C[r][l] + sum_{k < kn} A(r, k) * B[k][l]   for r < rows, l < lanes,
 * where A(r, k) = a[r*ars + k*aks] and f = colscale[l], or rowscale[r], or 0 (C is
 * overwritten) when both are NULL (at most one may be given).
 * Preconditions: lanes is a multiple of SR_CPU_LANES and every row of B and C holds that
 * many floats (b and c need no alignment); colscale is 64-byte aligned. kn may be 0.
 */
void sr__cpu_gemm_lanes(int64_t rows, int64_t lanes, int64_t kn, const float *a, int64_t ars,
                        int64_t aks, const float *b, int64_t ldb, float *c, int64_t ldc,
                        const float *colscale, const float *rowscale);

/*
 * dst[c][r] = src[r][c] * scale * (colscale ? colscale[c] : 1) for r < rows, c < cols, and
 * dst[c][r] = 0 for rows <= r < rows_pad (lane padding). Row strides lds, ldd; no alignment
 * needed. Moves Q into lane-major form and the output back to row-major form.
 */
void sr__cpu_transpose(const float *src, int64_t rows, int64_t cols, int64_t lds, float *dst,
                       int64_t ldd, int64_t rows_pad, float scale, const float *colscale);

/*
 * 2^x for the softmax, accurate to a few ulp for x in [-126, 0] (the only range the kernels
 * use, since x = s - rowmax <= 0); 0 below -126 and for -INFINITY; NaN stays NaN. It is
 * branch-free and uses only operations GCC vectorizes (adds, int conversion, a bit cast),
 * so the loops that call it become SIMD loops without a vector math library.
 */
static inline float sr__cpu_exp2(float x) {
  /* Clamp first so that the float->int conversion below is always defined (NaN -> -126). */
  const float xc = x > -126.0f ? x : -126.0f;
  /* Round to nearest by the 1.5 * 2^23 trick (|xc| <= 126): plain adds, which vectorize for
   * every ISA, where rintf needs SSE4.1 and stays scalar in a build for baseline x86-64. */
  const float n = (xc + 12582912.0f) - 12582912.0f;
  const float f = xc - n; /* f in [-0.5, 0.5] */
  /* Taylor series of 2^f = e^(f ln 2) to degree 7: truncation error < 6e-9 relative.
   * Horner steps are explicit fmaf where the target has FMA (ISO C mode does not contract
   * a*b+c on its own), plain multiply-add elsewhere (fmaf would be a libm call there). */
#ifdef __FMA__
#define SR_CPU_MADD(a, b, c) fmaf((a), (b), (c))
#else
#define SR_CPU_MADD(a, b, c) ((a) * (b) + (c))
#endif
  float p = 1.5252734e-05f;
  p = SR_CPU_MADD(p, f, 1.5403530e-04f);
  p = SR_CPU_MADD(p, f, 1.3333558e-03f);
  p = SR_CPU_MADD(p, f, 9.6181291e-03f);
  p = SR_CPU_MADD(p, f, 5.5504109e-02f);
  p = SR_CPU_MADD(p, f, 2.4022651e-01f);
  p = SR_CPU_MADD(p, f, 6.9314718e-01f);
  p = SR_CPU_MADD(p, f, 1.0f);
#undef SR_CPU_MADD
  /* Multiply by 2^n by building the float 2^n from its exponent bits (n in [-126, 0]). */
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float r = p * scale;
  r = x >= -126.0f ? r : 0.0f; /* underflow and -inf give 0 ...                  */
  return x == x ? r : x;       /* ... and NaN inputs propagate instead of hiding */
}

#endif
