/*
 * sr_attn_kernels.cuh — the block-sparse causal flash-attention forward kernels (device code
 * only; included by sr_cuda_attn.cu and by the ladder in dev/attn_fwd.cu, which validates and
 * times every version against a CPU reference).
 *
 * Work: one CTA per CSR row = (q-head h, local q-block mb), up to bq query rows. The row's
 * entries name KV slots; each slot holds bk keys at k + slot*bk*d (bf16). Rows are handed out
 * latest q-block first (causal rows get longer towards the end, so the long ones start first
 * and the short ones fill the tail of the grid), and the q-heads of one q-block are adjacent
 * so that the heads of a GQA group read the same K/V blocks out of L2 at about the same time.
 *
 * Masking is per element, exactly as kernels.h defines it: key kpos+j is visible to query
 * qpos+i iff kpos+j <= qpos+i and kpos+j < kv_limit. An entry none of whose keys is visible
 * to any row of the block (entirely in the future, or past kv_limit) is skipped without being
 * loaded; keys of a slot at or past kv_limit may be garbage (NaN) in the pool, so they are
 * never read: the loaders zero-fill those rows instead. Query rows past nq (the tail of a
 * partial last q-block) are zero-filled and never written.
 *
 * Column chunks (kpos[e] < 0; Vertical-Slash / FlexPrefill columns): cnt = -kpos[e] keys,
 * 1 <= cnt <= bk, whose K/V rows are the pool rows colrow[slot[e] + j] (row r at k + r*d),
 * j < cnt. Every version supports them the same way: the loaders gather the rows into the
 * same packed tile a block would fill (sr_load_rows: cp.async 16-byte chunks per row, rows
 * j >= cnt zero-filled), and the mask treats the chunk as a block whose keys all lie before
 * the first query (no causal part, no kv_limit) with cnt valid keys: columns j >= cnt are
 * -inf for every row, nothing else is masked, so a full chunk (cnt = bk) takes the unmasked
 * path. The chunk's row indices are prefetched into L1 an iteration ahead
 * (sr_prefetch_cols), so the gather does not wait on L2 for its addresses. Block entries
 * run exactly as before (same loads, masks and arithmetic).
 *
 * Softmax: online, in base 2: scores are multiplied by scale*log2(e) and exponentiated with
 * ex2.approx; the running max m and sum l are per row. A row that has seen no visible key
 * keeps m = -inf; its exponent reference is then 0 instead of m, so exp2(-inf - 0) = 0 and
 * no -inf - -inf = NaN appears. At the end such rows get out = 0 and lse = -inf.
 *
 * Versions (the ladder in dev/attn_fwd.cu numbers them; docs/GPU.md has their measured rates):
 *   v1 generic        any bq, bk, d: one warp per query row, fp32 SIMT dot products, K/V
 *                     straight from global memory. Correct everywhere, fast nowhere.
 *   v2/v3 mma         bq, bk, d in {64, 128}: tensor cores through mma.sync m16n8k16 (bf16 in,
 *                     fp32 accumulate) with ldmatrix from XOR-swizzled shared memory; one warp
 *                     owns 16 query rows; Q fragments stay in registers. PIPE=false (v2) loads K
 *                     and V of an entry together and waits; PIPE=true (v3) is
 *                     FlashAttention-2's schedule: V of entry e streams in (cp.async) during
 *                     S = Q.K^T, K of the next entry during softmax and P.V. Production on GPUs
 *                     (or builds) without sm_90a.
 *   v4 wgmma          the same shapes on Hopper's warpgroup MMA (sm_90a only): a warpgroup (128
 *                     threads) owns 64 query rows; S = Q.K^T reads Q and K from shared memory
 *                     through matrix descriptors, O += P.V takes P from registers and V
 *                     (N-major) from shared memory; K/V double-buffered.
 *   v5 wgmma_pipe     v4 with FlashAttention-3's intra-warpgroup overlap: the softmax of block j
 *                     runs while the tensor cores compute P_{j-1}.V_{j-1}. Production on Hopper
 *                     where bq or bk is 64.
 *   v6 wgmma_persist  v5 made persistent (one CTA per SM streams the entries of its rows). It
 *                     measured slower than v5 and is kept in the ladder only.
 *   v7                v5 with 3 K/V stages (sr_attn_wgmma_pipe<..., 3>): production at
 *                     bq = bk = 128, where it measured as fast as v5 or slightly faster.
 * Shared-memory tile layout (all tensor-core versions): a tile of R rows x D bf16 is stored
 * as D/64 panels of R rows x 128 bytes; the 16-byte chunk c of row r sits at chunk c ^ (r%8).
 * That is conflict-free for ldmatrix (8 rows of one chunk column hit 8 different chunks) and
 * is exactly the 128-byte swizzle (Swizzle<3,4,3>) that wgmma descriptors describe, provided
 * each panel starts on a 1024-byte boundary.
 */
#ifndef SR_ATTN_KERNELS_CUH
#define SR_ATTN_KERNELS_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

typedef __nv_bfloat16 sr_bf16;

/* Everything a kernel needs; the int64 arrays live in device memory. */
typedef struct sr_attn_dev {
  int q_heads, d, bq, bk, nqb;
  int head_major; /* CTA order: 0 heads of one q-block adjacent; 1 q-blocks of one head adjacent */
  int64_t nq, kv_limit;
  float sl2; /* softmax scale * log2(e) */
  const sr_bf16 *q, *k, *v;
  const int64_t *qpos, *row_ptr, *kpos;
  const int32_t *slot;
  const int32_t *colrow; /* pool rows of the column chunks (kpos < 0); unused without them */
  float *out, *lse;
} sr_attn_dev;

#define SR_LN2 0.69314718055994530942f
#define SR_LOG2E 1.44269504088896340736f

/* ---- small helpers --------------------------------------------------------------------- */

/* The row (h, mb) of CTA t, latest q-block first. Dense-like lists: the heads of one q-block
 * adjacent (the CTAs running together read the same key blocks). Sparse lists (head_major):
 * the q-blocks of one head adjacent, heads in order, so the CTAs running together read one
 * kv-head's blocks and the 4 q-heads of its group follow each other: that kv-head's K/V stays
 * in L2 while per-head selections pick different blocks of it. */
static __device__ __forceinline__ void sr_row_of(const sr_attn_dev &a, int t, int &h, int &mb) {
  if (a.head_major) {
    h = t / a.nqb;
    mb = a.nqb - 1 - t % a.nqb;
  } else {
    mb = a.nqb - 1 - t / a.q_heads;
    h = t % a.q_heads;
  }
}

/* Keys of entry e that some row of the block can see: min(bk, kv_limit - kp, qlast + 1 - kp)
 * for a block, cnt = -kp for a column chunk (all of its keys are visible to every row). */
static __device__ __forceinline__ int64_t sr_visible_keys(const sr_attn_dev &a, int64_t kp,
                                                          int64_t qlast) {
  if (kp < 0) return -kp;
  int64_t jn = a.bk;
  if (a.kv_limit - kp < jn) jn = a.kv_limit - kp;
  if (qlast + 1 - kp < jn) jn = qlast + 1 - kp;
  return jn;
}

/* First entry at or after e with a visible key (e_end if none). Every thread computes the same
 * value, so the branches it feeds are uniform across the CTA. */
static __device__ __forceinline__ int64_t sr_next_entry(const sr_attn_dev &a, int64_t e,
                                                        int64_t e_end, int64_t qlast) {
  while (e < e_end && sr_visible_keys(a, a.kpos[e], qlast) <= 0) e++;
  return e;
}

static __device__ __forceinline__ float sr_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

static __device__ __forceinline__ uint32_t sr_smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16-byte async copy global -> shared; src_bytes = 0 zero-fills the destination. */
static __device__ __forceinline__ void sr_cp_async16(uint32_t dst, const void *src,
                                                     int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
static __device__ __forceinline__ void sr_cp_async_commit(void) {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> static __device__ __forceinline__ void sr_cp_async_wait(void) {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

static __device__ __forceinline__ void sr_ldmatrix_x4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
static __device__ __forceinline__ void sr_ldmatrix_x4_trans(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

/* c += a . b for one m16n8k16 tile (bf16 operands, fp32 accumulators). */
static __device__ __forceinline__ void sr_mma16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                   uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats -> packed bf16x2 (round to nearest even), lo in the low half. */
static __device__ __forceinline__ uint32_t sr_pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&v;
}

/* Element offset of (r, c) in a swizzled tile of R rows (see the file comment). */
template <int R> static __device__ __forceinline__ int sr_swz(int r, int c) {
  return (c >> 6) * (R * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}

/* Issues the cp.async copies of a tile of R rows x D (rows contiguous in global memory, row
 * stride D) into the swizzled layout; rows >= valid are zero-filled, never read. */
template <int R, int D, int NT>
static __device__ __forceinline__ void sr_load_tile(sr_bf16 *sm, const sr_bf16 *g, int valid) {
  constexpr int CPR = D / 8; /* 16-byte chunks per row */
  static_assert((R * CPR) % NT == 0, "tile chunks must divide among the threads");
#pragma unroll
  for (int it = 0; it < R * CPR / NT; it++) {
    const int x = it * NT + (int)threadIdx.x;
    const int r = x / CPR, cc = x % CPR;
    const bool ok = r < valid;
    sr_cp_async16(sr_smem_u32(sm + sr_swz<R>(r, cc * 8)), ok ? (const void *)(g + (size_t)r * D + cc * 8) : (const void *)g,
                  ok ? 16 : 0);
  }
}

/* Rows of an entry's K/V tile that hold keys (the rest are zero-filled): a block's keys before
 * kv_limit, or a column chunk's cnt = -kp. Uniform across the CTA. */
template <int BK>
static __device__ __forceinline__ int sr_entry_valid(const sr_attn_dev &a, int64_t kp) {
  if (kp < 0) return (int)-kp;
  return (int)(a.kv_limit - kp < BK ? a.kv_limit - kp : BK);
}

/* The gathered form of sr_load_tile: tile row r is pool row rows[r] (d = D values at
 * pool + rows[r]*D), r < valid; rows >= valid are zero-filled. A warp's copies cover
 * RPW = 32/CPR rows per round and IT rounds, so it needs at most 32 indices: lane l loads the
 * index of the warp's row l (one load per thread, all issued at once), and each round takes
 * its row's index from that lane by a shuffle. Every thread of the CTA must call it. */
template <int R, int D, int NT>
static __device__ __forceinline__ void sr_load_rows(sr_bf16 *sm, const sr_bf16 *pool,
                                                    const int32_t *rows, int valid) {
  constexpr int CPR = D / 8, RPW = 32 / CPR, IT = R * CPR / NT;
  static_assert((R * CPR) % NT == 0 && 32 % CPR == 0, "tile chunks must divide among the threads");
  static_assert(IT * RPW <= 32, "a warp's rows must fit its lanes");
  const int lane = (int)threadIdx.x & 31, w = (int)threadIdx.x >> 5;
  int32_t mine = 0;
  {
    const int r = (lane / RPW) * (NT / CPR) + w * RPW + lane % RPW; /* round lane/RPW */
    if (lane < IT * RPW && r < valid) mine = rows[r];
  }
#pragma unroll
  for (int it = 0; it < IT; it++) {
    const int x = it * NT + (int)threadIdx.x;
    const int r = x / CPR, cc = x % CPR;
    const int32_t row = __shfl_sync(0xffffffffu, mine, it * RPW + lane / CPR);
    const bool ok = r < valid;
    sr_cp_async16(sr_smem_u32(sm + sr_swz<R>(r, cc * 8)),
                  ok ? (const void *)(pool + (size_t)row * D + cc * 8) : (const void *)pool,
                  ok ? 16 : 0);
  }
}

/* Issues the copies of entry e's K or V tile (pool = a.k or a.v): a block (slot e at
 * pool + slot*BK*D, rows from kv_limit on zero-filled) or a column chunk (gathered rows). */
template <int R, int D, int NT>
static __device__ __forceinline__ void sr_load_kv(sr_bf16 *sm, const sr_attn_dev &a,
                                                  const sr_bf16 *pool, int64_t e) {
  const int64_t kp = a.kpos[e];
  if (kp < 0)
    sr_load_rows<R, D, NT>(sm, pool, a.colrow + a.slot[e], (int)-kp);
  else
    sr_load_tile<R, D, NT>(sm, pool + (size_t)a.slot[e] * ((size_t)R * D),
                           sr_entry_valid<R>(a, kp));
}

/* Brings the row indices of entry e into L1 when it is a column chunk, ahead of the iteration
 * that loads its tile, so that the loader's index reads do not wait for L2 (one 128-byte line
 * per thread, the first (cnt + 31) / 32 + 1 threads; the last covers a line crossing). */
static __device__ __forceinline__ void sr_prefetch_cols(const sr_attn_dev &a, int64_t e) {
  const int64_t kp = a.kpos[e];
  if (kp >= 0) return;
  const int t = (int)threadIdx.x, cnt = (int)-kp;
  if (t * 32 <= cnt + 31) {
    const int off = t * 32 < cnt ? t * 32 : cnt - 1;
    asm volatile("prefetch.L1 [%0];\n" ::"l"(a.colrow + a.slot[e] + off));
  }
}

/* Mask parameters of an entry's S tile: whether any element needs masking, and dk (key
 * position minus the first query's) for the causal part. A column chunk masks only its
 * columns j >= cnt; dk = -BK puts all its keys before every query row. */
#define SR_MASK_NEEDED(kp, qfirst, valid, BK, kv_limit)                                            \
  ((kp) < 0 ? (valid) < (BK) : ((kp) + (BK) - 1 > (qfirst) || (kp) + (BK) > (kv_limit)))
#define SR_MASK_DK(kp, qfirst, BK) ((kp) < 0 ? -(BK) : (int)((kp) - (qfirst)))

/* ---- generic: any shape -------------------------------------------------------------- */

#define SR_GEN_WARPS 4

/* Dynamic shared memory: SR_GEN_WARPS * 2 * d floats (a scaled q row and an accumulator per
 * warp). Each lane owns the columns c = lane + 32*t of both, so the warp needs no barrier
 * between them except around the reuse for the next row. */
static __global__ void __launch_bounds__(SR_GEN_WARPS * 32) sr_attn_generic(sr_attn_dev a) {
  extern __shared__ float sr_gen_sm[];
  int h, mb;
  sr_row_of(a, (int)blockIdx.x, h, mb);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d = a.d;
  const int64_t i0 = (int64_t)mb * a.bq;
  const int64_t qrows = a.nq - i0 < a.bq ? a.nq - i0 : a.bq;
  if (qrows <= 0) return;
  float *qs = sr_gen_sm + (size_t)warp * 2 * d, *acc = qs + d;
  const int64_t r = (int64_t)h * a.nqb + mb, e0 = a.row_ptr[r], e1 = a.row_ptr[r + 1];
  const size_t blk = (size_t)a.bk * (size_t)d;
  for (int64_t i = warp; i < qrows; i += SR_GEN_WARPS) {
    const size_t row = (size_t)h * (size_t)a.nq + (size_t)(i0 + i);
    const sr_bf16 *qrow = a.q + row * d;
    for (int c = lane; c < d; c += 32) {
      qs[c] = __bfloat162float(qrow[c]) * a.sl2;
      acc[c] = 0.0f;
    }
    __syncwarp();
    const int64_t qp = a.qpos[mb] + i;
    float m = -INFINITY, l = 0.0f;
    for (int64_t e = e0; e < e1; e++) {
      const int64_t kp = a.kpos[e];
      int64_t jn = a.bk;
      const int32_t *crow = NULL; /* a column chunk's pool rows */
      if (kp < 0) {
        jn = -kp;
        crow = a.colrow + a.slot[e];
      } else {
        if (a.kv_limit - kp < jn) jn = a.kv_limit - kp;
        if (qp + 1 - kp < jn) jn = qp + 1 - kp;
      }
      const size_t base = (size_t)a.slot[e] * blk;
      for (int64_t j = 0; j < jn; j++) {
        const size_t ro = crow ? (size_t)crow[j] * (size_t)d : base + (size_t)j * d;
        const sr_bf16 *kr = a.k + ro, *vr = a.v + ro;
        float s = 0.0f;
        for (int c = lane; c < d; c += 32) s += qs[c] * __bfloat162float(kr[c]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float mn = fmaxf(m, s);
        const float alpha = sr_ex2(m - mn), p = sr_ex2(s - mn);
        l = l * alpha + p;
        for (int c = lane; c < d; c += 32) acc[c] = acc[c] * alpha + p * __bfloat162float(vr[c]);
        m = mn;
      }
    }
    const bool empty = m == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l;
    for (int c = lane; c < d; c += 32) a.out[row * d + c] = acc[c] * inv;
    if (lane == 0) a.lse[row] = empty ? -INFINITY : (m + log2f(l)) * SR_LN2;
    __syncwarp();
  }
}

/* ---- mma: mma.sync m16n8k16 ------------------------------------------------------------ */

/* Shared memory of the mma kernel: Q, K and V tiles. */
template <int BQ, int BK, int D>
static constexpr size_t sr_mma_smem_bytes() {
  return (size_t)(BQ + 2 * BK) * D * sizeof(sr_bf16);
}

template <int BQ, int BK, int D, bool PIPE>
static __global__ void __launch_bounds__(BQ * 2) sr_attn_mma(sr_attn_dev a) {
  constexpr int NW = BQ / 16, NT = NW * 32;
  constexpr int NT8 = BK / 8, DT8 = D / 8; /* n8 tiles of S and of O */
  extern __shared__ __align__(128) unsigned char sr_mma_sm[];
  sr_bf16 *Qs = (sr_bf16 *)sr_mma_sm, *Ks = Qs + BQ * D, *Vs = Ks + BK * D;

  int h, mb;
  sr_row_of(a, (int)blockIdx.x, h, mb);
  const int64_t i0 = (int64_t)mb * BQ;
  const int qrows = (int)(a.nq - i0 < BQ ? a.nq - i0 : BQ);
  if (qrows <= 0) return;
  const int64_t qfirst = a.qpos[mb], qlast = qfirst + qrows - 1;
  const int64_t r = (int64_t)h * a.nqb + mb, e_end = a.row_ptr[r + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c4 = lane & 3;

  int64_t e = sr_next_entry(a, a.row_ptr[r], e_end, qlast);
  sr_load_tile<BQ, D, NT>(Qs, a.q + ((size_t)h * a.nq + i0) * D, qrows);
  sr_cp_async_commit();
  if (e < e_end) {
    sr_load_kv<BK, D, NT>(Ks, a, a.k, e);
    if (!PIPE) sr_load_kv<BK, D, NT>(Vs, a, a.v, e);
    if (e + 1 < e_end) sr_prefetch_cols(a, e + 1);
  }
  sr_cp_async_commit();
  sr_cp_async_wait<1>();
  __syncthreads();

  /* Q fragments of this warp's 16 rows, all of D, kept in registers. ldmatrix lane l gives
   * the address of row (l%8) of matrix l/8; rows of every matrix start at a multiple of 8, so
   * a row's swizzle phase is always lane%8. */
  uint32_t qf[D / 16][4];
  {
    const int mi = lane >> 3, row = warp * 16 + (lane & 7) + (mi & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
      sr_ldmatrix_x4(qf[kk], sr_smem_u32(Qs + sr_swz<BQ>(row, kk * 16 + (mi >> 1) * 8)));
  }

  float o[DT8][4];
#pragma unroll
  for (int j = 0; j < DT8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.sl2;

  while (e < e_end) {
    const int64_t kp = a.kpos[e];
    const int valid = sr_entry_valid<BK>(a, kp);
    sr_cp_async_wait<0>();
    __syncthreads(); /* K (and V) of e are in; every warp is done with the previous V */
    if (PIPE) {
      sr_load_kv<BK, D, NT>(Vs, a, a.v, e);
      sr_cp_async_commit();
    }
    if (e + 2 < e_end) sr_prefetch_cols(a, e + 2); /* the next entry's K loads in this one */

    /* S = Q . K^T: ldmatrix.x4 of K gives the b fragments of two n8 tiles for one k16. */
    float s[NT8][4];
#pragma unroll
    for (int j = 0; j < NT8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    {
      const int mi = lane >> 3, krow = (lane & 7) + (mi >> 1) * 8, kcol = (mi & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int nn = 0; nn < BK / 16; nn++) {
          uint32_t b[4];
          sr_ldmatrix_x4(b, sr_smem_u32(Ks + sr_swz<BK>(nn * 16 + krow, kk * 16 + kcol)));
          sr_mma16816(s[2 * nn], qf[kk], b[0], b[1]);
          sr_mma16816(s[2 * nn + 1], qf[kk], b[2], b[3]);
        }
    }

    /* Mask future keys and keys past kv_limit (only blocks that have such keys), and the
     * empty columns of a partial column chunk. */
    if (SR_MASK_NEEDED(kp, qfirst, valid, BK, a.kv_limit)) {
      const int dk = SR_MASK_DK(kp, qfirst, BK); /* in [-BK, BQ): the block is not skipped */
#pragma unroll
      for (int j = 0; j < NT8; j++)
#pragma unroll
        for (int x = 0; x < 4; x++) {
          const int row = warp * 16 + g + (x >> 1) * 8, col = j * 8 + 2 * c4 + (x & 1);
          if (col + dk > row || col >= valid) s[j][x] = -INFINITY;
        }
    }

    if (PIPE) {
      sr_cp_async_wait<0>();
      __syncthreads(); /* V of e is in; every warp is done with K of e */
    }
    const int64_t en = sr_next_entry(a, e + 1, e_end, qlast);
    if (PIPE && en < e_end) {
      sr_load_kv<BK, D, NT>(Ks, a, a.k, en);
      sr_cp_async_commit();
    }

    /* Online softmax over this block, rows g and g+8 of the warp's 16. */
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < NT8; j++)
#pragma unroll
      for (int x = 0; x < 4; x++) {
        s[j][x] *= sl2;
        mx[x >> 1] = fmaxf(mx[x >> 1], s[j][x]);
      }
    float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; x++) {
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
      ref[x] = mx[x] == -INFINITY ? 0.0f : mx[x];
      alpha[x] = sr_ex2(m[x] - ref[x]);
      m[x] = mx[x];
    }
    uint32_t pf[BK / 16][4];
#pragma unroll
    for (int j = 0; j < NT8; j++) {
      const float p0 = sr_ex2(s[j][0] - ref[0]), p1 = sr_ex2(s[j][1] - ref[0]);
      const float p2 = sr_ex2(s[j][2] - ref[1]), p3 = sr_ex2(s[j][3] - ref[1]);
      sum[0] += p0 + p1;
      sum[1] += p2 + p3;
      pf[j >> 1][(j & 1) * 2 + 0] = sr_pack_bf16(p0, p1);
      pf[j >> 1][(j & 1) * 2 + 1] = sr_pack_bf16(p2, p3);
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];
#pragma unroll
    for (int j = 0; j < DT8; j++) {
      o[j][0] *= alpha[0], o[j][1] *= alpha[0];
      o[j][2] *= alpha[1], o[j][3] *= alpha[1];
    }

    /* O += P . V: ldmatrix.trans of V gives the b fragments of two d-tiles for one k16. */
    {
      const int mi = lane >> 3, vrow = (lane & 7) + (mi & 1) * 8, vcol = (mi >> 1) * 8;
#pragma unroll
      for (int t = 0; t < BK / 16; t++)
#pragma unroll
        for (int dd = 0; dd < D / 16; dd++) {
          uint32_t b[4];
          sr_ldmatrix_x4_trans(b, sr_smem_u32(Vs + sr_swz<BK>(t * 16 + vrow, dd * 16 + vcol)));
          sr_mma16816(o[2 * dd], pf[t], b[0], b[1]);
          sr_mma16816(o[2 * dd + 1], pf[t], b[2], b[3]);
        }
    }

    if (!PIPE) {
      __syncthreads(); /* every warp is done with K and V of e */
      if (en < e_end) {
        sr_load_kv<BK, D, NT>(Ks, a, a.k, en);
        sr_load_kv<BK, D, NT>(Vs, a, a.v, en);
        sr_cp_async_commit();
      }
    }
    e = en;
  }
  sr_cp_async_wait<0>(); /* nothing may be in flight when the CTA exits */

  /* Normalise and write rows g and g+8; a quad (4 lanes) shares a row. */
#pragma unroll
  for (int x = 0; x < 2; x++) {
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    const int row = warp * 16 + g + x * 8;
    if (row >= qrows) continue;
    const bool empty = m[x] == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l[x];
    const size_t orow = (size_t)h * (size_t)a.nq + (size_t)(i0 + row);
    float *dst = a.out + orow * D + 2 * c4;
#pragma unroll
    for (int j = 0; j < DT8; j++)
      *(float2 *)(dst + j * 8) = make_float2(o[j][2 * x] * inv, o[j][2 * x + 1] * inv);
    if (c4 == 0) a.lse[orow] = empty ? -INFINITY : (m[x] + log2f(l[x])) * SR_LN2;
  }
}

/* ---- wgmma: Hopper warpgroup MMA (sm_90a) ------------------------------------------------- */

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SR_HAVE_WGMMA_DEVICE 1
#endif

/* Shared memory of the wgmma kernel: Q, two K and two V tiles, plus 1 KiB to align the base. */
template <int BQ, int BK, int D>
static constexpr size_t sr_wgmma_smem_bytes() {
  return (size_t)(BQ + 4 * BK) * D * sizeof(sr_bf16) + 1024;
}

#ifdef SR_HAVE_WGMMA_DEVICE
/* Matrix descriptor of a 128-byte-swizzled shared-memory operand: start address, leading and
 * stride byte offsets (16-byte units), swizzle mode 1 (128B) in bits 62-63. */
static __device__ __forceinline__ uint64_t sr_wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}
static __device__ __forceinline__ void sr_wg_fence(void) {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
static __device__ __forceinline__ void sr_wg_commit(void) {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
static __device__ __forceinline__ void sr_wg_wait0(void) {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
static __device__ __forceinline__ void sr_wg_wait1(void) {
  asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
}
/* Pins a register's value to this point of the program: the compiler may not move reads of an
 * accumulator above the wgmma wait (it cannot see the asynchronous write). */
static __device__ __forceinline__ void sr_wg_pin(float &x) { asm volatile("" : "+f"(x)::"memory"); }
static __device__ __forceinline__ void sr_wg_pin_u(uint32_t &x) { asm volatile("" : "+r"(x)::"memory"); }
static __device__ __forceinline__ void sr_fence_proxy_async(void) {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#define SR_F8(d, i)                                                                                \
  "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),  \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define SR_F32(d, i) SR_F8(d, i), SR_F8(d, i + 8), SR_F8(d, i + 16), SR_F8(d, i + 24)

/* D[64 x N] (+)= A[64 x 16] . B[16 x N]; A and B K-major in shared memory. */
static __device__ __forceinline__ void sr_wg_ss64(float d[32], uint64_t da, uint64_t db, int acc) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
               "%32, %33, p, 1, 1, 0, 0;\n}\n"
               : SR_F32(d, 0)
               : "l"(da), "l"(db), "r"(acc));
}
static __device__ __forceinline__ void sr_wg_ss128(float d[64], uint64_t da, uint64_t db, int acc) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
               "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
               "%64, %65, p, 1, 1, 0, 0;\n}\n"
               : SR_F32(d, 0), SR_F32(d, 32)
               : "l"(da), "l"(db), "r"(acc));
}
/* D[64 x N] += A[64 x 16] . B[16 x N]; A in registers, B N-major (transposed) in shared memory. */
static __device__ __forceinline__ void sr_wg_rs64(float d[32], const uint32_t a[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
               "{%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
               : SR_F32(d, 0)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
static __device__ __forceinline__ void sr_wg_rs128(float d[64], const uint32_t a[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
               "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
               "{%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
               : SR_F32(d, 0), SR_F32(d, 32)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
#undef SR_F8
#undef SR_F32
#endif

template <int BQ, int BK, int D>
static __global__ void __launch_bounds__(BQ * 2, 1) sr_attn_wgmma(sr_attn_dev a) {
#ifdef SR_HAVE_WGMMA_DEVICE
  constexpr int NT = BQ * 2;          /* BQ/64 warpgroups of 128 threads */
  constexpr int NS = BK / 2, NO = D / 2; /* accumulator floats per thread of S and O */
  extern __shared__ unsigned char sr_wg_sm_raw[];
  sr_bf16 *Qs = (sr_bf16 *)(((uintptr_t)sr_wg_sm_raw + 1023) & ~(uintptr_t)1023);
  sr_bf16 *Ks = Qs + BQ * D; /* [2][BK*D] */
  sr_bf16 *Vs = Ks + 2 * BK * D;

  int h, mb;
  sr_row_of(a, (int)blockIdx.x, h, mb);
  const int64_t i0 = (int64_t)mb * BQ;
  const int qrows = (int)(a.nq - i0 < BQ ? a.nq - i0 : BQ);
  if (qrows <= 0) return;
  const int64_t qfirst = a.qpos[mb], qlast = qfirst + qrows - 1;
  const int64_t r = (int64_t)h * a.nqb + mb, e_end = a.row_ptr[r + 1];
  const int wg = threadIdx.x >> 7, w4 = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c4 = lane & 3;

  /* Prologue: Q, then entries 0 and 1 into buffers 0 and 1, one commit group each (groups may
   * be empty, so the count of outstanding groups is always the same). */
  sr_load_tile<BQ, D, NT>(Qs, a.q + ((size_t)h * a.nq + i0) * D, qrows);
  int64_t e = sr_next_entry(a, a.row_ptr[r], e_end, qlast);
  int64_t ef = e; /* the entry whose loads are issued next */
#pragma unroll
  for (int b = 0; b < 2; b++) {
    if (ef < e_end) {
      sr_load_kv<BK, D, NT>(Ks + b * BK * D, a, a.k, ef);
      sr_load_kv<BK, D, NT>(Vs + b * BK * D, a, a.v, ef);
      ef = sr_next_entry(a, ef + 1, e_end, qlast);
      if (ef < e_end) sr_prefetch_cols(a, ef);
    }
    sr_cp_async_commit();
  }

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; i++) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.sl2;
  const uint32_t q_base = sr_smem_u32(Qs) + wg * 64 * 128; /* this warpgroup's 64 rows */
  int buf = 0;

  while (e < e_end) {
    const int64_t kp = a.kpos[e];
    const int valid = sr_entry_valid<BK>(a, kp);
    sr_cp_async_wait<1>();   /* this entry's group (and Q) have landed for this thread ... */
    sr_fence_proxy_async();  /* ... and are visible to the tensor cores' async proxy ...    */
    __syncthreads();         /* ... for every thread's copies                                */
    const uint32_t k_base = sr_smem_u32(Ks + buf * BK * D), v_base = sr_smem_u32(Vs + buf * BK * D);

    /* S = Q . K^T over D/16 k-steps: k-step kk is 32 bytes into panel kk/4. */
    float s[NS];
#pragma unroll
    for (int i = 0; i < NS; i++) s[i] = 0.0f;
    sr_wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const uint64_t da = sr_wg_desc(q_base + (kk >> 2) * (BQ * 128) + (kk & 3) * 32, 16, 1024);
      const uint64_t db = sr_wg_desc(k_base + (kk >> 2) * (BK * 128) + (kk & 3) * 32, 16, 1024);
      if constexpr (BK == 128) sr_wg_ss128(s, da, db, kk > 0);
      else sr_wg_ss64(s, da, db, kk > 0);
    }
    sr_wg_commit();
    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NS; i++) sr_wg_pin(s[i]);

    /* Accumulator layout: s[4i + x] is row w4*16 + g + (x/2)*8, column 8i + 2*c4 + x%2. */
    if (SR_MASK_NEEDED(kp, qfirst, valid, BK, a.kv_limit)) {
      const int dk = SR_MASK_DK(kp, qfirst, BK);
#pragma unroll
      for (int i = 0; i < NS; i++) {
        const int row = wg * 64 + w4 * 16 + g + ((i >> 1) & 1) * 8;
        const int col = (i >> 2) * 8 + 2 * c4 + (i & 1);
        if (col + dk > row || col >= valid) s[i] = -INFINITY;
      }
    }

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < NS; i++) {
      s[i] *= sl2;
      mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    }
    float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; x++) {
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
      ref[x] = mx[x] == -INFINITY ? 0.0f : mx[x];
      alpha[x] = sr_ex2(m[x] - ref[x]);
      m[x] = mx[x];
    }
    /* P as the A operand of k-step t: n8 groups 2t and 2t+1 of S, in the mma.sync A order. */
    uint32_t pf[BK / 16][4];
#pragma unroll
    for (int i = 0; i < NS / 4; i++) {
      const float p0 = sr_ex2(s[4 * i + 0] - ref[0]), p1 = sr_ex2(s[4 * i + 1] - ref[0]);
      const float p2 = sr_ex2(s[4 * i + 2] - ref[1]), p3 = sr_ex2(s[4 * i + 3] - ref[1]);
      sum[0] += p0 + p1;
      sum[1] += p2 + p3;
      pf[i >> 1][(i & 1) * 2 + 0] = sr_pack_bf16(p0, p1);
      pf[i >> 1][(i & 1) * 2 + 1] = sr_pack_bf16(p2, p3);
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];
#pragma unroll
    for (int i = 0; i < NO; i++) o[i] *= alpha[(i >> 1) & 1];

    /* O += P . V over BK/16 k-steps: k-step t starts 16 rows (2048 bytes) into the V panels;
     * the N extent crosses panels by LBO = BK*128 bytes, 8-row groups by SBO = 1024. */
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
    sr_wg_fence();
#pragma unroll
    for (int t = 0; t < BK / 16; t++) {
      const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
      if constexpr (D == 128) sr_wg_rs128(o, pf[t], db);
      else sr_wg_rs64(o, pf[t], db);
    }
    sr_wg_commit();
    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);

    __syncthreads(); /* every warpgroup is done with buffer buf */
    if (ef < e_end) {
      sr_load_kv<BK, D, NT>(Ks + buf * BK * D, a, a.k, ef);
      sr_load_kv<BK, D, NT>(Vs + buf * BK * D, a, a.v, ef);
      ef = sr_next_entry(a, ef + 1, e_end, qlast);
      if (ef < e_end) sr_prefetch_cols(a, ef);
    }
    sr_cp_async_commit();
    buf ^= 1;
    e = sr_next_entry(a, e + 1, e_end, qlast);
  }
  sr_cp_async_wait<0>(); /* nothing may be in flight when the CTA exits */

#pragma unroll
  for (int x = 0; x < 2; x++) {
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    const int row = wg * 64 + w4 * 16 + g + x * 8;
    if (row >= qrows) continue;
    const bool empty = m[x] == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l[x];
    const size_t orow = (size_t)h * (size_t)a.nq + (size_t)(i0 + row);
    float *dst = a.out + orow * D + 2 * c4;
#pragma unroll
    for (int i = 0; i < NO / 4; i++)
      *(float2 *)(dst + i * 8) = make_float2(o[4 * i + 2 * x] * inv, o[4 * i + 2 * x + 1] * inv);
    if (c4 == 0) a.lse[orow] = empty ? -INFINITY : (m[x] + log2f(l[x])) * SR_LN2;
  }
#else
  __trap(); /* never launched: the host checks sr_attn_wgmma_built() first */
#endif
}

/*
 * wgmma_pipe: the wgmma kernel with FlashAttention-3's intra-warpgroup overlap. Iteration j
 * issues S_j = Q.K_j^T and then O += P_{j-1}.V_{j-1} (both asynchronous), waits for S_j only,
 * and runs the softmax of block j while the tensor cores still work on P_{j-1}.V_{j-1}; then
 * it waits for that product, rescales O by block j's alpha and packs P_j. So the exponentials
 * no longer leave the tensor cores idle. Buffers: NST stages of K and of V; K_j sits in
 * K[j%NST], V_j in V[j%NST]. K_j and V_{j-1} are read in iteration j, so at its end K[j%NST]
 * and V[(j-1)%NST] are free and K_{j+NST}, V_{j+NST-1} are loaded into them (one commit
 * group): NST-1 iterations before they are needed. NST = 2 is the ladder's v5; NST = 3 (v7)
 * prefetches one more block, for sparse rows whose blocks mostly come from DRAM (it needs
 * 225 KB of shared memory at bq = bk = d = 128).
 */
template <int BQ, int BK, int D, int NST = 2>
static constexpr size_t sr_wgmma_pipe_smem_bytes() {
  return (size_t)(BQ + 2 * NST * BK) * D * sizeof(sr_bf16) + 1024;
}

template <int BQ, int BK, int D, int NST = 2>
static __global__ void __launch_bounds__(BQ * 2, 1) sr_attn_wgmma_pipe(sr_attn_dev a) {
#ifdef SR_HAVE_WGMMA_DEVICE
  constexpr int NT = BQ * 2;
  constexpr int NS = BK / 2, NO = D / 2;
  extern __shared__ unsigned char sr_wgp_sm_raw[];
  sr_bf16 *Qs = (sr_bf16 *)(((uintptr_t)sr_wgp_sm_raw + 1023) & ~(uintptr_t)1023);
  sr_bf16 *Ks = Qs + BQ * D; /* [NST][BK*D] */
  sr_bf16 *Vs = Ks + NST * BK * D;

  int h, mb;
  sr_row_of(a, (int)blockIdx.x, h, mb);
  const int64_t i0 = (int64_t)mb * BQ;
  const int qrows = (int)(a.nq - i0 < BQ ? a.nq - i0 : BQ);
  if (qrows <= 0) return;
  const int64_t qfirst = a.qpos[mb], qlast = qfirst + qrows - 1;
  const int64_t r = (int64_t)h * a.nqb + mb, e_end = a.row_ptr[r + 1];
  const int wg = threadIdx.x >> 7, w4 = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c4 = lane & 3;

  /* The window of entries: win[i] = e_{j+i}, i = 0..NST (win[0] is the current entry). */
  int64_t win[NST + 1];
  win[0] = sr_next_entry(a, a.row_ptr[r], e_end, qlast);
#pragma unroll
  for (int i = 1; i <= NST; i++)
    win[i] = win[i - 1] < e_end ? sr_next_entry(a, win[i - 1] + 1, e_end, qlast) : e_end;
  if (win[NST] < e_end) sr_prefetch_cols(a, win[NST]);
  /* Prologue group i holds K_i and V_{i-1} (group 0 also Q): what iteration i reads. */
  sr_load_tile<BQ, D, NT>(Qs, a.q + ((size_t)h * a.nq + i0) * D, qrows);
#pragma unroll
  for (int i = 0; i < NST; i++) {
    if (win[i] < e_end) sr_load_kv<BK, D, NT>(Ks + i * BK * D, a, a.k, win[i]);
    if (i > 0 && win[i - 1] < e_end) sr_load_kv<BK, D, NT>(Vs + (i - 1) * BK * D, a, a.v, win[i - 1]);
    sr_cp_async_commit();
  }

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; i++) o[i] = 0.0f;
  uint32_t pf[BK / 16][4];
#pragma unroll
  for (int t = 0; t < BK / 16; t++) pf[t][0] = pf[t][1] = pf[t][2] = pf[t][3] = 0u;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.sl2;
  const uint32_t q_base = sr_smem_u32(Qs) + wg * 64 * 128;
  const uint32_t k_base0 = sr_smem_u32(Ks), v_base0 = sr_smem_u32(Vs);
  int j = 0;

  int ks = 0, vs = NST - 1; /* stages of K_j and V_{j-1} */
  for (; win[0] < e_end; j++) {
    const int64_t kp = a.kpos[win[0]];
    const int valid = sr_entry_valid<BK>(a, kp);
    sr_cp_async_wait<NST - 1>();
    sr_fence_proxy_async();
    __syncthreads(); /* K_j and V_{j-1} have landed */
    const uint32_t k_base = k_base0 + ks * (BK * D * 2);
    const uint32_t v_base = v_base0 + vs * (BK * D * 2);

    float s[NS];
#pragma unroll
    for (int i = 0; i < NS; i++) s[i] = 0.0f;
    sr_wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const uint64_t da = sr_wg_desc(q_base + (kk >> 2) * (BQ * 128) + (kk & 3) * 32, 16, 1024);
      const uint64_t db = sr_wg_desc(k_base + (kk >> 2) * (BK * 128) + (kk & 3) * 32, 16, 1024);
      if constexpr (BK == 128) sr_wg_ss128(s, da, db, kk > 0);
      else sr_wg_ss64(s, da, db, kk > 0);
    }
    sr_wg_commit();
    if (j > 0) { /* O += P_{j-1} . V_{j-1}, running under the softmax below */
#pragma unroll
      for (int t = 0; t < BK / 16; t++) {
        const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
        if constexpr (D == 128) sr_wg_rs128(o, pf[t], db);
        else sr_wg_rs64(o, pf[t], db);
      }
      sr_wg_commit();
      sr_wg_wait1();
    } else {
      sr_wg_wait0();
    }
#pragma unroll
    for (int i = 0; i < NS; i++) sr_wg_pin(s[i]);

    if (SR_MASK_NEEDED(kp, qfirst, valid, BK, a.kv_limit)) {
      const int dk = SR_MASK_DK(kp, qfirst, BK);
#pragma unroll
      for (int i = 0; i < NS; i++) {
        const int row = wg * 64 + w4 * 16 + g + ((i >> 1) & 1) * 8;
        const int col = (i >> 2) * 8 + 2 * c4 + (i & 1);
        if (col + dk > row || col >= valid) s[i] = -INFINITY;
      }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < NS; i++) {
      s[i] *= sl2;
      mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    }
    float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; x++) {
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
      ref[x] = mx[x] == -INFINITY ? 0.0f : mx[x];
      alpha[x] = sr_ex2(m[x] - ref[x]);
      m[x] = mx[x];
    }
#pragma unroll
    for (int i = 0; i < NS; i++) {
      s[i] = sr_ex2(s[i] - ref[(i >> 1) & 1]);
      sum[(i >> 1) & 1] += s[i];
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];

    /* P_{j-1}.V_{j-1} done: O to block j's reference, then P_j replaces P_{j-1}. */
    sr_wg_wait0();
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
      pf[i >> 1][(i & 1) * 2 + 0] = sr_pack_bf16(s[4 * i + 0], s[4 * i + 1]);
      pf[i >> 1][(i & 1) * 2 + 1] = sr_pack_bf16(s[4 * i + 2], s[4 * i + 3]);
    }

    __syncthreads(); /* every warpgroup is done with K[ks] and V[vs] */
    if (win[NST] < e_end) sr_load_kv<BK, D, NT>(Ks + ks * BK * D, a, a.k, win[NST]);
    if (win[NST - 1] < e_end) sr_load_kv<BK, D, NT>(Vs + vs * BK * D, a, a.v, win[NST - 1]);
    sr_cp_async_commit();
#pragma unroll
    for (int i = 0; i < NST; i++) win[i] = win[i + 1];
    win[NST] = win[NST] < e_end ? sr_next_entry(a, win[NST] + 1, e_end, qlast) : e_end;
    if (win[NST] < e_end) sr_prefetch_cols(a, win[NST]); /* its K loads next iteration */
    vs = ks; /* V_j is in stage j%NST, where K_j was */
    ks = ks + 1 == NST ? 0 : ks + 1;
  }

  if (j > 0) { /* the last block's P.V */
    sr_cp_async_wait<0>();
    sr_fence_proxy_async();
    __syncthreads();
    const uint32_t v_base = v_base0 + vs * (BK * D * 2);
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
    sr_wg_fence();
#pragma unroll
    for (int t = 0; t < BK / 16; t++) {
      const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
      if constexpr (D == 128) sr_wg_rs128(o, pf[t], db);
      else sr_wg_rs64(o, pf[t], db);
    }
    sr_wg_commit();
    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
  }
  sr_cp_async_wait<0>();

#pragma unroll
  for (int x = 0; x < 2; x++) {
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
    l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    const int row = wg * 64 + w4 * 16 + g + x * 8;
    if (row >= qrows) continue;
    const bool empty = m[x] == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / l[x];
    const size_t orow = (size_t)h * (size_t)a.nq + (size_t)(i0 + row);
    float *dst = a.out + orow * D + 2 * c4;
#pragma unroll
    for (int i = 0; i < NO / 4; i++)
      *(float2 *)(dst + i * 8) = make_float2(o[4 * i + 2 * x] * inv, o[4 * i + 2 * x + 1] * inv);
    if (c4 == 0) a.lse[orow] = empty ? -INFINITY : (m[x] + log2f(l[x])) * SR_LN2;
  }
#else
  __trap();
#endif
}

/*
 * wgmma_persist: the overlapped wgmma kernel made persistent. gridDim.x CTAs (one per SM)
 * take rows t = blockIdx.x, blockIdx.x + gridDim.x, ... (still latest q-block first) and
 * treat the entries of all their rows as one stream, so the prologue of a row (its Q and first
 * K/V loads, its first S) overlaps the tail of the previous row (its last P.V and the output
 * stores) instead of leaving the SM idle: short sparse rows pay much less fixed cost. Q is
 * double-buffered by row; a stream position is (row t, entry e, Q buffer); rows whose entries
 * are all invisible are written as empty (0, -inf) when the look-ahead passes them.
 */
typedef struct sr_spos {
  int t;     /* CTA-row index (sr_row_of); >= rows at the end of the stream */
  int qs;    /* Q buffer of the row */
  int64_t e; /* entry */
} sr_spos;

/* Geometry of row t. */
typedef struct sr_srow {
  int h, mb, qrows;
  int64_t i0, qfirst, qlast, e0, e1;
} sr_srow;

static __device__ __forceinline__ sr_srow sr_srow_of(const sr_attn_dev &a, int t, int bq) {
  sr_srow w;
  sr_row_of(a, t, w.h, w.mb);
  w.i0 = (int64_t)w.mb * bq;
  w.qrows = (int)(a.nq - w.i0 < bq ? a.nq - w.i0 : bq);
  w.qfirst = a.qpos[w.mb];
  w.qlast = w.qfirst + w.qrows - 1;
  const int64_t r = (int64_t)w.h * a.nqb + w.mb;
  w.e0 = a.row_ptr[r];
  w.e1 = a.row_ptr[r + 1];
  return w;
}

/* The stream position after p (p.e = -1 with p.t a row: that row's first entry). Every thread
 * calls it with the same p, so the CTA-wide writes of empty rows are uniform. */
template <int BQ, int D, int NT>
static __device__ sr_spos sr_stream_next(const sr_attn_dev &a, int rows, sr_spos p) {
  if (p.t >= rows) return p;
  sr_srow w = sr_srow_of(a, p.t, BQ);
  if (p.e >= 0) {
    const int64_t e = sr_next_entry(a, p.e + 1, w.e1, w.qlast);
    if (e < w.e1) return sr_spos{p.t, p.qs, e};
    p.t += gridDim.x; /* row exhausted: on to the next */
  }
  for (; p.t < rows; p.t += gridDim.x) {
    w = sr_srow_of(a, p.t, BQ);
    if (w.qrows <= 0) continue;
    const int64_t e = sr_next_entry(a, w.e0, w.e1, w.qlast);
    if (e < w.e1) return sr_spos{p.t, p.qs ^ 1, e};
    for (int x = threadIdx.x; x < w.qrows * D; x += NT) /* nothing visible: (0, -inf) */
      a.out[((size_t)w.h * a.nq + w.i0) * D + x] = 0.0f;
    for (int x = threadIdx.x; x < w.qrows; x += NT)
      a.lse[(size_t)w.h * a.nq + w.i0 + x] = -INFINITY;
  }
  return sr_spos{rows, p.qs, 0};
}

template <int BQ, int BK, int D>
static constexpr size_t sr_wgmma_persist_smem_bytes() {
  return (size_t)(2 * BQ + 4 * BK) * D * sizeof(sr_bf16) + 1024;
}

template <int BQ, int BK, int D>
static __global__ void __launch_bounds__(BQ * 2, 1) sr_attn_wgmma_persist(sr_attn_dev a, int rows) {
#ifdef SR_HAVE_WGMMA_DEVICE
  constexpr int NT = BQ * 2;
  constexpr int NS = BK / 2, NO = D / 2;
  extern __shared__ unsigned char sr_wgs_sm_raw[];
  sr_bf16 *Qs = (sr_bf16 *)(((uintptr_t)sr_wgs_sm_raw + 1023) & ~(uintptr_t)1023); /* [2][BQ*D] */
  sr_bf16 *Ks = Qs + 2 * BQ * D; /* [2][BK*D] */
  sr_bf16 *Vs = Ks + 2 * BK * D;
  const int wg = threadIdx.x >> 7, w4 = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, c4 = lane & 3;
#define SR_VALID(e) sr_entry_valid<BK>(a, a.kpos[e])
  /* Issues the Q load of p's row (when p starts it, i.e. its row differs from prev's). */
#define SR_LOAD_Q(p, prev_t)                                                                       \
  do {                                                                                             \
    if ((p).t < rows && (p).t != (prev_t)) {                                                       \
      const sr_srow w_ = sr_srow_of(a, (p).t, BQ);                                                 \
      sr_load_tile<BQ, D, NT>(Qs + (p).qs * BQ * D, a.q + ((size_t)w_.h * a.nq + w_.i0) * D,      \
                              w_.qrows);                                                           \
    }                                                                                              \
  } while (0)

  sr_spos cur = sr_stream_next<BQ, D, NT>(a, rows, sr_spos{(int)blockIdx.x, 1, -1});
  sr_spos n1 = sr_stream_next<BQ, D, NT>(a, rows, cur);
  sr_spos n2 = sr_stream_next<BQ, D, NT>(a, rows, n1);
  if (cur.t >= rows) return;
  SR_LOAD_Q(cur, -1);
  sr_load_kv<BK, D, NT>(Ks, a, a.k, cur.e);
  sr_cp_async_commit();
  SR_LOAD_Q(n1, cur.t);
  if (n1.t < rows) sr_load_kv<BK, D, NT>(Ks + BK * D, a, a.k, n1.e);
  sr_load_kv<BK, D, NT>(Vs, a, a.v, cur.e);
  if (n2.t < rows) sr_prefetch_cols(a, n2.e);
  sr_cp_async_commit();

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; i++) o[i] = 0.0f;
  uint32_t pf[BK / 16][4];
#pragma unroll
  for (int t = 0; t < BK / 16; t++) pf[t][0] = pf[t][1] = pf[t][2] = pf[t][3] = 0u;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.sl2;
  const uint32_t q_base0 = sr_smem_u32(Qs) + wg * 64 * 128;
  const uint32_t k_base0 = sr_smem_u32(Ks), v_base0 = sr_smem_u32(Vs);
  int prev_t = -1; /* row of the previous entry (its P.V is still to come) */
  sr_srow rw = sr_srow_of(a, cur.t, BQ);

  /* Writes the finished row t from o (which holds its complete P.V sums) with m and l. */
#define SR_EPILOGUE(t_, mm, ll)                                                                    \
  do {                                                                                             \
    const sr_srow pw = sr_srow_of(a, (t_), BQ);                                                    \
    _Pragma("unroll") for (int x = 0; x < 2; x++) {                                                \
      float lx = (ll)[x];                                                                          \
      lx += __shfl_xor_sync(0xffffffffu, lx, 1);                                                   \
      lx += __shfl_xor_sync(0xffffffffu, lx, 2);                                                   \
      const int row = wg * 64 + w4 * 16 + g + x * 8;                                               \
      if (row < pw.qrows) {                                                                        \
        const bool empty = (mm)[x] == -INFINITY;                                                   \
        const float inv = empty ? 0.0f : 1.0f / lx;                                                \
        const size_t orow = (size_t)pw.h * (size_t)a.nq + (size_t)(pw.i0 + row);                   \
        float *dst = a.out + orow * D + 2 * c4;                                                    \
        _Pragma("unroll") for (int i = 0; i < NO / 4; i++) *(float2 *)(dst + i * 8) =              \
            make_float2(o[4 * i + 2 * x] * inv, o[4 * i + 2 * x + 1] * inv);                      \
        if (c4 == 0) a.lse[orow] = empty ? -INFINITY : ((mm)[x] + log2f(lx)) * SR_LN2;             \
      }                                                                                            \
    }                                                                                              \
  } while (0)

  int j = 0;
  for (; cur.t < rows; j++) {
    if (j > 0 && cur.t != prev_t) rw = sr_srow_of(a, cur.t, BQ); /* cur's row geometry */
    const int64_t kp = a.kpos[cur.e];
    const int valid = SR_VALID(cur.e);
    sr_cp_async_wait<1>();
    sr_fence_proxy_async();
    __syncthreads(); /* K_j (and its row's Q) and V_{j-1} have landed */
    const uint32_t q_base = q_base0 + cur.qs * (BQ * D * 2);
    const uint32_t k_base = k_base0 + (j & 1) * (BK * D * 2);
    const uint32_t v_base = v_base0 + ((j - 1) & 1) * (BK * D * 2);

    float s[NS];
#pragma unroll
    for (int i = 0; i < NS; i++) s[i] = 0.0f;
    sr_wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const uint64_t da = sr_wg_desc(q_base + (kk >> 2) * (BQ * 128) + (kk & 3) * 32, 16, 1024);
      const uint64_t db = sr_wg_desc(k_base + (kk >> 2) * (BK * 128) + (kk & 3) * 32, 16, 1024);
      if constexpr (BK == 128) sr_wg_ss128(s, da, db, kk > 0);
      else sr_wg_ss64(s, da, db, kk > 0);
    }
    sr_wg_commit();
    if (j > 0) {
#pragma unroll
      for (int t = 0; t < BK / 16; t++) {
        const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
        if constexpr (D == 128) sr_wg_rs128(o, pf[t], db);
        else sr_wg_rs64(o, pf[t], db);
      }
      sr_wg_commit();
      sr_wg_wait1();
    } else {
      sr_wg_wait0();
    }
#pragma unroll
    for (int i = 0; i < NS; i++) sr_wg_pin(s[i]);

    /* A new row starts from an empty softmax state; the old one's m, l go to its epilogue. */
    const bool new_row = cur.t != prev_t;
    float mo[2] = {m[0], m[1]}, lo[2] = {l[0], l[1]};
    if (new_row) {
      m[0] = m[1] = -INFINITY;
      l[0] = l[1] = 0.0f;
    }
    if (SR_MASK_NEEDED(kp, rw.qfirst, valid, BK, a.kv_limit)) {
      const int dk = SR_MASK_DK(kp, rw.qfirst, BK);
#pragma unroll
      for (int i = 0; i < NS; i++) {
        const int row = wg * 64 + w4 * 16 + g + ((i >> 1) & 1) * 8;
        const int col = (i >> 2) * 8 + 2 * c4 + (i & 1);
        if (col + dk > row || col >= valid) s[i] = -INFINITY;
      }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < NS; i++) {
      s[i] *= sl2;
      mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    }
    float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int x = 0; x < 2; x++) {
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
      mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
      ref[x] = mx[x] == -INFINITY ? 0.0f : mx[x];
      alpha[x] = sr_ex2(m[x] - ref[x]);
      m[x] = mx[x];
    }
#pragma unroll
    for (int i = 0; i < NS; i++) {
      s[i] = sr_ex2(s[i] - ref[(i >> 1) & 1]);
      sum[(i >> 1) & 1] += s[i];
    }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];

    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
#pragma unroll
    for (int t = 0; t < BK / 16; t++)
#pragma unroll
      for (int x = 0; x < 4; x++) sr_wg_pin_u(pf[t][x]);
    if (new_row && j > 0) SR_EPILOGUE(prev_t, mo, lo); /* the previous row is complete */
#pragma unroll
    for (int i = 0; i < NO; i++) o[i] *= alpha[(i >> 1) & 1]; /* alpha = 0 on a new row */
#pragma unroll
    for (int i = 0; i < NS / 4; i++) {
      pf[i >> 1][(i & 1) * 2 + 0] = sr_pack_bf16(s[4 * i + 0], s[4 * i + 1]);
      pf[i >> 1][(i & 1) * 2 + 1] = sr_pack_bf16(s[4 * i + 2], s[4 * i + 3]);
    }

    __syncthreads(); /* every warpgroup is done with K[j%2], V[(j-1)%2] and cur's old Q buffer */
    SR_LOAD_Q(n2, n1.t);
    if (n2.t < rows) sr_load_kv<BK, D, NT>(Ks + (j & 1) * BK * D, a, a.k, n2.e);
    if (n1.t < rows) sr_load_kv<BK, D, NT>(Vs + ((j + 1) & 1) * BK * D, a, a.v, n1.e);
    sr_cp_async_commit();
    prev_t = cur.t;
    cur = n1;
    n1 = n2;
    n2 = sr_stream_next<BQ, D, NT>(a, rows, n2);
    if (n2.t < rows) sr_prefetch_cols(a, n2.e);
  }

  /* The last entry's P.V, then the last row's output. */
  sr_cp_async_wait<0>();
  sr_fence_proxy_async();
  __syncthreads();
  {
    const uint32_t v_base = v_base0 + ((j - 1) & 1) * (BK * D * 2);
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
    sr_wg_fence();
#pragma unroll
    for (int t = 0; t < BK / 16; t++) {
      const uint64_t db = sr_wg_desc(v_base + t * 2048, BK * 128, 1024);
      if constexpr (D == 128) sr_wg_rs128(o, pf[t], db);
      else sr_wg_rs64(o, pf[t], db);
    }
    sr_wg_commit();
    sr_wg_wait0();
#pragma unroll
    for (int i = 0; i < NO; i++) sr_wg_pin(o[i]);
  }
  SR_EPILOGUE(prev_t, m, l);
#undef SR_EPILOGUE
#undef SR_LOAD_Q
#undef SR_VALID
#else
  __trap();
#endif
}

/* 1 if this binary holds sm_90a code (the wgmma kernels are real), written by one thread. */
static __global__ void sr_attn_wgmma_probe(int *flag) {
#ifdef SR_HAVE_WGMMA_DEVICE
  *flag = 1;
#else
  *flag = 0;
#endif
}

#endif
