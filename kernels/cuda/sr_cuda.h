/*
 * sr_cuda.h — what the CUDA backend shares with the NCCL transport (host C, not installed).
 *
 * The backend owns one compute stream per process; every backend op is issued on it. The
 * NCCL transport orders its communication stream against it with events (never a host
 * synchronisation per ring step): a receive into a buffer waits for the compute that last read
 * that buffer, and compute on an arrived buffer waits for its receive.
 */
#ifndef SR_CUDA_H
#define SR_CUDA_H

#include "sparsering.h"

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The backend's compute stream (valid after sr_backend_cuda() succeeded). */
cudaStream_t sr__cuda_compute_stream(void);
/* The device this rank is bound to (valid after sr_backend_cuda() succeeded). */
int sr__cuda_device(void);

/* A failing CUDA call becomes SR_ERR_BACKEND with "file:line: what: cudaGetErrorString".
 * The build defines SR_CUDA=1 (an object-like macro, for #ifdef SR_CUDA); this header turns
 * it into the check macro, which keeps `#ifdef SR_CUDA` true without a redefinition warning. */
sr_status sr__cuda_check(cudaError_t e, const char *what, const char *file, int line);
#undef SR_CUDA
#define SR_CUDA(call) SR_TRY(sr__cuda_check((call), #call, __FILE__, __LINE__))

/* The attention kernels (docs/GPU.md). AUTO picks the fastest one that fits the shape: WS at
 * bq = bk = d = 128 and, for the other bq, bk, d in {64, 128}, WGMMA (Hopper warpgroup MMA with
 * the softmax of one block overlapped with the P.V product of the previous one); both need an
 * sm_90a build on a compute 9.0 device; else MMA (mma.sync); GENERIC for every other shape. Tests and benchmarks force one with
 * sr__cuda_attn_force (AUTO restores the choice); a forced kernel that does not fit the shape
 * makes attn_fwd fail with SR_ERR_SHAPE. The ladder (kernels/cuda/dev) has more versions.
 * Every kernel (and every ladder version) handles column chunks (kpos < 0), so the choice
 * never depends on them. */
enum { SR_CUDA_ATTN_AUTO = 0, SR_CUDA_ATTN_GENERIC, SR_CUDA_ATTN_MMA, SR_CUDA_ATTN_WGMMA,
       SR_CUDA_ATTN_WS };
void sr__cuda_attn_force(int kernel);
/* WS: the warp-specialised wgmma kernel (a producer warpgroup, TMA for whole tiles when
 * attn_fwd's kv_rows is given; bq = bk = d = 128 on a Hopper with an sm_90a build).
 * sr__cuda_have_ws: whether it can run here; sr__cuda_attn_tma_last: whether the last WS
 * launch loaded whole tiles by TMA (1) or everything by cp.async (0). */
int sr__cuda_have_ws(void);
/* The kernel AUTO runs for a shape (SR_CUDA_ATTN_*). */
int sr__cuda_attn_auto(int bq, int bk, int d);
int sr__cuda_attn_tma_last(void);
/* CTA order of the attention kernels: AUTO (q-blocks of one head adjacent for lists under
 * half of the causal blocks, else the heads of one q-block adjacent), or forced (benchmarks).
 * sr__cuda_attn_order_last: the order the last attn_fwd call used. */
enum { SR_CUDA_ORDER_AUTO = 0, SR_CUDA_ORDER_QBLOCKS, SR_CUDA_ORDER_HEADS };
void sr__cuda_attn_order(int order);
int sr__cuda_attn_order_last(void);
/* The kernel the last successful attn_fwd call ran (SR_CUDA_ATTN_*; AUTO before any). */
int sr__cuda_attn_last(void);
const char *sr__cuda_attn_name(int kernel);
/* 1 if this build holds the sm_90a wgmma kernel and the device runs it. */
int sr__cuda_have_wgmma(void);
/* Benchmarks: with timing on, attn_fwd records CUDA events around its kernel launch alone
 * (not the upload of the CSR lists), and sr__cuda_attn_kernel_ms() returns the last call's
 * kernel time in ms after the caller synchronised (negative if none). */
void sr__cuda_attn_timing(int on);
float sr__cuda_attn_kernel_ms(void);

#ifdef __cplusplus
}
#endif
#endif
