/*
 * sr_cuda_decode.cu — the decode ops of the CUDA backend (kernels.h "Decode"; the CPU backend's
 * kernels/cpu/cpu_decode.c is the semantic reference): split-KV attention of one new query per
 * (sequence, q-head) over listed cache rows, Quest's page summaries, page scores and per-list
 * top-k, the column max of the SnapKV-family estimate, and byte uploads / downloads.
 *
 * Storage: K/V and the page summaries are bf16 (handled here as raw 16-bit words: a bf16 is the
 * top half of an fp32, so widening is a shift and min/max pick stored words unchanged); q, out,
 * lse and scores are fp32; entry arrays are int32 device memory.
 *
 * decode_fwd, page_minmax, page_scores and page_topk only queue work on the compute stream (no
 * host synchronisation, except the one-time growth of a cached device workspace). est_colmax
 * and download wait for their result; upload stages the bytes through the backend's pinned ring
 * and returns as soon as the caller's buffer is no longer needed.
 *
 * ---- decode_fwd: split-KV (flash-decoding), memory plan -------------------------------------
 * Work item = (list l, head chunk hc, split c). A list's entries [0, nent) (own, shared, tail)
 * are cut into nsplit splits of `chunk` consecutive entries; nsplit is a function of the entry
 * counts alone (about DF_TARGET_CTAS CTAs in all), so results are bitwise reproducible.
 * One CTA of DF_WARPS warps per work item; warp w takes entries e0 + w, e0 + w + DF_WARPS, ...
 * (it fetches 32 (row, len) pairs at once, one per lane, and broadcasts them with shuffles).
 * Inside a warp a K/V row of d bf16 (256 B at d = 128) is read by LPR = d/8 lanes with one
 * 16-byte load each, so a warp covers SLOTS = 32/LPR rows at once (2 at d = 128, 4 at d = 64);
 * each slot handles DF_U rows per batch, with all K and V loads of the batch issued before any
 * arithmetic (8 x 16 B in flight per lane). The q vectors of the chunk's GC heads live in
 * registers (8 dims per lane, pre-scaled by scale*log2(e)), so every K/V row is read once for
 * the whole GQA group. Dots: 8 FMAs per lane and head, then a butterfly over the LPR lanes.
 * Every slot keeps its own online softmax (m, s, acc[8] per head, base-2 exponent); at the end
 * the slots of a warp merge through shuffles, the warps through shared memory, and the CTA
 * writes one partial (m, s, acc[d]) per head to the workspace. A second kernel merges the
 * splits of every (list, head) in a fixed order and writes out and lse (natural log).
 * Entries with len outside [1, 16] or rows outside the segment are skipped (device data: the
 * host cannot check them without a synchronisation).
 * Measured on one H200 (128K tokens, batch 1, 32/8 heads, d 128, 8192 entries of 16 rows per
 * list): 201 us = 2.67 TB/s of K/V, 64% of a device-to-device copy (4.16 TB/s, read + write);
 * 512..4096 CTAs, 8 rows per slot and 2..4 CTAs per SM all measured slower or equal. The loop is
 * instruction-bound (per row and lane: 8 widenings, 8G FMAs for q.k, a 4-step shuffle tree per
 * head, 8 widenings and 8G FMAs for p.v), not latency-bound; the way to the copy's speed is to
 * put q.k and p.v on the tensor cores: k_decode_mma below (mma.sync m16n8k16, K/V staged by
 * cp.async into per-warp rings; same splits policy, partials and merge kernel).
 * Kernel choice: SR_DECODE_KERNEL=simt|mma, read on every call (unset or empty: mma; anything
 * else: SR_ERR_CONFIG), so tests and benchmarks can compare the two in one process. Both give
 * bitwise reproducible results for a given choice; the two differ from each other in the last
 * bits. The mma kernel needs sm_80 or later (the build's default is sm_90a).
 */
#include "sr_cuda_internal.h"

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FULL 0xffffffffu

/* bf16 word -> fp32 (exact). */
static __device__ __forceinline__ float bfw(uint32_t w16) { return __uint_as_float(w16 << 16); }

/* ---- decode_fwd ---------------------------------------------------------------------------- */

#define DF_WARPS 4          /* warps per CTA */
#define DF_TARGET_CTAS 1024 /* CTAs a call aims at (measured best of 512..4096 at 128K) */
#define DF_MIN_CHUNK 16     /* entries per split at least */
#define DF_MAX_SPLIT 512    /* splits per list at most (bounds the merge) */
#define DF_MAX_GC 8         /* q-heads per CTA at most (more: several head chunks) */
#define DF_MAX_GROUP 64     /* as the CPU backend */
#define DM_THREADS 256      /* merge kernel */

typedef struct dec_dev {
  const float *q;
  const uint16_t *k, *v;
  int64_t seg_rows, own_stride, nshared, nent, chunk;
  const int32_t *own_row, *own_len, *shared_row, *shared_len;
  int32_t tail_row, tail_len;
  int q_heads, kv_heads, group, G, per_qhead, nsplit;
  float qscale; /* scale * log2(e) */
  float *pm, *ps, *pacc;      /* partials [(l*G + j)*nsplit + c] (pacc: times d) */
  float *out, *lse;
} dec_dev;

/* Entry e of list l (own, then shared, then the tail); invalid entries come back as len 0. */
static __device__ __forceinline__ void dec_entry(const dec_dev &a, int64_t l, int64_t e,
                                                 int32_t *row, int32_t *len) {
  int32_t r = 0, n = 0;
  if (e < a.own_stride) {
    r = a.own_row[l * a.own_stride + e];
    n = a.own_len[l * a.own_stride + e];
  } else if (e < a.own_stride + a.nshared) {
    r = a.shared_row[e - a.own_stride];
    n = a.shared_len[e - a.own_stride];
  } else if (e < a.nent) {
    r = a.tail_row;
    n = a.tail_len;
  }
  if (n < 0 || n > 16 || r < 0 || (int64_t)r + n > a.seg_rows) n = 0;
  *row = r;
  *len = n;
}

/* List l -> sequence b, kv-head g (segment b*kv_heads + g) and its first q-head h0. */
static __device__ __forceinline__ void dec_list(const dec_dev &a, int64_t l, int64_t *b, int *g,
                                                int *h0) {
  const int lps = a.per_qhead ? a.q_heads : a.kv_heads;
  const int li = (int)(l % lps);
  *b = l / lps;
  *g = a.per_qhead ? li / a.group : li;
  *h0 = a.per_qhead ? li : li * a.group;
}

template <int D, int GC, int DF_U, int MINB>
static __global__ void __launch_bounds__(DF_WARPS * 32, MINB) k_decode_split(dec_dev a) {
  constexpr int LPR = D / 8;         /* lanes per row: 16 bytes = 8 bf16 each */
  constexpr int SLOTS = 32 / LPR;    /* rows a warp reads at once */
  constexpr int NB = 16 / SLOTS / DF_U; /* batches per (full) entry */
  static_assert(NB >= 1 && NB * DF_U * SLOTS == 16, "entry of 16 rows = NB batches");
  __shared__ float sm_acc[DF_WARPS][GC][D];
  __shared__ float sm_m[DF_WARPS][GC], sm_s[DF_WARPS][GC];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = lane / LPR, sub = lane % LPR;
  const int c = blockIdx.x, hc = blockIdx.z;
  const int64_t l = blockIdx.y;
  int64_t b;
  int g, h0;
  dec_list(a, l, &b, &g, &h0);
  const int jbase = hc * GC;                      /* first head of the list in this chunk */
  const int nh = min(GC, a.G - jbase); /* real heads of the chunk */
  const size_t seg0 = ((size_t)b * (size_t)a.kv_heads + (size_t)g) * (size_t)a.seg_rows;

  /* q of the chunk's heads, dims sub*8 .. sub*8+7, pre-scaled into the log2 domain. */
  float qf[GC][8];
#pragma unroll
  for (int j = 0; j < GC; j++) {
    float4 x0 = make_float4(0.f, 0.f, 0.f, 0.f), x1 = x0;
    if (j < nh) {
      const float4 *qp = (const float4 *)(a.q + ((size_t)b * a.q_heads + (size_t)(h0 + jbase + j)) *
                                                    D + sub * 8);
      x0 = qp[0];
      x1 = qp[1];
    }
    qf[j][0] = x0.x * a.qscale, qf[j][1] = x0.y * a.qscale, qf[j][2] = x0.z * a.qscale;
    qf[j][3] = x0.w * a.qscale, qf[j][4] = x1.x * a.qscale, qf[j][5] = x1.y * a.qscale;
    qf[j][6] = x1.z * a.qscale, qf[j][7] = x1.w * a.qscale;
  }
  float m[GC], s[GC], acc[GC][8];
#pragma unroll
  for (int j = 0; j < GC; j++) {
    m[j] = -INFINITY;
    s[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) acc[j][i] = 0.0f;
  }

  const int64_t e0 = (int64_t)c * a.chunk;
  const int64_t e1 = e0 + a.chunk < a.nent ? e0 + a.chunk : a.nent;
  for (int64_t base = e0 + warp; base < e1; base += 32 * DF_WARPS) {
    /* lane i fetches the warp's i-th entry of this round */
    int32_t my_row = 0, my_len = 0;
    const int64_t me = base + (int64_t)lane * DF_WARPS;
    if (me < e1) dec_entry(a, l, me, &my_row, &my_len);
    const int64_t left = (e1 - base + DF_WARPS - 1) / DF_WARPS;
    const int cnt = left < 32 ? (int)left : 32;
    for (int i = 0; i < cnt; i++) {
      const int32_t row = __shfl_sync(FULL, my_row, i), len = __shfl_sync(FULL, my_len, i);
      if (len == 0) continue; /* warp-uniform */
      const uint16_t *krow = a.k + (seg0 + (size_t)row) * D + sub * 8;
      const uint16_t *vrow = a.v + (seg0 + (size_t)row) * D + sub * 8;
#pragma unroll
      for (int bt = 0; bt < NB; bt++) {
        const int r0 = bt * DF_U * SLOTS;
        if (r0 >= len) break; /* warp-uniform */
        uint4 kr[DF_U], vr[DF_U];
        bool ok[DF_U];
#pragma unroll
        for (int u = 0; u < DF_U; u++) {
          const int r = r0 + u * SLOTS + slot;
          ok[u] = r < len;
          kr[u] = vr[u] = make_uint4(0u, 0u, 0u, 0u);
          if (ok[u]) {
            kr[u] = __ldg((const uint4 *)(krow + (size_t)r * D));
            vr[u] = __ldg((const uint4 *)(vrow + (size_t)r * D));
          }
        }
        /* z[u][j]: the log2-domain score of row u for head j (all lanes of the slot) */
        float z[DF_U][GC];
#pragma unroll
        for (int u = 0; u < DF_U; u++) {
          const float k0 = bfw(kr[u].x & 0xffffu), k1 = bfw(kr[u].x >> 16);
          const float k2 = bfw(kr[u].y & 0xffffu), k3 = bfw(kr[u].y >> 16);
          const float k4 = bfw(kr[u].z & 0xffffu), k5 = bfw(kr[u].z >> 16);
          const float k6 = bfw(kr[u].w & 0xffffu), k7 = bfw(kr[u].w >> 16);
#pragma unroll
          for (int j = 0; j < GC; j++) {
            float dot = qf[j][0] * k0;
            dot = fmaf(qf[j][1], k1, dot);
            dot = fmaf(qf[j][2], k2, dot);
            dot = fmaf(qf[j][3], k3, dot);
            dot = fmaf(qf[j][4], k4, dot);
            dot = fmaf(qf[j][5], k5, dot);
            dot = fmaf(qf[j][6], k6, dot);
            dot = fmaf(qf[j][7], k7, dot);
#pragma unroll
            for (int o = LPR / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(FULL, dot, o);
            z[u][j] = ok[u] ? dot : -INFINITY;
          }
        }
        float vf[DF_U][8];
#pragma unroll
        for (int u = 0; u < DF_U; u++) {
          vf[u][0] = bfw(vr[u].x & 0xffffu), vf[u][1] = bfw(vr[u].x >> 16);
          vf[u][2] = bfw(vr[u].y & 0xffffu), vf[u][3] = bfw(vr[u].y >> 16);
          vf[u][4] = bfw(vr[u].z & 0xffffu), vf[u][5] = bfw(vr[u].z >> 16);
          vf[u][6] = bfw(vr[u].w & 0xffffu), vf[u][7] = bfw(vr[u].w >> 16);
        }
#pragma unroll
        for (int j = 0; j < GC; j++) {
          float mx = m[j];
#pragma unroll
          for (int u = 0; u < DF_U; u++) mx = fmaxf(mx, z[u][j]);
          /* mx = -inf only when m and every z are: then f = 1 and every p = 0 */
          const float f = mx == -INFINITY ? 1.0f : exp2f(m[j] - mx);
          float p[DF_U], ps = 0.0f;
#pragma unroll
          for (int u = 0; u < DF_U; u++) {
            p[u] = ok[u] ? exp2f(z[u][j] - mx) : 0.0f;
            ps += p[u];
          }
          s[j] = s[j] * f + ps;
          m[j] = mx;
#pragma unroll
          for (int x = 0; x < 8; x++) {
            float t = acc[j][x] * f;
#pragma unroll
            for (int u = 0; u < DF_U; u++) t = fmaf(p[u], vf[u][x], t);
            acc[j][x] = t;
          }
        }
      }
    }
  }

  /* Slots of the warp merge (butterfly over the slot bits of the lane id). */
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) {
#pragma unroll
    for (int j = 0; j < GC; j++) {
      const float mo = __shfl_xor_sync(FULL, m[j], o), so = __shfl_xor_sync(FULL, s[j], o);
      const float M = fmaxf(m[j], mo);
      const float fa = M == -INFINITY ? 0.0f : exp2f(m[j] - M);
      const float fb = M == -INFINITY ? 0.0f : exp2f(mo - M);
      s[j] = s[j] * fa + so * fb;
#pragma unroll
      for (int x = 0; x < 8; x++) {
        const float ao = __shfl_xor_sync(FULL, acc[j][x], o);
        acc[j][x] = acc[j][x] * fa + ao * fb;
      }
      m[j] = M;
    }
  }
  if (lane < LPR) {
#pragma unroll
    for (int j = 0; j < GC; j++) {
#pragma unroll
      for (int x = 0; x < 8; x++) sm_acc[warp][j][sub * 8 + x] = acc[j][x];
      if (lane == 0) {
        sm_m[warp][j] = m[j];
        sm_s[warp][j] = s[j];
      }
    }
  }
  __syncthreads();
  /* Warps merge in ascending order; one partial per (list, head, split). */
  for (int t = threadIdx.x; t < nh * D; t += DF_WARPS * 32) {
    const int j = t / D, x = t % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < DF_WARPS; w++) M = fmaxf(M, sm_m[w][j]);
    float ax = 0.0f, S = 0.0f;
#pragma unroll
    for (int w = 0; w < DF_WARPS; w++) {
      const float mw = sm_m[w][j];
      if (mw == -INFINITY) continue;
      const float f = exp2f(mw - M);
      ax = fmaf(sm_acc[w][j][x], f, ax);
      S = fmaf(sm_s[w][j], f, S);
    }
    const size_t p = ((size_t)l * a.G + (size_t)(jbase + j)) * (size_t)a.nsplit + (size_t)c;
    a.pacc[p * D + x] = ax;
    if (x == 0) {
      a.pm[p] = M;
      a.ps[p] = S;
    }
  }
}

/* One CTA per (list, head): the splits' partials merged with the log-sum-exp rule. Thread t
 * owns 4 dims (x4 = t % TPR) of split group cg = t / TPR, which sums splits cg, cg + CG, ...;
 * the groups are then added in ascending order (a fixed order: deterministic). */
template <int D>
static __global__ void __launch_bounds__(DM_THREADS) k_decode_merge(dec_dev a) {
  constexpr int TPR = D / 4, CG = DM_THREADS / TPR;
  __shared__ float4 sm[CG][TPR];
  __shared__ float sm_sum[CG], sm_red[DM_THREADS / 32];
  const int64_t pl = blockIdx.x; /* l * G + j */
  const int64_t l = pl / a.G;
  const int j = (int)(pl % a.G);
  const int tid = threadIdx.x;
  const float *pm = a.pm + pl * a.nsplit, *ps = a.ps + pl * a.nsplit;
  const float4 *pa = (const float4 *)(a.pacc + (size_t)pl * a.nsplit * D);
  float M = -INFINITY;
  for (int c = tid; c < a.nsplit; c += DM_THREADS) M = fmaxf(M, pm[c]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(FULL, M, o));
  if ((tid & 31) == 0) sm_red[tid >> 5] = M;
  __syncthreads();
  M = sm_red[0];
#pragma unroll
  for (int w = 1; w < DM_THREADS / 32; w++) M = fmaxf(M, sm_red[w]);
  const int cg = tid / TPR, x4 = tid % TPR;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float S = 0.0f;
  if (M != -INFINITY) {
#pragma unroll 4
    for (int c = cg; c < a.nsplit; c += CG) {
      const float mc = pm[c];
      if (mc == -INFINITY) continue;
      const float f = exp2f(mc - M);
      const float4 v = pa[(size_t)c * TPR + x4];
      acc.x = fmaf(v.x, f, acc.x);
      acc.y = fmaf(v.y, f, acc.y);
      acc.z = fmaf(v.z, f, acc.z);
      acc.w = fmaf(v.w, f, acc.w);
      S = fmaf(ps[c], f, S);
    }
  }
  sm[cg][x4] = acc;
  if (x4 == 0) sm_sum[cg] = S;
  __syncthreads();
  if (tid >= TPR) return;
  int64_t b;
  int g, h0;
  dec_list(a, l, &b, &g, &h0);
  const size_t r = (size_t)b * a.q_heads + (size_t)(h0 + j);
  float4 *o = (float4 *)(a.out + r * D) + tid;
  if (M == -INFINITY) {
    *o = make_float4(0.f, 0.f, 0.f, 0.f);
    if (tid == 0) a.lse[r] = -INFINITY;
    return;
  }
  float4 t = sm[0][tid];
  float St = sm_sum[0];
  for (int q = 1; q < CG; q++) {
    const float4 v = sm[q][tid];
    t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
    St += sm_sum[q];
  }
  const float inv = 1.0f / St;
  *o = make_float4(t.x * inv, t.y * inv, t.z * inv, t.w * inv);
  if (tid == 0) a.lse[r] = (M + log2f(St)) * 0.69314718055994531f;
}

typedef void (*dec_split_fn)(dec_dev);
/* Kernel per (d, heads per CTA): DF_U = 4 rows per slot and batch; CTAs per SM by the register
 * need (GC = 4: 167 registers, 3 CTAs; 4 spills and measured no faster). */
static dec_split_fn dec_split_kernel(int d, int gc) {
  if (d == 64) switch (gc) {
    case 1: return k_decode_split<64, 1, 4, 4>;
    case 2: return k_decode_split<64, 2, 4, 4>;
    case 4: return k_decode_split<64, 4, 4, 3>;
    default: return k_decode_split<64, 8, 4, 2>;
    }
  switch (gc) {
  case 1: return k_decode_split<128, 1, 4, 4>;
  case 2: return k_decode_split<128, 2, 4, 4>;
  case 4: return k_decode_split<128, 4, 4, 3>;
  default: return k_decode_split<128, 8, 4, 2>;
  }
}

/* ---- decode_fwd on the tensor cores (mma.sync m16n8k16) --------------------------------------
 * Same work items, partials and merge as the SIMT kernel; a CTA takes GC = 8 * NMT q-heads of
 * its list (NMT = 1 for groups of up to 8, 2 above; groups past 16 use several head chunks).
 * Every warp owns a private ring of STAGES shared-memory slots, each holding one entry (16 rows)
 * of K and of V, and streams its entries (e0 + w, e0 + w + DFM_WARPS, ...) through it with
 * cp.async (16-byte copies; rows >= len zero-filled, never read from global memory), so warps
 * never wait for each other before the final merge. Slot tiles are 16 rows x D bf16 in the
 * prefill kernels' swizzle (16-byte chunk c of row r at chunk c ^ (r % 8) of its 128-byte panel
 * row): conflict-free for the cp.async stores and for ldmatrix.
 *
 * Precision: the A operand of each m-tile holds 8 heads in two bf16 halves: row i (< 8) is
 * hi = bf16(q * scale * log2 e), row 8 + i is lo = bf16(q * scale * log2 e - hi), so the
 * thread that holds S[i][key] (c0/c1 of the m16n8 fragment) also holds S[8 + i][key] (c2/c3)
 * and their sum is the score to about 2^-16 relative: fp32-class accuracy at the cost of one
 * mma for 8 heads. P is split the same way (rows i: bf16(p), rows 8 + i: bf16(p - bf16(p)))
 * and O[i] + O[8 + i] is the head's accumulator, so P.V is also exact to about 2^-16 (bf16 P
 * alone would cost up to 2^-9 per weight, the size of the tests' tolerance). Per entry and
 * m-tile: D/16 ldmatrix + D/8 mma for S, D/16 ldmatrix.trans + D/8 mma for O.
 * Masking: keys >= len get score -inf (their K/V rows are zeros); padding entries (len 0) are
 * copied as zeros and skipped. Softmax per head as in the SIMT kernel (base 2, running max m,
 * sum l, reference 0 while m = -inf). At the end a quad's sums are added, the warps write
 * (m, l, O) of their heads into the (then idle) ring memory and the CTA merges them in warp
 * order exactly as the SIMT kernel does. Fixed entry-to-warp assignment, fixed orders:
 * bitwise reproducible.
 */
#define DFM_WARPS 4
#define DFM_TARGET_CTAS 1024 /* as the SIMT kernel (not measured for this one) */

/* Element offset of (r, c) in a 16-row slot tile (chunks XOR-swizzled by r % 8, 64-column
 * panels of 16 x 128 bytes). */
static __device__ __forceinline__ int dfm_swz(int r, int c) {
  return (c >> 6) * (16 * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}
static __device__ __forceinline__ uint32_t dfm_smem(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16-byte async copy global -> shared; bytes = 0 zero-fills the destination. */
static __device__ __forceinline__ void dfm_cp16(uint32_t dst, const void *src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
static __device__ __forceinline__ void dfm_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void dfm_wait(void) {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
static __device__ __forceinline__ void dfm_ldsm4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
static __device__ __forceinline__ void dfm_ldsm4t(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
/* c += a . b, one m16n8k16 tile (bf16 operands, fp32 accumulators). */
static __device__ __forceinline__ void dfm_mma(float c[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* (x0, x1) -> hi = bf16x2 (round to nearest even; x0 in the low half) and lo = bf16x2 of the
 * remainders, so x = hi + lo to about 2^-16 relative. */
static __device__ __forceinline__ void dfm_split(float x0, float x1, uint32_t *hi, uint32_t *lo) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const uint32_t hb = *(uint32_t *)&h;
  const float h0 = __uint_as_float(hb << 16), h1 = __uint_as_float(hb & 0xffff0000u);
  __nv_bfloat162 r = __floats2bfloat162_rn(x0 - h0, x1 - h1);
  *hi = hb;
  *lo = *(uint32_t *)&r;
}

/* Entries of warp-local batch `batch` (indices batch*32 + lane) of a warp whose entries are
 * ew, ew + DFM_WARPS, ... (nj of them); past the end: len 0. */
static __device__ __forceinline__ void dfm_fetch(const dec_dev &a, int64_t l, int64_t ew, int nj,
                                                 int batch, int lane, int32_t *row, int32_t *len) {
  const int i = batch * 32 + lane;
  *row = 0;
  *len = 0;
  if (i < nj) dec_entry(a, l, ew + (int64_t)i * DFM_WARPS, row, len);
}

/* Issues the copies of one entry (rows row .. row + len - 1 of the segment) into a slot's K and
 * V tiles; tile rows >= len are zero-filled. Lane x copies chunks x, x + 32, ... */
template <int D>
static __device__ __forceinline__ void dfm_load(uint16_t *ks, uint16_t *vs, const uint16_t *kseg,
                                                const uint16_t *vseg, int32_t row, int len,
                                                int lane) {
  constexpr int CPR = D / 8, LIT = 16 * CPR / 32;
#pragma unroll
  for (int it = 0; it < LIT; it++) {
    const int x = it * 32 + lane, r = x / CPR, cc = x % CPR;
    const bool ok = r < len;
    const size_t off = ok ? ((size_t)row + (size_t)r) * D + (size_t)cc * 8 : 0;
    const int sw = dfm_swz(r, cc * 8);
    dfm_cp16(dfm_smem(ks + sw), kseg + off, ok ? 16 : 0);
    dfm_cp16(dfm_smem(vs + sw), vseg + off, ok ? 16 : 0);
  }
}

template <int D, int STAGES>
static __host__ __device__ constexpr size_t dfm_smem_bytes() {
  return (size_t)DFM_WARPS * STAGES * 2 * 16 * D * sizeof(uint16_t);
}

template <int D, int NMT, int STAGES>
static __global__ void __launch_bounds__(DFM_WARPS * 32, 2) k_decode_mma(dec_dev a) {
  constexpr int TILE = 16 * D; /* elements of one 16-row tile */
  constexpr int KT = D / 16;   /* k16 steps of S = Q.K^T; d16 steps of O += P.V */
  constexpr int DT = D / 8;    /* n8 tiles of O */
  constexpr int GC = 8 * NMT;  /* q-heads per CTA */
  static_assert((size_t)DFM_WARPS * GC * D * sizeof(float) <= dfm_smem_bytes<D, STAGES>(),
                "the merge area must fit in the ring");
  extern __shared__ __align__(128) unsigned char dfm_sm[];
  __shared__ float sm_m[DFM_WARPS][GC], sm_s[DFM_WARPS][GC];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c4 = lane & 3;
  const int c = blockIdx.x, hc = blockIdx.z;
  const int64_t l = blockIdx.y;
  int64_t b;
  int gk, h0;
  dec_list(a, l, &b, &gk, &h0);
  const int jbase = hc * GC;            /* first head of the list in this chunk */
  const int nh = min(GC, a.G - jbase);  /* real heads of the chunk */
  const size_t seg0 = ((size_t)b * (size_t)a.kv_heads + (size_t)gk) * (size_t)a.seg_rows;
  const uint16_t *kseg = a.k + seg0 * D, *vseg = a.v + seg0 * D;
  uint16_t *ring = (uint16_t *)dfm_sm + (size_t)warp * STAGES * 2 * TILE;

  /* A fragments of Q (m16n8k16, row-major A): a0 = (row g, k 2c4..+1), a1 = (row g+8, same k),
   * a2 = (row g, k 2c4+8..+9), a3 = (row g+8, k 2c4+8..+9); row g = hi of head mt*8+g, row
   * g+8 = its lo. */
  uint32_t qa[NMT][KT][4];
#pragma unroll
  for (int mt = 0; mt < NMT; mt++) {
    const int hl = mt * 8 + g;
    const float *qp = a.q + ((size_t)b * a.q_heads + (size_t)(h0 + jbase + (hl < nh ? hl : 0))) * D;
#pragma unroll
    for (int kk = 0; kk < KT; kk++)
#pragma unroll
      for (int half = 0; half < 2; half++) {
        float2 x = make_float2(0.f, 0.f);
        if (hl < nh) x = *(const float2 *)(qp + kk * 16 + half * 8 + 2 * c4);
        dfm_split(x.x * a.qscale, x.y * a.qscale, &qa[mt][kk][half * 2], &qa[mt][kk][half * 2 + 1]);
      }
  }
  float m[NMT], s[NMT], o[NMT][DT][4];
#pragma unroll
  for (int mt = 0; mt < NMT; mt++) {
    m[mt] = -INFINITY;
    s[mt] = 0.0f;
#pragma unroll
    for (int t = 0; t < DT; t++) o[mt][t][0] = o[mt][t][1] = o[mt][t][2] = o[mt][t][3] = 0.0f;
  }

  /* This warp's entries: ew, ew + DFM_WARPS, ... below e1 (nj of them). */
  const int64_t e0 = (int64_t)c * a.chunk;
  const int64_t e1 = e0 + a.chunk < a.nent ? e0 + a.chunk : a.nent;
  const int64_t ew = e0 + warp;
  const int nj = ew < e1 ? (int)((e1 - ew + DFM_WARPS - 1) / DFM_WARPS) : 0;
  /* (row, len) of warp-local entries batch*32 + lane: the loader's batch and the next one. */
  int32_t cur_r, cur_n, nxt_r, nxt_n;
  dfm_fetch(a, l, ew, nj, 0, lane, &cur_r, &cur_n);
  dfm_fetch(a, l, ew, nj, 1, lane, &nxt_r, &nxt_n);
  /* qlen[i]: len of warp-local entry j + i at the top of iteration j. */
  int qlen[STAGES];
#pragma unroll
  for (int i = 0; i < STAGES; i++) qlen[i] = 0;

  /* Loads warp-local entry jl (< nj; called for jl = 0, 1, 2, ... in order) into its slot;
   * returns its len. Warp-uniform. */
  auto load = [&](int jl) -> int {
    if (jl > 0 && (jl & 31) == 0) {
      cur_r = nxt_r, cur_n = nxt_n;
      dfm_fetch(a, l, ew, nj, (jl >> 5) + 1, lane, &nxt_r, &nxt_n);
    }
    const int32_t row = __shfl_sync(FULL, cur_r, jl & 31), len = __shfl_sync(FULL, cur_n, jl & 31);
    uint16_t *ks = ring + (size_t)(jl % STAGES) * 2 * TILE;
    dfm_load<D>(ks, ks + TILE, kseg, vseg, row, len, lane);
    return len;
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; i++) {
    if (i < nj) qlen[i] = load(i);
    dfm_commit();
  }

  const int mi = lane >> 3;
  const int krow = (lane & 7) + (mi >> 1) * 8, kcol = (mi & 1) * 8; /* K: 4 non-transposed 8x8 */
  const int vrow = (lane & 7) + (mi & 1) * 8, vcol = (mi >> 1) * 8; /* V: 4 transposed 8x8 */
  for (int j = 0; j < nj; j++) {
    const int jl = j + STAGES - 1;
    qlen[STAGES - 1] = 0;
    if (jl < nj) qlen[STAGES - 1] = load(jl); /* into the slot that iteration j-1 read */
    dfm_commit();
    dfm_wait<STAGES - 1>(); /* this thread's copies of entry j have landed */
    __syncwarp();           /* ... and every lane's */
    const int len = qlen[0];
    if (len > 0) {
      const uint16_t *ks = ring + (size_t)(j % STAGES) * 2 * TILE, *vs = ks + TILE;
      /* S = Q.K^T for the entry's 16 keys: ldmatrix.x4 gives b0/b1 of keys 0-7 and of keys 8-15
       * for one k16 step. */
      float sc[NMT][2][4];
#pragma unroll
      for (int mt = 0; mt < NMT; mt++)
#pragma unroll
        for (int t = 0; t < 2; t++) sc[mt][t][0] = sc[mt][t][1] = sc[mt][t][2] = sc[mt][t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KT; kk++) {
        uint32_t bk[4];
        dfm_ldsm4(bk, dfm_smem(ks + dfm_swz(krow, kk * 16 + kcol)));
#pragma unroll
        for (int mt = 0; mt < NMT; mt++) {
          dfm_mma(sc[mt][0], qa[mt][kk], bk[0], bk[1]);
          dfm_mma(sc[mt][1], qa[mt][kk], bk[2], bk[3]);
        }
      }
      /* Online softmax of head mt*8+g over keys t*8 + 2c4 + x (t, x in {0, 1}); P as the A
       * fragment of one k16 step: a0/a2 = hi of keys 2c4.. / 8+2c4.., a1/a3 = their lo. */
      uint32_t pa[NMT][4];
#pragma unroll
      for (int mt = 0; mt < NMT; mt++) {
        float z[2][2];
        float mx = m[mt];
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
          for (int x = 0; x < 2; x++) {
            const int key = t * 8 + 2 * c4 + x;
            z[t][x] = key < len ? sc[mt][t][x] + sc[mt][t][x + 2] : -INFINITY;
            mx = fmaxf(mx, z[t][x]);
          }
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 2));
        const float ref = mx == -INFINITY ? 0.0f : mx;
        const float f = exp2f(m[mt] - ref); /* 0 while m = -inf */
        float p[2][2];
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
          for (int x = 0; x < 2; x++) p[t][x] = exp2f(z[t][x] - ref);
        s[mt] = s[mt] * f + ((p[0][0] + p[0][1]) + (p[1][0] + p[1][1]));
        m[mt] = mx;
#pragma unroll
        for (int t = 0; t < DT; t++) {
          o[mt][t][0] *= f, o[mt][t][1] *= f;
          o[mt][t][2] *= f, o[mt][t][3] *= f;
        }
        dfm_split(p[0][0], p[0][1], &pa[mt][0], &pa[mt][1]);
        dfm_split(p[1][0], p[1][1], &pa[mt][2], &pa[mt][3]);
      }
      /* O += P.V: ldmatrix.x4.trans gives b0/b1 of d-tiles 2dd and 2dd+1 (keys 0-7 / 8-15). */
#pragma unroll
      for (int dd = 0; dd < KT; dd++) {
        uint32_t bv[4];
        dfm_ldsm4t(bv, dfm_smem(vs + dfm_swz(vrow, dd * 16 + vcol)));
#pragma unroll
        for (int mt = 0; mt < NMT; mt++) {
          dfm_mma(o[mt][2 * dd], pa[mt], bv[0], bv[1]);
          dfm_mma(o[mt][2 * dd + 1], pa[mt], bv[2], bv[3]);
        }
      }
    }
    __syncwarp(); /* every lane is done with slot j % STAGES before iteration j+1 refills it */
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) qlen[i] = qlen[i + 1];
  }
  dfm_wait<0>(); /* nothing in flight (empty groups only) */
  __syncthreads(); /* every warp is done with its ring: it becomes the merge area */

  /* Quad sums; O[head] = rows g + rows g+8 (hi and lo parts of P). */
  float *sm_acc = (float *)dfm_sm; /* [DFM_WARPS][GC][D] */
#pragma unroll
  for (int mt = 0; mt < NMT; mt++) {
    float st = s[mt];
    st += __shfl_xor_sync(FULL, st, 1);
    st += __shfl_xor_sync(FULL, st, 2);
    const int hl = mt * 8 + g;
    if (hl < nh) {
      float *dst = sm_acc + ((size_t)warp * GC + hl) * D + 2 * c4;
#pragma unroll
      for (int t = 0; t < DT; t++)
        *(float2 *)(dst + t * 8) = make_float2(o[mt][t][0] + o[mt][t][2], o[mt][t][1] + o[mt][t][3]);
      if (c4 == 0) {
        sm_m[warp][hl] = m[mt];
        sm_s[warp][hl] = st;
      }
    }
  }
  __syncthreads();
  /* Warps merge in ascending order; one partial per (list, head, split). */
  for (int t = threadIdx.x; t < nh * D; t += DFM_WARPS * 32) {
    const int j = t / D, x = t % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < DFM_WARPS; w++) M = fmaxf(M, sm_m[w][j]);
    float ax = 0.0f, S = 0.0f;
#pragma unroll
    for (int w = 0; w < DFM_WARPS; w++) {
      const float mw = sm_m[w][j];
      if (mw == -INFINITY) continue;
      const float f = exp2f(mw - M);
      ax = fmaf(sm_acc[((size_t)w * GC + j) * D + x], f, ax);
      S = fmaf(sm_s[w][j], f, S);
    }
    const size_t p = ((size_t)l * a.G + (size_t)(jbase + j)) * (size_t)a.nsplit + (size_t)c;
    a.pacc[p * D + x] = ax;
    if (x == 0) {
      a.pm[p] = M;
      a.ps[p] = S;
    }
  }
}

/* Ring depth per head dim: 96 KiB of slots per CTA either way (2 CTAs per SM). */
#define DFM_STAGES_64 6
#define DFM_STAGES_128 3

static sr_status dec_mma_kernel(int d, int nmt, dec_split_fn *fn, size_t *smem) {
  static int attr_set[2][2];
  const int di = d == 64 ? 0 : 1, ni = nmt == 1 ? 0 : 1;
  if (d == 64) {
    *fn = nmt == 1 ? k_decode_mma<64, 1, DFM_STAGES_64> : k_decode_mma<64, 2, DFM_STAGES_64>;
    *smem = dfm_smem_bytes<64, DFM_STAGES_64>();
  } else {
    *fn = nmt == 1 ? k_decode_mma<128, 1, DFM_STAGES_128> : k_decode_mma<128, 2, DFM_STAGES_128>;
    *smem = dfm_smem_bytes<128, DFM_STAGES_128>();
  }
  if (!attr_set[di][ni]) {
    SR_CUDA(cudaFuncSetAttribute(*fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*smem));
    attr_set[di][ni] = 1;
  }
  return SR_OK;
}

/* SR_DECODE_KERNEL (read on every call): "simt", "mma", or unset / empty for the default (mma:
 * both head dims the CUDA backend has are covered). */
static sr_status dec_kernel_choice(int *use_mma) {
  const char *e = getenv("SR_DECODE_KERNEL");
  if (!e || !*e || strcmp(e, "mma") == 0) *use_mma = 1;
  else if (strcmp(e, "simt") == 0) *use_mma = 0;
  else
    return sr__seterr(SR_ERR_CONFIG, "SR_DECODE_KERNEL=%s: simt or mma (or unset)", e);
  return SR_OK;
}

/* Splits of a list: about `target` CTAs over all lists and head chunks, from the counts alone. */
static void dec_splits(int64_t nl, int nhc, int64_t nent, int64_t target, int64_t *nsplit,
                       int64_t *chunk) {
  *nsplit = 0;
  *chunk = 1;
  if (nent <= 0) return;
  const int64_t work = nl * nhc * nent;
  int64_t ch = (work + target - 1) / target;
  if (ch < DF_MIN_CHUNK) ch = DF_MIN_CHUNK;
  int64_t ns = (nent + ch - 1) / ch;
  if (ns > DF_MAX_SPLIT) ns = DF_MAX_SPLIT;
  ch = (nent + ns - 1) / ns; /* balanced */
  *nsplit = (nent + ch - 1) / ch;
  *chunk = ch;
}

sr_status sr__cuda_decode_fwd(const sr_decode_args *a) {
  int use_mma = 0;
  SR_TRY(dec_kernel_choice(&use_mma));
  if (!a || a->nseq <= 0 || a->q_heads <= 0 || a->kv_heads <= 0 ||
      a->q_heads % a->kv_heads != 0 || a->seg_rows < 0 || a->own_stride < 0 || a->nshared < 0)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: bad shape (nseq %d, heads %d/%d, d %d)",
                      a ? a->nseq : 0, a ? a->q_heads : 0, a ? a->kv_heads : 0, a ? a->d : 0);
  if (a->d != 64 && a->d != 128)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: head dim %d on CUDA (64 or 128)", a->d);
  const int group = a->q_heads / a->kv_heads;
  if (!a->per_qhead && group > DF_MAX_GROUP)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: %d q-heads per kv-head (at most %d)", group,
                      DF_MAX_GROUP);
  if (a->tail_len < 0 || a->tail_len > 16 ||
      (a->tail_len > 0 && (a->tail_row < 0 || a->tail_row + a->tail_len > a->seg_rows)))
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: tail rows %d+%d outside the segment (%lld)",
                      a->tail_row, a->tail_len, (long long)a->seg_rows);
  const int64_t nl = (int64_t)a->nseq * (a->per_qhead ? a->q_heads : a->kv_heads);
  const int G = a->per_qhead ? 1 : group;
  const int64_t nent = a->own_stride + a->nshared + (a->tail_len > 0 ? 1 : 0);
  if (!a->q || !a->out || !a->lse || (nent > 0 && (!a->k || !a->v)) ||
      (a->own_stride > 0 && (!a->own_row || !a->own_len)) ||
      (a->nshared > 0 && (!a->shared_row || !a->shared_len)))
    return sr__seterr(SR_ERR_INTERNAL, "decode_fwd: NULL buffer");
  if ((uintptr_t)a->q % 16 || (uintptr_t)a->out % 16 || (uintptr_t)a->k % 16 ||
      (uintptr_t)a->v % 16)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: q, out, k and v must be 16-byte aligned on CUDA");
  if (nl > 65535 || nl * G > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: %lld lists (at most 65535 on CUDA)", (long long)nl);

  /* Heads per CTA: SIMT 1, 2, 4 or 8; mma 8 (one m-tile) or 16 (two). More: head chunks. */
  const int nmt = G <= 8 ? 1 : 2;
  const int gc = use_mma ? 8 * nmt : G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
  const int nhc = (G + gc - 1) / gc;
  int64_t nsplit = 0, chunk = 1;
  dec_splits(nl, nhc, nent, use_mma ? DFM_TARGET_CTAS : DF_TARGET_CTAS, &nsplit, &chunk);
  const int D = a->d;
  const size_t npart = (size_t)nl * (size_t)G * (size_t)nsplit;
  void *ws = NULL;
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_DECODE, npart * (size_t)(D + 2) * sizeof(float) + 16, &ws));
  dec_dev dv;
  memset(&dv, 0, sizeof dv);
  dv.q = a->q;
  dv.k = (const uint16_t *)a->k;
  dv.v = (const uint16_t *)a->v;
  dv.seg_rows = a->seg_rows;
  dv.own_stride = a->own_stride;
  dv.nshared = a->nshared;
  dv.nent = nent;
  dv.chunk = chunk;
  dv.own_row = a->own_row;
  dv.own_len = a->own_len;
  dv.shared_row = a->shared_row;
  dv.shared_len = a->shared_len;
  dv.tail_row = a->tail_row;
  dv.tail_len = a->tail_len;
  dv.q_heads = a->q_heads;
  dv.kv_heads = a->kv_heads;
  dv.group = group;
  dv.G = G;
  dv.per_qhead = a->per_qhead ? 1 : 0;
  dv.nsplit = (int)nsplit;
  dv.qscale = a->scale * 1.4426950408889634f;
  dv.pacc = (float *)ws;
  dv.pm = dv.pacc + npart * (size_t)D;
  dv.ps = dv.pm + npart;
  dv.out = a->out;
  dv.lse = a->lse;
  cudaStream_t st = sr__cuda_compute_stream();
  if (nsplit > 0) {
    const dim3 grid((unsigned)nsplit, (unsigned)nl, (unsigned)nhc);
    if (use_mma) {
      dec_split_fn fn = NULL;
      size_t smem = 0;
      SR_TRY(dec_mma_kernel(D, nmt, &fn, &smem));
      fn<<<grid, DFM_WARPS * 32, smem, st>>>(dv);
      SR_CUDA_LAUNCHED("decode_fwd: mma split kernel");
    } else {
      dec_split_kernel(D, gc)<<<grid, DF_WARPS * 32, 0, st>>>(dv);
      SR_CUDA_LAUNCHED("decode_fwd: split kernel");
    }
  }
  if (D == 64)
    k_decode_merge<64><<<(unsigned)(nl * G), DM_THREADS, 0, st>>>(dv);
  else
    k_decode_merge<128><<<(unsigned)(nl * G), DM_THREADS, 0, st>>>(dv);
  SR_CUDA_LAUNCHED("decode_fwd: merge kernel");
  return SR_OK;
}

/* ---- page_minmax --------------------------------------------------------------------------- */

/* One thread per (segment, page, dim): min / max over the page's rows in ascending order with
 * the CPU's comparisons (a stored word is copied, never recomputed). */
static __global__ void k_page_minmax(const uint16_t *k, int64_t nseg, int64_t seg_rows, int d,
                                     int64_t lp, int64_t p0, int64_t np, int len, uint16_t *pmin,
                                     uint16_t *pmax) {
  const int64_t total = nseg * np * d;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int x = (int)(t % d);
    const int64_t rest = t / d, p = p0 + rest % np, sg = rest / np;
    const uint16_t *src = k + ((size_t)sg * seg_rows + (size_t)(16 * p)) * (size_t)d + x;
    uint16_t wmn = src[0], wmx = wmn;
    float mn = bfw(wmn), mx = mn;
    for (int r = 1; r < len; r++) {
      const uint16_t w = src[(size_t)r * d];
      const float v = bfw(w);
      if (v < mn) mn = v, wmn = w;
      if (v > mx) mx = v, wmx = w;
    }
    const size_t o = ((size_t)sg * lp + (size_t)p) * (size_t)d + x;
    pmin[o] = wmn;
    pmax[o] = wmx;
  }
}

sr_status sr__cuda_page_minmax(const void *k, int64_t nseg, int64_t seg_rows, int d, int64_t lp,
                               int64_t p0, int64_t np, int len, void *pmin, void *pmax) {
  if (nseg < 0 || seg_rows < 0 || d <= 0 || p0 < 0 || np < 0 || p0 + np > lp || len < 1 ||
      len > 16 || (np > 0 && 16 * (p0 + np - 1) + len > seg_rows))
    return sr__seterr(SR_ERR_SHAPE, "page_minmax: pages %lld+%lld of %d rows outside %lld pages "
                      "/ %lld rows", (long long)p0, (long long)np, len, (long long)lp,
                      (long long)seg_rows);
  const int64_t total = nseg * np * d;
  if (total == 0) return SR_OK;
  if (!k || !pmin || !pmax) return sr__seterr(SR_ERR_INTERNAL, "page_minmax: NULL buffer");
  const int64_t blocks = (total + 255) / 256 < 65536 ? (total + 255) / 256 : 65536;
  k_page_minmax<<<(unsigned)blocks, 256, 0, sr__cuda_compute_stream()>>>(
      (const uint16_t *)k, nseg, seg_rows, d, lp, p0, np, len, (uint16_t *)pmin, (uint16_t *)pmax);
  SR_CUDA_LAUNCHED("page_minmax");
  return SR_OK;
}

/* ---- page_scores --------------------------------------------------------------------------- */

#define PS_WARPS 8

/* One warp per (list, page): lane t adds max(q*min, q*max) over dims t, t+32, ... and the
 * list's heads, then a fixed shuffle tree to lane 0. The result depends on the page's own
 * summary and q alone (never on nvalid or lp). */
static __global__ void __launch_bounds__(PS_WARPS * 32)
    k_page_scores(const float *q, int q_heads, int kv_heads, int per_qhead, int group,
                  const uint16_t *pmin, const uint16_t *pmax, int64_t lp, int64_t nvalid, int d,
                  float *s) {
  const int lane = threadIdx.x & 31;
  const int64_t p = (int64_t)blockIdx.x * PS_WARPS + (threadIdx.x >> 5);
  if (p >= nvalid) return; /* whole warps */
  const int64_t l = blockIdx.y;
  const int lps = per_qhead ? q_heads : kv_heads, li = (int)(l % lps);
  const int64_t b = l / lps;
  const int g = per_qhead ? li / group : li, h0 = per_qhead ? li : li * group;
  const int G = per_qhead ? 1 : group;
  const size_t off = (((size_t)b * kv_heads + (size_t)g) * (size_t)lp + (size_t)p) * (size_t)d;
  const uint16_t *mn = pmin + off, *mx = pmax + off;
  const float *qb = q + ((size_t)b * q_heads + (size_t)h0) * (size_t)d;
  float acc = 0.0f;
  for (int x = lane; x < d; x += 32) {
    const float a = bfw(mn[x]), c = bfw(mx[x]);
    for (int j = 0; j < G; j++) {
      const float qv = qb[(size_t)j * d + x];
      const float u = qv * a, v = qv * c;
      acc += u > v ? u : v;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(FULL, acc, o);
  if (lane == 0) s[(size_t)l * (size_t)lp + (size_t)p] = acc;
}

sr_status sr__cuda_page_scores(const float *q, int nseq, int q_heads, int kv_heads, int per_qhead,
                               const void *pmin, const void *pmax, int64_t lp, int64_t nvalid,
                               int d, float *s) {
  if (nseq <= 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || d <= 0 || lp < 0 ||
      nvalid < 0 || nvalid > lp)
    return sr__seterr(SR_ERR_SHAPE, "page_scores: bad shape (heads %d/%d, %lld of %lld pages)",
                      q_heads, kv_heads, (long long)nvalid, (long long)lp);
  const int64_t nl = (int64_t)nseq * (per_qhead ? q_heads : kv_heads);
  if (nvalid == 0) return SR_OK;
  if (nl > 65535)
    return sr__seterr(SR_ERR_SHAPE, "page_scores: %lld lists (at most 65535 on CUDA)", (long long)nl);
  if (!q || !pmin || !pmax || !s) return sr__seterr(SR_ERR_INTERNAL, "page_scores: NULL buffer");
  const int64_t gx = (nvalid + PS_WARPS - 1) / PS_WARPS;
  if (gx > INT32_MAX) return sr__seterr(SR_ERR_SHAPE, "page_scores: %lld pages", (long long)nvalid);
  k_page_scores<<<dim3((unsigned)gx, (unsigned)nl), PS_WARPS * 32, 0, sr__cuda_compute_stream()>>>(
      q, q_heads, kv_heads, per_qhead ? 1 : 0, q_heads / kv_heads, (const uint16_t *)pmin,
      (const uint16_t *)pmax, lp, nvalid, d, s);
  SR_CUDA_LAUNCHED("page_scores");
  return SR_OK;
}

/* ---- page_topk ----------------------------------------------------------------------------- */

/*
 * One CTA per list. Scores become order-preserving uint32 keys (larger float -> larger key; -0
 * as +0; NaN -> 0, below everything). Radix select (4 passes of 8 bits, warp-aggregated shared
 * histogram) finds the key T of the kk-th best and how many of the T-valued ones are needed.
 * The collection gives each thread a contiguous stretch of pages (thread order = page order):
 * it counts its keys == T and > T, two CTA scans give each stretch its tie quota and its output
 * offset, and the winners are written in ascending page order (the contract: no sort).
 */
#define TP_THREADS 1024

static __device__ __forceinline__ uint32_t tp_key(float v) {
  if (v != v) return 0u;
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Exclusive prefix sum of v over the CTA (thread order) and the total. */
static __device__ __forceinline__ int tp_scan(int v, int *total, int *warp_tot) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(FULL, inc, o);
    if (lane >= o) inc += t;
  }
  if (lane == 31) warp_tot[w] = inc;
  __syncthreads();
  if (w == 0) {
    int x = lane < TP_THREADS / 32 ? warp_tot[lane] : 0, xi = x;
    for (int o = 1; o < 32; o <<= 1) {
      const int t = __shfl_up_sync(FULL, xi, o);
      if (lane >= o) xi += t;
    }
    if (lane < TP_THREADS / 32) warp_tot[lane] = xi - x; /* exclusive warp offsets */
    if (lane == 31) warp_tot[TP_THREADS / 32] = xi;       /* the total */
  }
  __syncthreads();
  const int off = warp_tot[w] + inc - v;
  *total = warp_tot[TP_THREADS / 32];
  __syncthreads();
  return off;
}

static __global__ void __launch_bounds__(TP_THREADS)
    k_page_topk(const float *s, int64_t lp, int64_t nvalid, int k, int kk, int32_t *own_row,
                int32_t *own_len, float *cand) {
  extern __shared__ uint32_t win[]; /* kk winners, ascending page */
  __shared__ unsigned hist[256];
  __shared__ uint32_t sh_prefix;
  __shared__ int sh_need, warp_tot[TP_THREADS / 32 + 1];
  const int tid = threadIdx.x, lane = tid & 31;
  const int64_t l = blockIdx.x;
  const float *x = s + (size_t)l * (size_t)lp;
  if (kk > 0) {
    uint32_t prefix = 0, mask = 0;
    int need = kk;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += TP_THREADS) hist[i] = 0;
      __syncthreads();
      for (int64_t base = 0; base < nvalid; base += TP_THREADS) {
        const int64_t j = base + tid;
        const uint32_t u = j < nvalid ? tp_key(x[j]) : 0u;
        const int pred = j < nvalid && (u & mask) == prefix;
        const unsigned bin = pred ? (u >> shift) & 255u : 256u;
        const unsigned grp = __match_any_sync(FULL, bin);
        if (pred && lane == __ffs(grp) - 1) atomicAdd(&hist[bin], (unsigned)__popc(grp));
      }
      __syncthreads();
      if (tid == 0) {
        int cum = 0, bin = 255;
        for (; bin > 0; bin--) {
          if (cum + (int)hist[bin] >= need) break;
          cum += (int)hist[bin];
        }
        sh_prefix = prefix | ((uint32_t)bin << shift);
        sh_need = need - cum;
      }
      __syncthreads();
      prefix = sh_prefix;
      need = sh_need;
      mask |= 255u << shift;
      __syncthreads();
    }
    /* prefix = T: every key > T and the `need` lowest-index keys == T win. */
    const int64_t per = (nvalid + TP_THREADS - 1) / TP_THREADS;
    const int64_t j0 = (int64_t)tid * per < nvalid ? (int64_t)tid * per : nvalid;
    const int64_t j1 = j0 + per < nvalid ? j0 + per : nvalid;
    int n_eq = 0, n_gt = 0, tot;
    for (int64_t j = j0; j < j1; j++) {
      const uint32_t u = tp_key(x[j]);
      n_eq += u == prefix;
      n_gt += u > prefix;
    }
    const int eq_before = tp_scan(n_eq, &tot, warp_tot);
    int q = need - eq_before; /* ties this stretch may take */
    q = q < 0 ? 0 : q > n_eq ? n_eq : q;
    int pos = tp_scan(n_gt + q, &tot, warp_tot);
    for (int64_t j = j0; j < j1; j++) {
      const uint32_t u = tp_key(x[j]);
      if (u > prefix || (u == prefix && q-- > 0)) win[pos++] = (uint32_t)j;
    }
    __syncthreads();
  }
  for (int i = tid; i < k; i += TP_THREADS) {
    const size_t o = (size_t)l * (size_t)k + (size_t)i;
    if (i < kk) {
      const uint32_t j = win[i];
      own_row[o] = (int32_t)(16 * j);
      own_len[o] = 16;
      cand[o] = x[j];
    } else {
      own_row[o] = 0;
      own_len[o] = 0;
      cand[o] = -INFINITY;
    }
  }
}

sr_status sr__cuda_page_topk(const float *s, int64_t nlists, int64_t lp, int64_t nvalid, int k,
                             int32_t *own_row, int32_t *own_len, float *cand) {
  if (nlists < 0 || lp < 0 || nvalid < 0 || nvalid > lp || k < 0 || 16 * lp > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "page_topk: bad shape (%lld of %lld pages, k %d)",
                      (long long)nvalid, (long long)lp, k);
  if (nlists == 0 || k == 0) return SR_OK;
  if (nlists > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "page_topk: %lld lists", (long long)nlists);
  if (!own_row || !own_len || !cand || (nvalid > 0 && !s))
    return sr__seterr(SR_ERR_INTERNAL, "page_topk: NULL buffer");
  const int kk = (int64_t)k < nvalid ? k : (int)nvalid;
  const size_t smem = (size_t)(kk > 0 ? kk : 1) * sizeof(uint32_t);
  static size_t smem_set = 48 * 1024;
  if (smem > smem_set) {
    int optin = 0;
    SR_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                   sr__cuda_device()));
    const size_t stat = 256 * 4 + 16 + (TP_THREADS / 32 + 1) * 4; /* the static arrays */
    if (smem + stat > (size_t)optin)
      return sr__seterr(SR_ERR_SHAPE, "page_topk: k = %d is too large for one CTA's shared "
                        "memory (%d bytes)", kk, optin);
    SR_CUDA(cudaFuncSetAttribute(k_page_topk, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem));
    smem_set = smem;
  }
  k_page_topk<<<(unsigned)nlists, TP_THREADS, smem, sr__cuda_compute_stream()>>>(
      s, lp, nvalid, k, kk, own_row, own_len, cand);
  SR_CUDA_LAUNCHED("page_topk");
  return SR_OK;
}

/* ---- est_colmax ---------------------------------------------------------------------------- */

/*
 * expf exactly as glibc computes it (sysdeps/ieee754/flt-32/e_expf.c, the FMA build that
 * x86-64 picks on AVX2 + FMA processors, checked against glibc 2.36 and 2.39): CUDA's
 * own expf differs from glibc's in the last bit on some inputs, and est_colmax must give the
 * CPU backend's bits. x = (k + r) ln2 / 32, 2^(k/32) from a 32-entry table, a cubic in r, all
 * in double.
 */
static __constant__ unsigned long long expf_tab[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,
};

static __device__ float expf_glibc(float x) {
  const uint32_t ux = __float_as_uint(x), abstop = (ux >> 20) & 0x7ffu;
  if (abstop >= 0x42bu) { /* |x| >= 88 or NaN */
    if (ux == 0xff800000u) return 0.0f;
    if (abstop >= 0x7f8u) return x + x;
    if (x > 0x1.62e42ep6f) return __uint_as_float(0x7f800000u);
    if (x < -0x1.9fe368p6f) return 0.0f;
  }
  const double InvLn2N = 0x1.71547652b82fep+5, SHIFT = 0x1.8p+52;
  const double C0 = 0x1.c6af84b912394p-20, C1 = 0x1.ebfce50fac4f3p-13, C2 = 0x1.62e42ff0c52d6p-6;
  /* GCC contracts both uses of z = InvLn2N * x into FMAs: kd = fma(InvLn2N, x, SHIFT) and
   * r = fma(InvLn2N, x, -kd) (the rounded product alone gives other bits for x = -0x1.f8cbb2p+5) */
  const double xd = (double)x;
  double kd = fma(InvLn2N, xd, SHIFT);
  const unsigned long long ki = (unsigned long long)__double_as_longlong(kd);
  kd = __dsub_rn(kd, SHIFT);
  const double r = fma(InvLn2N, xd, -kd);
  const unsigned long long t = expf_tab[ki % 32] + (ki << 47);
  const double sc = __longlong_as_double((long long)t);
  const double zz = fma(C0, r, C1);
  const double r2 = __dmul_rn(r, r);
  double y = fma(C2, r, 1.0);
  y = fma(zz, r2, y);
  y = __dmul_rn(y, sc);
  return __double2float_rn(y);
}

/* The CPU's bf16 rounding (round to nearest even on the bits, as cpu_decode.c's to_bf16). */
static __device__ __forceinline__ float to_bf16_cpu(float x) {
  uint32_t u = __float_as_uint(x);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return __uint_as_float(u);
}

/* One thread per column j, rows in ascending order, the CPU's exact comparisons. */
static __global__ void k_est_colmax(const float *L, int W, int64_t nk, const float *gmax,
                                    const float *inv, int round_bf16, float *colmax) {
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < nk;
       j += (int64_t)gridDim.x * blockDim.x) {
    float best = colmax[j];
    for (int i = 0; i < W; i++) {
      const float g = gmax[i];
      if (g == -INFINITY) continue;
      const float lv = L[(size_t)i * (size_t)nk + (size_t)j];
      if (lv == -INFINITY) continue;
      float p = __fmul_rn(expf_glibc(__fsub_rn(lv, g)), inv[i]);
      if (round_bf16) p = to_bf16_cpu(p);
      if (p > best) best = p;
    }
    colmax[j] = best;
  }
}

sr_status sr__cuda_est_colmax(const float *L, int W, int64_t nk, const float *gmax_host,
                              const float *inv_host, int round_bf16, float *colmax_host) {
  if (W <= 0 || nk < 0)
    return sr__seterr(SR_ERR_SHAPE, "est_colmax: bad shape W=%d nk=%lld", W, (long long)nk);
  if (nk == 0) return SR_OK;
  if (!L || !gmax_host || !inv_host || !colmax_host)
    return sr__seterr(SR_ERR_INTERNAL, "est_colmax: NULL buffer");
  float *dg = NULL, *dinv = NULL, *dcol = NULL;
  sr_cuda_piece pc[3] = {{gmax_host, (size_t)W * sizeof(float), (void **)&dg},
                         {inv_host, (size_t)W * sizeof(float), (void **)&dinv},
                         {colmax_host, (size_t)nk * sizeof(float), (void **)&dcol}};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_EST, pc, 3));
  cudaStream_t st = sr__cuda_compute_stream();
  const int64_t blocks = (nk + 255) / 256 < 65536 ? (nk + 255) / 256 : 65536;
  k_est_colmax<<<(unsigned)blocks, 256, 0, st>>>(L, W, nk, dg, dinv, round_bf16, dcol);
  SR_CUDA_LAUNCHED("est_colmax");
  SR_CUDA(cudaMemcpyAsync(colmax_host, dcol, (size_t)nk * sizeof(float), cudaMemcpyDeviceToHost,
                          st));
  SR_CUDA(cudaStreamSynchronize(st));
  return SR_OK;
}

/* ---- upload / download --------------------------------------------------------------------- */

#define UP_STAGED_MAX ((size_t)16 << 20) /* larger uploads copy directly and wait */

/* Host bytes -> device: staged through the pinned ring into a scratch area, then a device copy,
 * both on the compute stream (ops queued after it see the bytes; the caller may reuse src at
 * once). Large uploads copy directly from src and wait. */
sr_status sr__cuda_upload_bytes(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return SR_OK;
  if (!dst || !src) return sr__seterr(SR_ERR_INTERNAL, "upload: NULL buffer");
  cudaStream_t st = sr__cuda_compute_stream();
  if (bytes > UP_STAGED_MAX) {
    SR_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st));
    SR_CUDA(cudaStreamSynchronize(st));
    return SR_OK;
  }
  void *dev = NULL;
  sr_cuda_piece pc = {src, bytes, &dev};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_DECODE_UP, &pc, 1));
  SR_CUDA(cudaMemcpyAsync(dst, dev, bytes, cudaMemcpyDeviceToDevice, st));
  return SR_OK;
}

/* Device bytes -> host, after every op queued before it. */
sr_status sr__cuda_download_bytes(void *dst, const void *src, size_t bytes) {
  cudaStream_t st = sr__cuda_compute_stream();
  if (bytes == 0) {
    SR_CUDA(cudaStreamSynchronize(st));
    return SR_OK;
  }
  if (!dst || !src) return sr__seterr(SR_ERR_INTERNAL, "download: NULL buffer");
  SR_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
  SR_CUDA(cudaStreamSynchronize(st));
  return SR_OK;
}
