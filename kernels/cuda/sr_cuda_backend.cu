/*
 * sr_cuda_backend.cu — the CUDA backend table: device binding, the compute stream, memory
 * ops (bf16 storage, fp32 everything computed) and the small compute ops (merge, pooling,
 * block scores, Block-Sparse top-k rows). Attention itself is in sr_cuda_attn.cu.
 *
 * Every op is issued on the one compute stream. Ops that return data to the host (copy_out,
 * topk_rows) or take host data the caller may free (store, copy_in) wait for the stream;
 * the others (attn_fwd, merge, pool_mean, block_scores, gather) return as soon as their work
 * is queued, so the host runs ahead of the device and the NCCL transport can order its own
 * stream against this one with events. Host arrays that kernels need are uploaded through a
 * pinned staging ring (sr__cuda_upload), which never waits for compute.
 *
 * State is per process (one device per rank) and not thread-safe: the runtime calls the ops
 * from one host thread. Each kernel is static and has one launcher that checks the launch;
 * each op validates its shapes first (ggml's three layers).
 */
#include "sr_attn_kernels.cuh"
#include "sr_cuda_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define SR_STAGE_N 4 /* pinned staging slots: uploads in flight before the host waits */

typedef struct stage_slot {
  void *host;     /* pinned */
  size_t cap;
  cudaEvent_t ev; /* recorded behind the last copy out of this slot */
} stage_slot;

static struct {
  int ready, device;
  cudaStream_t stream;
  stage_slot stage[SR_STAGE_N];
  int stage_next;
  void *scratch[SR_SCRATCH_N];
  size_t scratch_cap[SR_SCRATCH_N];
  int32_t *topk_host; /* pinned: top-k ids on their way back */
  size_t topk_host_cap;
  sr_backend table;
} G;

extern "C" cudaStream_t sr__cuda_compute_stream(void) { return G.stream; }
extern "C" int sr__cuda_device(void) { return G.device; }

extern "C" sr_status sr__cuda_check(cudaError_t e, const char *what, const char *file, int line) {
  if (e == cudaSuccess) return SR_OK;
  return sr__seterr(SR_ERR_BACKEND, "%s:%d: %s: %s", file, line, what, cudaGetErrorString(e));
}

/* ---- scratch and uploads ----------------------------------------------------------------- */

sr_status sr__cuda_scratch(int which, size_t bytes, void **dev) {
  if (G.scratch_cap[which] < bytes) {
    /* Kernels queued earlier may still read the old area: let them finish before freeing. */
    SR_CUDA(cudaStreamSynchronize(G.stream));
    SR_CUDA(cudaFree(G.scratch[which]));
    G.scratch[which] = NULL;
    G.scratch_cap[which] = 0;
    size_t cap = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 2;
    cudaError_t e = cudaMalloc(&G.scratch[which], cap);
    if (e != cudaSuccess)
      return sr__seterr(SR_ERR_NOMEM, "CUDA backend: out of device memory for %zu bytes of scratch (%s)",
                        cap, cudaGetErrorString(e));
    G.scratch_cap[which] = cap;
  }
  *dev = G.scratch[which];
  return SR_OK;
}

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

sr_status sr__cuda_upload(int which, const sr_cuda_piece *pieces, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += align16(pieces[i].bytes);
  void *dev = NULL;
  SR_TRY(sr__cuda_scratch(which, total > 0 ? total : 16, &dev));
  /* Offsets in size_t: one piece alone passes 2 GiB at 512K tokens x 32 heads dense (the
   * kpos array of 268M entries); an int offset wrapped there and every later piece pointed
   * before the scratch area. */
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    *pieces[i].dev = (char *)dev + off;
    off += align16(pieces[i].bytes);
  }
  if (total == 0) return SR_OK;
  stage_slot *s = &G.stage[G.stage_next];
  G.stage_next = (G.stage_next + 1) % SR_STAGE_N;
  SR_CUDA(cudaEventSynchronize(s->ev)); /* the last copy out of this slot is done */
  if (s->cap < total) {
    SR_CUDA(cudaFreeHost(s->host));
    s->host = NULL;
    s->cap = 0;
    size_t cap = total < ((size_t)1 << 16) ? ((size_t)1 << 16) : total + total / 2;
    if (cudaMallocHost(&s->host, cap) != cudaSuccess)
      return sr__seterr(SR_ERR_NOMEM, "CUDA backend: out of pinned host memory (%zu bytes)", cap);
    s->cap = cap;
  }
  off = 0;
  for (int i = 0; i < n; i++) {
    if (pieces[i].bytes) memcpy((char *)s->host + off, pieces[i].host, pieces[i].bytes);
    off += align16(pieces[i].bytes);
  }
  SR_CUDA(cudaMemcpyAsync(dev, s->host, total, cudaMemcpyHostToDevice, G.stream));
  SR_CUDA(cudaEventRecord(s->ev, G.stream));
  return SR_OK;
}

/* ---- memory ops -------------------------------------------------------------------------- */

static sr_status cuda_alloc(size_t bytes, void **p) {
  *p = NULL;
  cudaError_t e = cudaMalloc(p, bytes > 0 ? bytes : 256);
  if (e != cudaSuccess) {
    *p = NULL;
    return sr__seterr(SR_ERR_NOMEM, "CUDA backend: out of device memory allocating %zu bytes (%s)",
                      bytes, cudaGetErrorString(e));
  }
  return SR_OK;
}

static void cuda_free(void *p) {
  if (p) cudaFree(p); /* implicitly waits for work that may still use p */
}

static sr_status cuda_sync(void) {
  SR_CUDA(cudaStreamSynchronize(G.stream));
  return SR_OK;
}

static __global__ void k_f32_to_bf16(sr_bf16 *dst, const float *src, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]); /* round to nearest even; NaN stays NaN */
}

/* Host fp32 -> device bf16, a chunk at a time through a device fp32 scratch area. */
static sr_status cuda_store(void *dst, const float *src, size_t n) {
  const size_t chunk = (size_t)1 << 22; /* 4 Mi floats = 16 MiB per copy */
  for (size_t off = 0; off < n; off += chunk) {
    const size_t m = n - off < chunk ? n - off : chunk;
    void *tmp = NULL;
    SR_TRY(sr__cuda_scratch(SR_SCRATCH_STORE, m * sizeof(float), &tmp));
    SR_CUDA(cudaMemcpyAsync(tmp, src + off, m * sizeof(float), cudaMemcpyHostToDevice, G.stream));
    const unsigned blocks = (unsigned)((m + 255) / 256 < 4096 ? (m + 255) / 256 : 4096);
    k_f32_to_bf16<<<blocks, 256, 0, G.stream>>>((sr_bf16 *)dst + off, (const float *)tmp, m);
    SR_CUDA_LAUNCHED("store: f32 -> bf16");
  }
  return cuda_sync(); /* the caller may free src now */
}

static sr_status cuda_copy_in(float *dst, const float *src, size_t n) {
  if (n == 0) return SR_OK;
  SR_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, G.stream));
  return cuda_sync();
}

static sr_status cuda_copy_out(float *dst, const float *src, size_t n) {
  if (n == 0) return cuda_sync();
  SR_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, G.stream));
  return cuda_sync();
}

/* dst item i = pool item slots[i]; one CTA per item, 16-byte moves when everything is aligned. */
static __global__ void k_gather16(uint4 *dst, const uint4 *pool, const int32_t *slots,
                                  size_t item_vecs) {
  const size_t i = blockIdx.x;
  const uint4 *src = pool + (size_t)slots[i] * item_vecs;
  uint4 *d = dst + i * item_vecs;
  for (size_t x = threadIdx.x; x < item_vecs; x += blockDim.x) d[x] = src[x];
}
static __global__ void k_gather2(uint16_t *dst, const uint16_t *pool, const int32_t *slots,
                                 size_t item_elems) {
  const size_t i = blockIdx.x;
  const uint16_t *src = pool + (size_t)slots[i] * item_elems;
  uint16_t *d = dst + i * item_elems;
  for (size_t x = threadIdx.x; x < item_elems; x += blockDim.x) d[x] = src[x];
}

static sr_status cuda_gather(void *dst, const void *pool, const int32_t *slots, int64_t n,
                             size_t item_elems) {
  if (n < 0 || n > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "gather: bad item count %lld", (long long)n);
  if (n == 0 || item_elems == 0) return SR_OK;
  for (int64_t i = 0; i < n; i++)
    if (slots[i] < 0)
      return sr__seterr(SR_ERR_INTERNAL, "gather: negative slot %d at %lld", (int)slots[i],
                        (long long)i);
  int32_t *dslots = NULL;
  sr_cuda_piece pc = {slots, (size_t)n * sizeof(int32_t), (void **)&dslots};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_GATHER, &pc, 1));
  const size_t bytes = item_elems * sizeof(sr_bf16);
  if (bytes % 16 == 0 && (uintptr_t)dst % 16 == 0 && (uintptr_t)pool % 16 == 0)
    k_gather16<<<(unsigned)n, 128, 0, G.stream>>>((uint4 *)dst, (const uint4 *)pool, dslots,
                                                  bytes / 16);
  else
    k_gather2<<<(unsigned)n, 128, 0, G.stream>>>((uint16_t *)dst, (const uint16_t *)pool, dslots,
                                                 item_elems);
  SR_CUDA_LAUNCHED("gather");
  return SR_OK;
}

/* ---- merge ------------------------------------------------------------------------------- */

/* One warp per row. Every lane reads both lse values before lane 0 writes the new one (the
 * __syncwarp between), so the row's update is race-free. Weights in double, as on the CPU. */
static __global__ void k_merge(float *acc_out, float *acc_lse, const float *part_out,
                               const float *part_lse, int64_t rows, int d) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float *ao = acc_out + r * d;
  const float *po = part_out + r * d;
  const float la = acc_lse[r], lb = part_lse[r];
  __syncwarp();
  if (lb == -INFINITY) {
    if (la == -INFINITY)
      for (int c = lane; c < d; c += 32) ao[c] = 0.0f;
    return;
  }
  if (la == -INFINITY) {
    for (int c = lane; c < d; c += 32) ao[c] = po[c];
    if (lane == 0) acc_lse[r] = lb;
    return;
  }
  const double mx = la > lb ? la : lb;
  const double wa = exp((double)la - mx), wb = exp((double)lb - mx), s = wa + wb;
  const float fa = (float)(wa / s), fb = (float)(wb / s);
  for (int c = lane; c < d; c += 32) ao[c] = fa * ao[c] + fb * po[c];
  if (lane == 0) acc_lse[r] = (float)(mx + log(s));
}

static sr_status cuda_merge(float *acc_out, float *acc_lse, const float *part_out,
                            const float *part_lse, int64_t rows, int d) {
  if (rows < 0 || d <= 0)
    return sr__seterr(SR_ERR_SHAPE, "merge: bad shape rows=%lld d=%d", (long long)rows, d);
  if (rows == 0) return SR_OK;
  if (!acc_out || !acc_lse || !part_out || !part_lse)
    return sr__seterr(SR_ERR_INTERNAL, "merge: NULL buffer");
  const int64_t blocks = (rows + 7) / 8;
  if (blocks > INT32_MAX) return sr__seterr(SR_ERR_SHAPE, "merge: %lld rows", (long long)rows);
  k_merge<<<(unsigned)blocks, 256, 0, G.stream>>>(acc_out, acc_lse, part_out, part_lse, rows, d);
  SR_CUDA_LAUNCHED("merge");
  return SR_OK;
}

/* ---- pooling ----------------------------------------------------------------------------- */

/* One CTA per (head, block); threads over columns; rows summed in order, in fp32 (as the
 * CPU backend does), then scaled by 1/count. */
static __global__ void k_pool_mean(const sr_bf16 *x, int64_t n, int d, int b, int64_t nb,
                                   float *y) {
  const int64_t t = blockIdx.x, h = t / nb, blk = t % nb;
  const int64_t r0 = blk * b, cnt = n - r0 < b ? n - r0 : b;
  const sr_bf16 *xs = x + ((size_t)h * (size_t)n + (size_t)r0) * (size_t)d;
  const float inv = 1.0f / (float)cnt;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = __bfloat162float(xs[c]);
    for (int64_t i = 1; i < cnt; i++) acc += __bfloat162float(xs[i * d + c]);
    y[(size_t)t * d + c] = acc * inv;
  }
}

static sr_status cuda_pool_mean(const void *x, int heads, int64_t n, int d, int b, float *y) {
  if (heads <= 0 || n < 0 || d <= 0 || b <= 0)
    return sr__seterr(SR_ERR_SHAPE, "pool_mean: bad shape heads=%d n=%lld d=%d b=%d", heads,
                      (long long)n, d, b);
  if (n == 0) return SR_OK;
  if (!x || !y) return sr__seterr(SR_ERR_INTERNAL, "pool_mean: NULL buffer");
  const int64_t nb = (n + b - 1) / b, tasks = (int64_t)heads * nb;
  if (tasks > INT32_MAX) return sr__seterr(SR_ERR_SHAPE, "pool_mean: %lld blocks", (long long)tasks);
  const int threads = d >= 128 ? 128 : (d + 31) / 32 * 32;
  k_pool_mean<<<(unsigned)tasks, threads, 0, G.stream>>>((const sr_bf16 *)x, n, d, b, nb, y);
  SR_CUDA_LAUNCHED("pool_mean");
  return SR_OK;
}

/* ---- block scores ------------------------------------------------------------------------ */

/* s = a . b^T in fp32, a 64x64 tile per CTA: 256 threads hold 4x4 outputs each (rows ty+16i,
 * columns tx+16j, so a warp's stores are contiguous), k in chunks of 16 through shared
 * memory stored [k][row] (broadcast-free reads, padded against bank conflicts). */
#define BS_T 64
#define BS_K 16
static __global__ void __launch_bounds__(256) k_block_scores(const float *a, int64_t na,
                                                             const float *b, int64_t nb, int d,
                                                             float *s) {
  __shared__ float as[BS_K][BS_T + 4], bs[BS_K][BS_T + 4];
  const int64_t m0 = (int64_t)blockIdx.y * BS_T, j0 = (int64_t)blockIdx.x * BS_T;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < d; k0 += BS_K) {
    for (int x = threadIdx.x; x < BS_T * BS_K; x += 256) {
      const int rr = x / BS_K, kk = x % BS_K;
      const bool kin = k0 + kk < d;
      as[kk][rr] = kin && m0 + rr < na ? a[(m0 + rr) * d + k0 + kk] : 0.0f;
      bs[kk][rr] = kin && j0 + rr < nb ? b[(j0 + rr) * d + k0 + kk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BS_K; kk++) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = as[kk][ty + 16 * i], bv[i] = bs[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      const int64_t m = m0 + ty + 16 * i, jj = j0 + tx + 16 * j;
      if (m < na && jj < nb) s[m * nb + jj] = acc[i][j];
    }
}

static sr_status cuda_block_scores(const float *a, int64_t na, const float *b, int64_t nb, int d,
                                   float *s) {
  if (na < 0 || nb < 0 || d <= 0)
    return sr__seterr(SR_ERR_SHAPE, "block_scores: bad shape na=%lld nb=%lld d=%d",
                      (long long)na, (long long)nb, d);
  if (na == 0 || nb == 0) return SR_OK;
  if (!a || !b || !s) return sr__seterr(SR_ERR_INTERNAL, "block_scores: NULL buffer");
  const int64_t gx = (nb + BS_T - 1) / BS_T, gy = (na + BS_T - 1) / BS_T;
  if (gx > INT32_MAX || gy > 65535)
    return sr__seterr(SR_ERR_SHAPE, "block_scores: %lld x %lld is too large", (long long)na,
                      (long long)nb);
  k_block_scores<<<dim3((unsigned)gx, (unsigned)gy), 256, 0, G.stream>>>(a, na, b, nb, d, s);
  SR_CUDA_LAUNCHED("block_scores");
  return SR_OK;
}

/* ---- top-k rows -------------------------------------------------------------------------- */

/*
 * The CPU order as an unsigned key: larger value -> larger key; every NaN -> 0, below every
 * number (-inf included); -0 and +0 equal. Ties in the key are broken by the lower index.
 */
static __device__ __forceinline__ uint32_t topk_key(float v) {
  if (v != v) return 0u;
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#define TK_THREADS 256

/* Exclusive prefix of a 0/1 flag over the CTA (thread order = index order) and the total. */
static __device__ __forceinline__ int cta_scan01(int f, int *total, int *warp_tot) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const unsigned ball = __ballot_sync(0xffffffffu, f);
  if (lane == 0) warp_tot[w] = __popc(ball);
  __syncthreads();
  int off = 0, tot = 0;
  for (int i = 0; i < TK_THREADS / 32; i++) {
    off += i < w ? warp_tot[i] : 0;
    tot += warp_tot[i];
  }
  __syncthreads(); /* warp_tot is reused by the next scan */
  *total = tot;
  return off + __popc(ball & ((1u << lane) - 1u));
}

/*
 * One CTA per row: radix-select the key T of the keep-th best candidate (4 passes of 8 bits
 * over a 256-bin histogram), then one ordered pass writes, in ascending index order, every
 * candidate whose key beats T and the lowest-indexed ones that equal it, as many as needed.
 * Entries 0, c-1 and c-2 count as +inf without being written.
 */
static __global__ void __launch_bounds__(TK_THREADS) k_topk_rows(const float *s, int64_t ld,
                                                                  const int64_t *causal,
                                                                  const int32_t *keep, int K,
                                                                  int32_t *idx) {
  __shared__ unsigned hist[256];
  __shared__ uint32_t sh_prefix;
  __shared__ int sh_need, warp_tot[TK_THREADS / 32];
  const int64_t row = blockIdx.x;
  const int64_t c = causal[row];
  const int k = keep[row];
  if (k <= 0) return;
  const float *x = s + row * ld;
#define TK_KEY(j) ((j) == 0 || (j) == c - 1 || (j) == c - 2 ? 0xFF800000u : topk_key(x[j]))
  /* topk_key(+inf) = 0xFF800000 */
  uint32_t prefix = 0, mask = 0;
  int need = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += TK_THREADS) hist[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < c; j += TK_THREADS) {
      const uint32_t u = TK_KEY(j);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
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
  /* prefix is T; `need` candidates equal to T are taken, lowest index first. */
  int out = 0, eq_seen = 0;
  int32_t *dst = idx + row * (int64_t)K;
  for (int64_t base = 0; base < c; base += TK_THREADS) {
    const int64_t j = base + threadIdx.x;
    const uint32_t u = j < c ? TK_KEY(j) : 0u;
    const int eq = j < c && u == prefix, gt = j < c && u > prefix;
    int eq_tot, take_tot;
    const int eq_before = cta_scan01(eq, &eq_tot, warp_tot);
    const int take = gt || (eq && eq_seen + eq_before < need);
    const int pos = cta_scan01(take, &take_tot, warp_tot);
    if (take) dst[out + pos] = (int32_t)j;
    out += take_tot;
    eq_seen += eq_tot;
  }
#undef TK_KEY
}

static sr_status cuda_topk_rows(float *s, int64_t rows, int64_t ld, const int64_t *causal,
                                const int32_t *keep, int K, int32_t *idx) {
  if (rows < 0 || K < 0 || ld < 1)
    return sr__seterr(SR_ERR_SHAPE, "topk_rows: bad shape rows=%lld ld=%lld K=%d",
                      (long long)rows, (long long)ld, K);
  if (rows == 0) return SR_OK;
  if (rows > INT32_MAX) return sr__seterr(SR_ERR_SHAPE, "topk_rows: %lld rows", (long long)rows);
  for (int64_t i = 0; i < rows; i++)
    if (causal[i] < 1 || causal[i] > ld || keep[i] < 0 || keep[i] > K || keep[i] > causal[i])
      return sr__seterr(SR_ERR_SHAPE,
                        "topk_rows: row %lld: need 1 <= causal (%lld) <= ld (%lld) and "
                        "0 <= keep (%d) <= min(causal, K=%d)",
                        (long long)i, (long long)causal[i], (long long)ld, (int)keep[i], K);
  if (K == 0) return SR_OK;
  int64_t *dcausal = NULL;
  int32_t *dkeep = NULL, *didx = NULL;
  sr_cuda_piece pc[2] = {{causal, (size_t)rows * sizeof(int64_t), (void **)&dcausal},
                         {keep, (size_t)rows * sizeof(int32_t), (void **)&dkeep}};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_TOPK, pc, 2));
  const size_t idx_bytes = (size_t)rows * (size_t)K * sizeof(int32_t);
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_TOPK_IDX, idx_bytes, (void **)&didx));
  k_topk_rows<<<(unsigned)rows, TK_THREADS, 0, G.stream>>>(s, ld, dcausal, dkeep, K, didx);
  SR_CUDA_LAUNCHED("topk_rows");
  if (G.topk_host_cap < idx_bytes) {
    SR_CUDA(cudaStreamSynchronize(G.stream));
    SR_CUDA(cudaFreeHost(G.topk_host));
    G.topk_host = NULL;
    G.topk_host_cap = 0;
    if (cudaMallocHost(&G.topk_host, idx_bytes) != cudaSuccess)
      return sr__seterr(SR_ERR_NOMEM, "topk_rows: out of pinned host memory (%zu bytes)",
                        idx_bytes);
    G.topk_host_cap = idx_bytes;
  }
  SR_CUDA(cudaMemcpyAsync(G.topk_host, didx, idx_bytes, cudaMemcpyDeviceToHost, G.stream));
  SR_TRY(cuda_sync());
  /* Only the kept ids of each row; the rest of idx is left as the caller had it. */
  for (int64_t i = 0; i < rows; i++)
    memcpy(idx + i * K, G.topk_host + i * K, (size_t)keep[i] * sizeof(int32_t));
  return SR_OK;
}

/* Host top-k: the CPU backend's (x and idx are host memory on every backend). */
static sr_status cuda_topk(const float *x, int64_t n, int k, int32_t *idx) {
  return sr_backend_cpu()->topk(x, n, k, idx);
}

/* ---- the table ------------------------------------------------------------------------- */

extern "C" const sr_backend *sr_backend_cuda(int local_rank) {
  if (G.ready) return &G.table;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= 0) {
    sr__seterr(SR_ERR_BACKEND, "no usable CUDA device: %s",
               e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices");
    cudaGetLastError(); /* clear it: this process may go on with the CPU backend */
    return NULL;
  }
  const int dev = (local_rank > 0 ? local_rank : 0) % count;
#define INIT_CHECK(call)                                                                           \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      sr__seterr(SR_ERR_BACKEND, "no usable CUDA device: device %d: %s: %s", dev, #call,          \
                 cudaGetErrorString(e_));                                                          \
      cudaGetLastError();                                                                          \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)
  INIT_CHECK(cudaSetDevice(dev));
  INIT_CHECK(cudaStreamCreateWithFlags(&G.stream, cudaStreamNonBlocking));
  for (int i = 0; i < SR_STAGE_N; i++)
    INIT_CHECK(cudaEventCreateWithFlags(&G.stage[i].ev, cudaEventDisableTiming));
#undef INIT_CHECK
  G.device = dev;
  if (sr__cuda_attn_init() != SR_OK) return NULL; /* its message names the failure */
  sr_backend *t = &G.table;
  t->name = "cuda";
  t->elem_bytes = sizeof(sr_bf16);
  t->alloc = cuda_alloc;
  t->free = cuda_free;
  t->store = cuda_store;
  t->copy_in = cuda_copy_in;
  t->copy_out = cuda_copy_out;
  t->gather = cuda_gather;
  t->sync = cuda_sync;
  t->attn_fwd = sr__cuda_attn_fwd;
  t->merge = cuda_merge;
  t->pool_mean = cuda_pool_mean;
  t->block_scores = cuda_block_scores;
  t->topk = cuda_topk;
  t->topk_rows = cuda_topk_rows;
  G.ready = 1;
  return &G.table;
}
