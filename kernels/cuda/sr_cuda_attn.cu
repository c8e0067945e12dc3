/*
 * sr_cuda_attn.cu — attn_fwd of the CUDA backend: checks the arguments as the CPU backend
 * does, uploads the CSR lists, picks a kernel and launches it (the kernels and their design
 * are in sr_attn_kernels.cuh; docs/GPU.md has the measurements behind the choice).
 *
 * Choice: shapes with bq, bk, d in {64, 128} run on the tensor cores when this build holds
 * sm_90a code (CMAKE_CUDA_ARCHITECTURES=90a) and the device is a Hopper: at bq = bk = d = 128
 * the warp-specialised kernel (sr_attn_ws.cuh, the ladder's v11: TMA producer, ping-pong
 * consumers; 1.4-1.6x v7 on an H200), elsewhere the wgmma kernel with softmax/MMA overlap
 * (sr_attn_wgmma_pipe: v7 with 3 K/V stages at bq = bk = 128, v5 with 2 stages elsewhere).
 * Without sm_90a the mma.sync kernel (v3); any other shape runs the generic kernel (v1).
 * The launch is asynchronous: attn_fwd returns once the work is queued on the compute stream.
 * Lists built on the device by attn_lists (lists_dev) are used where they are; host lists are
 * uploaded first. Every kernel handles column chunks (kpos < 0, gathered through colrow), so
 * the choice does not depend on them; colrow travels with the other CSR lists.
 */
#include "sr_attn_kernels.cuh"
#include "sr_attn_ws.cuh"
#include "sr_cuda_internal.h"

static int attn_forced = SR_CUDA_ATTN_AUTO, attn_last = SR_CUDA_ATTN_AUTO, have_wgmma = 0;
static int have_ws = 0, tma_last = 0;
static int order_forced = SR_CUDA_ORDER_AUTO, order_last = SR_CUDA_ORDER_AUTO;
static int max_smem_optin = 0;
static int attn_timing = 0, attn_timed = 0;
static cudaEvent_t attn_ev[2];

extern "C" void sr__cuda_attn_timing(int on) { attn_timing = on; }
extern "C" float sr__cuda_attn_kernel_ms(void) {
  float ms = -1.0f;
  if (!attn_timed || cudaEventElapsedTime(&ms, attn_ev[0], attn_ev[1]) != cudaSuccess) return -1.0f;
  return ms;
}

extern "C" void sr__cuda_attn_force(int kernel) { attn_forced = kernel; }
extern "C" void sr__cuda_attn_order(int order) { order_forced = order; }
extern "C" int sr__cuda_attn_order_last(void) { return order_last; }

/* CTA order (sr_row_of): q-blocks of one head adjacent when the lists hold under half of the
 * causal blocks (sparse rows), heads of one q-block adjacent otherwise. */
static int pick_order(const sr_attn_args *a, int64_t nnz) {
  if (order_forced != SR_CUDA_ORDER_AUTO) return order_forced;
  const int64_t nkb_lim = (a->kv_limit + a->bk - 1) / a->bk;
  int64_t causal = 0;
  for (int m = 0; m < a->nqb; m++) {
    int64_t c = (a->qpos[m] + a->bq - 1) / a->bk + 1;
    causal += c < nkb_lim ? c : nkb_lim;
  }
  return 2 * nnz < causal * a->q_heads ? SR_CUDA_ORDER_HEADS : SR_CUDA_ORDER_QBLOCKS;
}
extern "C" int sr__cuda_attn_last(void) { return attn_last; }
extern "C" int sr__cuda_have_wgmma(void) { return have_wgmma; }
extern "C" int sr__cuda_have_ws(void) { return have_ws; }
extern "C" int sr__cuda_attn_tma_last(void) { return tma_last; }
extern "C" const char *sr__cuda_attn_name(int kernel) {
  switch (kernel) {
  case SR_CUDA_ATTN_GENERIC: return "generic";
  case SR_CUDA_ATTN_MMA: return "mma";
  case SR_CUDA_ATTN_WGMMA: return "wgmma";
  case SR_CUDA_ATTN_WS: return "ws";
  default: return "auto";
  }
}

/* One entry per tensor-core configuration: the kernels and their shared memory. ST is the
 * number of K/V stages of the wgmma kernel: 3 (the ladder's v7) measured as fast as or faster
 * than 2 (v5) at bq = bk = 128, and up to 11% slower at other block shapes (docs/GPU.md). */
typedef void (*attn_kernel_fn)(sr_attn_dev);
typedef struct attn_cfg {
  int bq, bk, d;
  attn_kernel_fn mma, wgmma;
  size_t mma_smem, wgmma_smem;
} attn_cfg;

#define CFG(BQ, BK, D, ST)                                                                         \
  {BQ, BK, D, sr_attn_mma<BQ, BK, D, true>, sr_attn_wgmma_pipe<BQ, BK, D, ST>,                     \
   sr_mma_smem_bytes<BQ, BK, D>(), sr_wgmma_pipe_smem_bytes<BQ, BK, D, ST>()}
static const attn_cfg attn_cfgs[] = {
    CFG(64, 64, 64, 2),   CFG(64, 64, 128, 2),   CFG(64, 128, 64, 2),   CFG(64, 128, 128, 2),
    CFG(128, 64, 64, 2),  CFG(128, 64, 128, 2),  CFG(128, 128, 64, 3),  CFG(128, 128, 128, 3),
};
#undef CFG
#define N_CFGS ((int)(sizeof attn_cfgs / sizeof attn_cfgs[0]))

static const attn_cfg *find_cfg(int bq, int bk, int d) {
  for (int i = 0; i < N_CFGS; i++)
    if (attn_cfgs[i].bq == bq && attn_cfgs[i].bk == bk && attn_cfgs[i].d == d) return &attn_cfgs[i];
  return NULL;
}

/* The warp-specialised kernel: 3 stages, ping-pong; with and without TMA. */
#define WS_TMA sr_attn_ws<3, true, true>
#define WS_CPASYNC sr_attn_ws<3, true, false>
#define WS_SMEM sr_ws_smem_bytes<3>()
/* AUTO takes it at 128/128/128: 601/553/549 against v7's 383/388/390 TFLOP/s dense at
 * 16K/32K/128K on an H200 (docs/GPU.md). */
#define WS_AUTO 1

extern "C" int sr__cuda_attn_auto(int bq, int bk, int d) {
  if (!find_cfg(bq, bk, d)) return SR_CUDA_ATTN_GENERIC;
  if (!have_wgmma) return SR_CUDA_ATTN_MMA;
  if (WS_AUTO && have_ws && bq == 128 && bk == 128 && d == 128) return SR_CUDA_ATTN_WS;
  return SR_CUDA_ATTN_WGMMA;
}

sr_status sr__cuda_attn_init(void) {
  const int dev = sr__cuda_device();
  cudaDeviceProp prop;
  SR_CUDA(cudaGetDeviceProperties(&prop, dev));
  max_smem_optin = (int)prop.sharedMemPerBlockOptin;
  /* The wgmma kernels are real only in an sm_90a build, and run only on compute 9.0. */
  int *flag = NULL, host_flag = 0;
  SR_CUDA(cudaMalloc(&flag, sizeof(int)));
  sr_attn_wgmma_probe<<<1, 1, 0, sr__cuda_compute_stream()>>>(flag);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(&host_flag, flag, sizeof(int), cudaMemcpyDeviceToHost,
                        sr__cuda_compute_stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(sr__cuda_compute_stream());
  cudaFree(flag);
  SR_TRY(sr__cuda_check(e, "probing the attention kernels", __FILE__, __LINE__));
  have_wgmma = host_flag == 1 && prop.major == 9 && prop.minor == 0;
  for (int i = 0; i < N_CFGS; i++) {
    const attn_cfg *c = &attn_cfgs[i];
    SR_CUDA(cudaFuncSetAttribute(c->mma, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)c->mma_smem));
    if (have_wgmma)
      SR_CUDA(cudaFuncSetAttribute(c->wgmma, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)c->wgmma_smem));
  }
  SR_CUDA(cudaFuncSetAttribute(sr_attn_generic, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               max_smem_optin));
  have_ws = have_wgmma && (size_t)max_smem_optin >= WS_SMEM;
  if (have_ws) {
    SR_CUDA(cudaFuncSetAttribute(WS_TMA, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)WS_SMEM));
    SR_CUDA(cudaFuncSetAttribute(WS_CPASYNC, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)WS_SMEM));
  }
  SR_CUDA(cudaEventCreate(&attn_ev[0]));
  SR_CUDA(cudaEventCreate(&attn_ev[1]));
  return SR_OK;
}

/* The same checks as the CPU backend, so both fail alike on bad input. */
/* The shared checks (kernels/backend.c), plus what one launch can hold. */
static sr_status attn_check(const sr_attn_args *a) {
  SR_TRY(sr__attn_args_check(a));
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  if (rows > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: %lld rows exceed one launch", (long long)rows);
  return SR_OK;
}

sr_status sr__cuda_attn_fwd(const sr_attn_args *a) {
  SR_TRY(attn_check(a));
  if (a->nq == 0 || a->nqb == 0) return SR_OK;
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  const int64_t nnz = a->lists_dev ? a->nnz : a->row_ptr[rows];

  const attn_cfg *cfg = find_cfg(a->bq, a->bk, a->d);
  int kernel = attn_forced;
  if (kernel == SR_CUDA_ATTN_AUTO) kernel = sr__cuda_attn_auto(a->bq, a->bk, a->d);
  if ((kernel == SR_CUDA_ATTN_MMA || kernel == SR_CUDA_ATTN_WGMMA) && !cfg)
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: the %s kernel needs bq, bk, d in {64, 128}, got "
                      "bq=%d bk=%d d=%d", sr__cuda_attn_name(kernel), a->bq, a->bk, a->d);
  if ((kernel == SR_CUDA_ATTN_WGMMA || kernel == SR_CUDA_ATTN_WS) && !have_wgmma)
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: the %s kernel needs an sm_90a build "
                      "(CMAKE_CUDA_ARCHITECTURES=90a) on a compute 9.0 device",
                      sr__cuda_attn_name(kernel));
  if (kernel == SR_CUDA_ATTN_WS && !(a->bq == 128 && a->bk == 128 && a->d == 128 && have_ws))
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: the ws kernel needs bq = bk = d = 128 and %zu "
                      "bytes of shared memory per block, got bq=%d bk=%d d=%d", (size_t)WS_SMEM,
                      a->bq, a->bk, a->d);
  const size_t gen_smem = (size_t)SR_GEN_WARPS * 2 * (size_t)a->d * sizeof(float);
  if (kernel == SR_CUDA_ATTN_GENERIC && gen_smem > (size_t)max_smem_optin)
    return sr__seterr(SR_ERR_SHAPE, "attn_fwd: head dim %d is too large for the generic kernel",
                      a->d);

  sr_attn_dev dv;
  dv.q_heads = a->q_heads;
  dv.d = a->d;
  dv.bq = a->bq;
  dv.bk = a->bk;
  dv.nqb = a->nqb;
  const int order = pick_order(a, nnz);
  dv.head_major = order == SR_CUDA_ORDER_HEADS;
  dv.nq = a->nq;
  dv.kv_limit = a->kv_limit;
  dv.sl2 = a->scale * SR_LOG2E;
  dv.q = (const sr_bf16 *)a->q;
  dv.k = (const sr_bf16 *)a->k;
  dv.v = (const sr_bf16 *)a->v;
  dv.out = a->out;
  dv.lse = a->lse;
  dv.colrow = NULL;
  const size_t ncol = a->colrow && a->ncolrow > 0 ? (size_t)a->ncolrow : 0;
  sr_cuda_piece pc[5] = {
      {a->qpos, (size_t)a->nqb * sizeof(int64_t), (void **)&dv.qpos},
      {a->row_ptr, (size_t)(rows + 1) * sizeof(int64_t), (void **)&dv.row_ptr},
      {a->kpos, (size_t)nnz * sizeof(int64_t), (void **)&dv.kpos},
      {a->slot, (size_t)nnz * sizeof(int32_t), (void **)&dv.slot},
      {a->colrow, ncol * sizeof(int32_t), (void **)&dv.colrow},
  };
  if (a->lists_dev) { /* built by attn_lists: already on the device */
    dv.row_ptr = a->row_ptr;
    dv.kpos = a->kpos;
    dv.slot = a->slot;
    SR_TRY(sr__cuda_upload(SR_SCRATCH_ATTN, pc, 1));
  } else {
    SR_TRY(sr__cuda_upload(SR_SCRATCH_ATTN, pc, ncol ? 5 : 4));
  }

  cudaStream_t st = sr__cuda_compute_stream();
  const unsigned grid = (unsigned)rows;
  if (attn_timing) SR_CUDA(cudaEventRecord(attn_ev[0], st));
  SR_TRY(sr__cuda_ev_mark(SR_EV_ATTN, 0));
  switch (kernel) {
  case SR_CUDA_ATTN_WS: {
    /* TMA for whole tiles when every map can be made (pool sizes known, aligned bases). */
    sr_ws_maps tm;
    memset(&tm, 0, sizeof tm);
    const int tma = a->kv_rows > 0 &&
                    sr_ws_map(a->q, (uint64_t)a->q_heads * (uint64_t)a->nq, &tm.q) &&
                    sr_ws_map(a->k, (uint64_t)a->kv_rows, &tm.k) &&
                    sr_ws_map(a->v, (uint64_t)a->kv_rows, &tm.v);
    if (tma) WS_TMA<<<grid, 384, WS_SMEM, st>>>(dv, tm);
    else WS_CPASYNC<<<grid, 384, WS_SMEM, st>>>(dv, tm);
    tma_last = tma;
    break;
  }
  case SR_CUDA_ATTN_WGMMA:
    cfg->wgmma<<<grid, cfg->bq * 2, cfg->wgmma_smem, st>>>(dv);
    break;
  case SR_CUDA_ATTN_MMA:
    cfg->mma<<<grid, cfg->bq * 2, cfg->mma_smem, st>>>(dv);
    break;
  default:
    sr_attn_generic<<<grid, SR_GEN_WARPS * 32, gen_smem, st>>>(dv);
    break;
  }
  SR_CUDA_LAUNCHED("attn_fwd");
  SR_TRY(sr__cuda_ev_mark(SR_EV_ATTN, 1));
  if (attn_timing) SR_CUDA(cudaEventRecord(attn_ev[1], st));
  attn_timed = attn_timing;
  attn_last = kernel;
  order_last = order;
  return SR_OK;
}
