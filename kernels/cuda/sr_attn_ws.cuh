/*
 * sr_attn_ws.cuh — the warp-specialised attention kernel (the ladder's v8-v13), Hopper only,
 * bq = bk = d = 128: FlashAttention-3's structure on the same lists as the other kernels.
 *
 *   WG0       producer (24 registers after setmaxnreg): loads Q once, then each entry's K and
 *             V tiles into NST shared-memory stages and signals the stage's `full` mbarrier.
 *             Whole tiles go by TMA (TMA = true: thread 0 announces the bytes with
 *             mbarrier.arrive.expect_tx and issues two 64-column boxes per tile, 128-byte
 *             swizzle, the layout sr_swz describes); partial tiles and column chunks go by
 *             cp.async (rows past the keys zero-filled; cp.async.mbarrier.arrive.noinc). It
 *             waits on the stage's `empty` mbarrier before refilling it.
 *   WG1, WG2  consumers, 64 query rows each (240 registers): per entry j, wait full[j],
 *             issue S_j = Q.K_j^T and P_{j-1}.V_{j-1} (intra-warpgroup overlap), softmax j
 *             (the scale folded into one FFMA per score), then release stage j-1. No CTA
 *             barrier in the loop. PP = true: named barriers 1 and 2 make the two consumers
 *             take turns issuing their GEMMs (ping-pong), so one's softmax runs under the
 *             other's tensor-core work.
 *
 * The v7 kernel (sr_attn_wgmma_pipe) has all 256 threads issue cp.async loads and meet at two
 * CTA barriers per block. The measurements that decide between them are in docs/GPU.md.
 */
#ifndef SR_ATTN_WS_CUH
#define SR_ATTN_WS_CUH

#include "sr_attn_kernels.cuh"

#include <cuda.h> /* CUtensorMap and its enums: types only, nothing links against libcuda */
#include <cudaTypedefs.h>

/* TMA descriptors of Q [q_heads*nq][D] and of the K and V pools [slots*BK][D], bf16, boxes of
 * 64 columns x 128 rows with the 128-byte swizzle: one box is one panel of sr_swz's layout. */
typedef struct sr_ws_maps {
  CUtensorMap q, k, v;
} sr_ws_maps;

/* Host: the driver's cuTensorMapEncodeTiled, found once through the runtime (no -lcuda);
 * NULL when the driver lacks it. */
static inline PFN_cuTensorMapEncodeTiled_v12000 sr_ws_encoder(void) {
  static int tried = 0;
  static PFN_cuTensorMapEncodeTiled_v12000 fn = NULL;
  if (!tried) {
    tried = 1;
    cudaDriverEntryPointQueryResult q;
    void *f = NULL;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = (PFN_cuTensorMapEncodeTiled_v12000)f;
    else
      (void)cudaGetLastError();
  }
  return fn;
}

/* Host: the map of a [rows][128] bf16 array (base 16-byte aligned) with boxes of 64 columns x
 * 128 rows and the 128-byte swizzle; false if it cannot be made (the caller loads without
 * TMA). Row coordinates are int32 in the kernel: rows must stay below 2^31. */
static inline bool sr_ws_map(const void *base, uint64_t rows, CUtensorMap *m) {
  PFN_cuTensorMapEncodeTiled_v12000 enc = sr_ws_encoder();
  if (!enc || !base || ((uintptr_t)base & 15) || rows == 0 || rows >= ((uint64_t)1 << 31))
    return false;
  const cuuint64_t dims[2] = {128, rows};
  const cuuint64_t strides[1] = {256};
  const cuuint32_t box[2] = {64, 128}, estr[2] = {1, 1};
  return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dims, strides, box, estr,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int NST> static constexpr size_t sr_ws_smem_bytes() {
  return (size_t)(128 + 2 * NST * 128) * 128 * sizeof(sr_bf16) + 1024 + 256;
}

#ifdef SR_HAVE_WGMMA_DEVICE
static __device__ __forceinline__ void ws_mbar_init(uint64_t *b, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(sr_smem_u32(b)), "r"(count)
               : "memory");
}
/* Waits until the phase of parity `parity` of barrier b has completed. */
static __device__ __forceinline__ void ws_mbar_wait(uint64_t *b, int parity) {
  asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
               "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(sr_smem_u32(b)),
               "r"(parity)
               : "memory");
}
static __device__ __forceinline__ void ws_mbar_arrive(uint64_t *b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(sr_smem_u32(b)) : "memory");
}
/* Arrives on b once every cp.async this thread issued so far has landed. */
static __device__ __forceinline__ void ws_cp_async_arrive(uint64_t *b) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(sr_smem_u32(b))
               : "memory");
}
static __device__ __forceinline__ void ws_mbar_arrive_tx(uint64_t *b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(sr_smem_u32(b)),
               "r"(bytes)
               : "memory");
}
/* One box (64 columns from c0, 128 rows from r0) of map into the panel at sm; completes on b. */
static __device__ __forceinline__ void ws_tma_box(sr_bf16 *sm, const CUtensorMap *map, int c0,
                                                  int r0, uint64_t *b) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(sr_smem_u32(sm)),
               "l"((uint64_t)map), "r"(c0), "r"(r0), "r"(sr_smem_u32(b))
               : "memory");
}
/* A 128 x 128 tile (two panels) of map from row r0. */
static __device__ __forceinline__ void ws_tma_tile(sr_bf16 *sm, const CUtensorMap *map, int r0,
                                                   uint64_t *b) {
  ws_tma_box(sm, map, 0, r0, b);
  ws_tma_box(sm + 128 * 64, map, 64, r0, b);
}
static __device__ __forceinline__ void ws_bar_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
static __device__ __forceinline__ void ws_bar_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id));
}
#endif

/* The producer's loads, kept in few registers (it runs with 40): a rolled loop over the tile's
 * 16-byte chunks, tid in [0, 128). Rows listed in rows (a column chunk) or contiguous from g. */
template <int R, int D>
static __device__ __forceinline__ void ws_load(sr_bf16 *sm, const sr_bf16 *g, const int32_t *rows,
                                               int valid, int tid) {
  constexpr int CPR = D / 8;
  const uint32_t base = sr_smem_u32(sm);
#pragma unroll 1
  for (int x = tid; x < R * CPR; x += 128) {
    const int r = x / CPR, cc = x % CPR;
    const bool ok = r < valid;
    const size_t grow = ok ? (rows ? (size_t)rows[r] : (size_t)r) : 0;
    sr_cp_async16(base + 2u * (uint32_t)sr_swz<R>(r, cc * 8), g + grow * D + (ok ? cc * 8 : 0),
                  ok ? 16 : 0);
  }
}
template <int R, int D>
static __device__ __forceinline__ void ws_load_kv(sr_bf16 *sm, const sr_attn_dev &a,
                                                  const sr_bf16 *pool, int64_t e, int tid) {
  const int64_t kp = a.kpos[e];
  if (kp < 0)
    ws_load<R, D>(sm, pool, a.colrow + a.slot[e], (int)-kp, tid);
  else
    ws_load<R, D>(sm, pool + (size_t)a.slot[e] * ((size_t)R * D), NULL, sr_entry_valid<R>(a, kp),
                  tid);
}

template <int NST, bool PP, bool TMA>
static __global__ void __launch_bounds__(384, 1)
    sr_attn_ws(sr_attn_dev a, const __grid_constant__ sr_ws_maps tm) {
#ifdef SR_HAVE_WGMMA_DEVICE
  constexpr int BQ = 128, BK = 128, D = 128;
  constexpr int NS = BK / 2, NO = D / 2;
  extern __shared__ unsigned char sr_ws_sm_raw[];
  sr_bf16 *Qs = (sr_bf16 *)(((uintptr_t)sr_ws_sm_raw + 1023) & ~(uintptr_t)1023);
  sr_bf16 *Ks = Qs + BQ * D; /* [NST][BK*D] */
  sr_bf16 *Vs = Ks + NST * BK * D;
  uint64_t *full = (uint64_t *)(Vs + NST * BK * D), *empty = full + NST, *qfull = full + 2 * NST;

  int h, mb;
  sr_row_of(a, (int)blockIdx.x, h, mb);
  const int64_t i0 = (int64_t)mb * BQ;
  const int qrows = (int)(a.nq - i0 < BQ ? a.nq - i0 : BQ);
  if (qrows <= 0) return;
  const int64_t qfirst = a.qpos[mb], qlast = qfirst + qrows - 1;
  const int64_t r = (int64_t)h * a.nqb + mb, e_begin = a.row_ptr[r], e_end = a.row_ptr[r + 1];
  const int wg = threadIdx.x >> 7;

  if (threadIdx.x == 0) {
    for (int s = 0; s < NST; s++) {
      ws_mbar_init(&full[s], 128);  /* the producer's 128 threads */
      ws_mbar_init(&empty[s], 256); /* both consumers' 256 threads */
    }
    ws_mbar_init(qfull, 128);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) { /* ---- producer ---- */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    const int tid = (int)threadIdx.x;
    /* TMA for whole tiles: thread 0 announces the bytes and issues the boxes, the others
     * arrive at once; partial tiles and column chunks by cp.async (zero-filled rows). */
    if (TMA && qrows == BQ) {
      if (tid == 0) {
        ws_mbar_arrive_tx(qfull, BQ * D * 2);
        ws_tma_tile(Qs, &tm.q, (int)((int64_t)h * a.nq + i0), qfull);
      } else {
        ws_mbar_arrive(qfull);
      }
    } else {
      ws_load<BQ, D>(Qs, a.q + ((size_t)h * a.nq + i0) * D, NULL, qrows, tid);
      ws_cp_async_arrive(qfull);
    }
    int64_t e = sr_next_entry(a, e_begin, e_end, qlast);
    for (int i = 0; e < e_end; i++) {
      const int s = i % NST, ph = (i / NST) & 1;
      ws_mbar_wait(&empty[s], ph ^ 1); /* fresh barrier: parity 1 has completed */
      const int64_t kp = a.kpos[e];
      if (TMA && kp >= 0 && sr_entry_valid<BK>(a, kp) == BK) {
        if (tid == 0) {
          const int r0 = a.slot[e] * BK;
          ws_mbar_arrive_tx(&full[s], 2 * BK * D * 2);
          ws_tma_tile(Ks + s * BK * D, &tm.k, r0, &full[s]);
          ws_tma_tile(Vs + s * BK * D, &tm.v, r0, &full[s]);
        } else {
          ws_mbar_arrive(&full[s]);
        }
      } else {
        ws_load_kv<BK, D>(Ks + s * BK * D, a, a.k, e, tid);
        ws_load_kv<BK, D>(Vs + s * BK * D, a, a.v, e, tid);
        ws_cp_async_arrive(&full[s]);
      }
      e = sr_next_entry(a, e + 1, e_end, qlast);
    }
    sr_cp_async_wait<0>();
    return;
  }

  /* ---- consumers ---- */
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int cw = wg - 1, w4 = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c4 = lane & 3;
  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; i++) o[i] = 0.0f;
  uint32_t pf[BK / 16][4];
#pragma unroll
  for (int t = 0; t < BK / 16; t++) pf[t][0] = pf[t][1] = pf[t][2] = pf[t][3] = 0u;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.sl2;
  const uint32_t q_base = sr_smem_u32(Qs) + cw * 64 * 128;
  const uint32_t k_base0 = sr_smem_u32(Ks), v_base0 = sr_smem_u32(Vs);
  ws_mbar_wait(qfull, 0);
  int64_t e = sr_next_entry(a, e_begin, e_end, qlast);
  if (PP && cw == 1 && e < e_end) ws_bar_arrive(1); /* consumer 0 issues first */
  int j = 0, sp = 0;                         /* sp: the stage of block j-1 */
  for (; e < e_end; j++) {
    const int s = j % NST, ph = (j / NST) & 1;
    const int64_t kp = a.kpos[e];
    const int valid = sr_entry_valid<BK>(a, kp);
    ws_mbar_wait(&full[s], ph);
    sr_fence_proxy_async(); /* cp.async wrote through the generic proxy; wgmma reads async */
    const uint32_t k_base = k_base0 + s * (BK * D * 2);
    const uint32_t v_base = v_base0 + sp * (BK * D * 2);

    float sc[NS];
#pragma unroll
    for (int i = 0; i < NS; i++) sc[i] = 0.0f;
    if (PP) ws_bar_sync(1 + cw); /* my turn on the tensor cores */
    sr_wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const uint64_t da = sr_wg_desc(q_base + (kk >> 2) * (BQ * 128) + (kk & 3) * 32, 16, 1024);
      const uint64_t db = sr_wg_desc(k_base + (kk >> 2) * (BK * 128) + (kk & 3) * 32, 16, 1024);
      sr_wg_ss128(sc, da, db, kk > 0);
    }
    sr_wg_commit();
    if (j > 0) {
#pragma unroll
      for (int t = 0; t < BK / 16; t++) {
        const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
        sr_wg_rs128(o, pf[t], db);
      }
      sr_wg_commit();
      if (PP) ws_bar_arrive(1 + (cw ^ 1)); /* the other consumer's turn */
      sr_wg_wait1();
    } else {
      if (PP) ws_bar_arrive(1 + (cw ^ 1));
      sr_wg_wait0();
    }
#pragma unroll
    for (int i = 0; i < NS; i++) sr_wg_pin(sc[i]);

    if (SR_MASK_NEEDED(kp, qfirst, valid, BK, a.kv_limit)) {
      const int dk = SR_MASK_DK(kp, qfirst, BK);
#pragma unroll
      for (int i = 0; i < NS; i++) {
        const int row = cw * 64 + w4 * 16 + g + ((i >> 1) & 1) * 8;
        const int col = (i >> 2) * 8 + 2 * c4 + (i & 1);
        if (col + dk > row || col >= valid) sc[i] = -INFINITY;
      }
    }
    /* m in raw score units; the scale enters the exponent: p = 2^(s*sl2 - m*sl2). */
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < NS; i++) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], sc[i]);
    float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; x++) {
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
      ref[x] = mx[x] == -INFINITY ? 0.0f : mx[x] * sl2;
      alpha[x] = sr_ex2(m[x] * sl2 - ref[x]);
      m[x] = mx[x];
    }
#pragma unroll
    for (int i = 0; i < NS; i++) {
      sc[i] = sr_ex2(fmaf(sc[i], sl2, -ref[(i >> 1) & 1]));
      sum[(i >> 1) & 1] += sc[i];
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];

    sr_wg_wait0(); /* P_{j-1}.V_{j-1} done: block j-1's stage is free */
    if (j > 0) ws_mbar_arrive(&empty[sp]);
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
#pragma unroll
    for (int t = 0; t < BK / 16; t++)
#pragma unroll
      for (int x = 0; x < 4; x++) sr_wg_pin_u(pf[t][x]);
#pragma unroll
    for (int i = 0; i < NO; i++) o[i] *= alpha[(i >> 1) & 1];
#pragma unroll
    for (int i = 0; i < NS / 4; i++) {
      pf[i >> 1][(i & 1) * 2 + 0] = sr_pack_bf16(sc[4 * i + 0], sc[4 * i + 1]);
      pf[i >> 1][(i & 1) * 2 + 1] = sr_pack_bf16(sc[4 * i + 2], sc[4 * i + 3]);
    }
    sp = s;
    e = sr_next_entry(a, e + 1, e_end, qlast);
  }

  /* Consumer 1 arrived on barrier 1 once more than consumer 0 waited on it (it let consumer 0
   * go first); take that arrival so that no barrier is left half-arrived at exit. */
  if (PP && cw == 0 && j > 0) ws_bar_sync(1);
  if (j > 0) { /* the last block's P.V */
    const uint32_t v_base = v_base0 + sp * (BK * D * 2);
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
    sr_wg_fence();
#pragma unroll
    for (int t = 0; t < BK / 16; t++) {
      const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
      sr_wg_rs128(o, pf[t], db);
    }
    sr_wg_commit();
    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
  }

#pragma unroll
  for (int x = 0; x < 2; x++) {
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    const int row = cw * 64 + w4 * 16 + g + x * 8;
    if (row >= qrows) continue;
    const bool empty_row = m[x] == -INFINITY;
    const float inv = empty_row ? 0.0f : 1.0f / l[x];
    const size_t orow = (size_t)h * (size_t)a.nq + (size_t)(i0 + row);
    float *dst = a.out + orow * D + 2 * c4;
#pragma unroll
    for (int i = 0; i < NO / 4; i++)
      *(float2 *)(dst + i * 8) = make_float2(o[4 * i + 2 * x] * inv, o[4 * i + 2 * x + 1] * inv);
    if (c4 == 0) a.lse[orow] = empty_row ? -INFINITY : (m[x] * sl2 + log2f(l[x])) * SR_LN2;
  }
#else
  __trap();
#endif
}

#endif
