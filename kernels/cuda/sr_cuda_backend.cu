/*
 * sr_cuda_backend.cu — the CUDA backend table: device binding, the compute stream, memory
 * ops (bf16 storage, fp32 everything computed) and the small compute ops (merge, pooling,
 * block scores, Block-Sparse top-k rows, the Vertical-Slash / FlexPrefill estimate). Attention
 * itself is in sr_cuda_attn.cu.
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
#include <stdlib.h>
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
  void *est_host;     /* pinned: estimate sums and maxima on their way back */
  size_t est_host_cap;
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

sr_status sr__cuda_upload(int which, const sr_cuda_piece *pieces, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += sr__cuda_align16(pieces[i].bytes);
  void *dev = NULL;
  SR_TRY(sr__cuda_scratch(which, total > 0 ? total : 16, &dev));
  /* Offsets in size_t: one piece alone passes 2 GiB at 512K tokens x 32 heads dense (the
   * kpos array of 268M entries); an int offset wrapped there and every later piece pointed
   * before the scratch area. */
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    *pieces[i].dev = (char *)dev + off;
    off += sr__cuda_align16(pieces[i].bytes);
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
    off += sr__cuda_align16(pieces[i].bytes);
  }
  SR_CUDA(cudaMemcpyAsync(dev, s->host, total, cudaMemcpyHostToDevice, G.stream));
  SR_CUDA(cudaEventRecord(s->ev, G.stream));
  return SR_OK;
}

/* ---- memory ops -------------------------------------------------------------------------- */

/* Page-locked host buffers for the layer outputs: a few are kept after host_free and handed out
 * again (best fit), so a run pins its buffers once, not once per layer. When pinning fails, or
 * every cache entry is taken, a plain allocation serves (slower copies, same results). */
#define SR_HOST_CACHE 4
static struct {
  void *p;
  size_t cap;
  int used, pinned;
} H[SR_HOST_CACHE];

static void *plain_alloc(size_t bytes) { /* 64-byte aligned, as the runtime's own buffers */
  void *q = NULL;
  return posix_memalign(&q, 64, bytes) == 0 ? q : NULL;
}

static sr_status cuda_host_alloc(size_t bytes, void **p) {
  *p = NULL;
  if (bytes == 0) bytes = 64;
  int best = -1, empty = -1;
  for (int i = 0; i < SR_HOST_CACHE; i++) {
    if (!H[i].p) {
      if (empty < 0) empty = i;
    } else if (!H[i].used && H[i].cap >= bytes && (best < 0 || H[i].cap < H[best].cap)) {
      best = i;
    }
  }
  if (best >= 0) {
    H[best].used = 1;
    *p = H[best].p;
    return SR_OK;
  }
  if (empty < 0) /* no free entry: give back an idle buffer that is too small */
    for (int i = 0; i < SR_HOST_CACHE && empty < 0; i++)
      if (!H[i].used) {
        if (H[i].pinned) cudaFreeHost(H[i].p);
        else free(H[i].p);
        H[i].p = NULL;
        empty = i;
      }
  void *q = NULL;
  int pinned = cudaMallocHost(&q, bytes) == cudaSuccess;
  if (!pinned) {
    (void)cudaGetLastError(); /* not sticky; the plain allocation below serves */
    q = plain_alloc(bytes);
    if (!q)
      return sr__seterr(SR_ERR_NOMEM, "CUDA backend: out of host memory (%zu bytes)", bytes);
  }
  if (empty >= 0) {
    H[empty].p = q;
    H[empty].cap = bytes;
    H[empty].used = 1;
    H[empty].pinned = pinned;
  } else if (pinned) { /* every entry in use: not cached, freed by host_free */
    cudaFreeHost(q);
    q = plain_alloc(bytes);
    if (!q)
      return sr__seterr(SR_ERR_NOMEM, "CUDA backend: out of host memory (%zu bytes)", bytes);
  }
  *p = q;
  return SR_OK;
}

static void cuda_host_free(void *p) {
  if (!p) return;
  for (int i = 0; i < SR_HOST_CACHE; i++)
    if (H[i].p == p) {
      H[i].used = 0;
      return;
    }
  free(p);
}

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

static __global__ void k_bf16_to_f32(float *dst, const sr_bf16 *src, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

/* Device bf16 -> host fp32, a chunk at a time widened into a device fp32 scratch area and
 * copied out (the stream orders each chunk's copy before the next chunk's kernel). */
static sr_status cuda_unstore(float *dst, const void *src, size_t n) {
  if (n == 0) return cuda_sync();
  if (!dst || !src) return sr__seterr(SR_ERR_INTERNAL, "unstore: NULL buffer");
  const size_t chunk = (size_t)1 << 22;
  for (size_t off = 0; off < n; off += chunk) {
    const size_t m = n - off < chunk ? n - off : chunk;
    void *tmp = NULL;
    SR_TRY(sr__cuda_scratch(SR_SCRATCH_STORE, m * sizeof(float), &tmp));
    const unsigned blocks = (unsigned)((m + 255) / 256 < 4096 ? (m + 255) / 256 : 4096);
    k_bf16_to_f32<<<blocks, 256, 0, G.stream>>>((float *)tmp, (const sr_bf16 *)src + off, m);
    SR_CUDA_LAUNCHED("unstore: bf16 -> f32");
    SR_CUDA(cudaMemcpyAsync(dst + off, tmp, m * sizeof(float), cudaMemcpyDeviceToHost, G.stream));
  }
  return cuda_sync();
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

/* Row i's first keep[i] ids of idx [rows][K] to csr + at[i] (one CTA per row). */
static __global__ void k_rows_compact(const int32_t *idx, int K, const int32_t *keep,
                                      const int64_t *at, int32_t *csr) {
  const int64_t i = blockIdx.x;
  for (int t = threadIdx.x; t < keep[i]; t += blockDim.x) csr[at[i] + t] = idx[i * K + t];
}

static sr_status cuda_topk_rows(float *s, int64_t rows, int64_t ld, const int64_t *causal,
                                const int32_t *keep, int K, int32_t *idx, int32_t *csr) {
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
  int64_t *dcausal = NULL, *dat = NULL;
  int32_t *dkeep = NULL, *didx = NULL;
  int64_t *at = NULL; /* csr: where each row's ids start */
  if (csr) {
    at = (int64_t *)malloc((size_t)rows * sizeof(int64_t));
    if (!at) return sr__seterr(SR_ERR_NOMEM, "topk_rows: out of host memory");
    for (int64_t i = 0, a = 0; i < rows; a += keep[i], i++) at[i] = a;
  }
  sr_cuda_piece pc[3] = {{causal, (size_t)rows * sizeof(int64_t), (void **)&dcausal},
                         {keep, (size_t)rows * sizeof(int32_t), (void **)&dkeep},
                         {at, csr ? (size_t)rows * sizeof(int64_t) : 0, (void **)&dat}};
  sr_status up = sr__cuda_upload(SR_SCRATCH_TOPK, pc, csr ? 3 : 2);
  free(at);
  SR_TRY(up);
  const size_t idx_bytes = (size_t)rows * (size_t)K * sizeof(int32_t);
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_TOPK_IDX, idx_bytes, (void **)&didx));
  k_topk_rows<<<(unsigned)rows, TK_THREADS, 0, G.stream>>>(s, ld, dcausal, dkeep, K, didx);
  SR_CUDA_LAUNCHED("topk_rows");
  if (csr) {
    k_rows_compact<<<(unsigned)rows, 128, 0, G.stream>>>(didx, K, dkeep, dat, csr);
    SR_CUDA_LAUNCHED("topk_rows: csr");
  }
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

/* ---- Vertical-Slash / FlexPrefill estimate ------------------------------------------------ */

/*
 * The four ops of kernels.h, for one q-head. Every output value is computed in an order that
 * does not depend on nk or on the launch shape, so the same keys give the same bits however
 * they are split over ranks (and over calls):
 *   est_scores  one thread per L element, dims in ascending order (fmaf chain), then * scale;
 *   est_rowmax  max over the row (exact in any order), merged with atomicMax on an
 *               order-preserving integer key;
 *   est_rowsum, est_accum  fixed-point int64 sums (integer addition is associative), merged
 *               with 64-bit integer atomics.
 * Device sums go back through a pinned host buffer; the ops that return host data wait.
 */

/* fix(x) = (int64)(x * 2^32 + 0.5), in double from the float x (x * 2^32 is exact, so a
 * fused multiply-add rounds as the two operations do). */
static __device__ __forceinline__ unsigned long long est_fix(float x) {
  return (unsigned long long)(long long)((double)x * 4294967296.0 + 0.5);
}

/* Global position of local key j. */
static __device__ __forceinline__ int64_t est_pos(const int64_t *run_start, int64_t run_len,
                                                  int64_t j) {
  return run_start[j / run_len] + j % run_len;
}

/* A pinned host buffer of at least `bytes` for results on their way back. */
static sr_status est_host_buf(size_t bytes, void **p) {
  if (G.est_host_cap < bytes) {
    SR_CUDA(cudaStreamSynchronize(G.stream));
    SR_CUDA(cudaFreeHost(G.est_host));
    G.est_host = NULL;
    G.est_host_cap = 0;
    const size_t cap = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 4;
    if (cudaMallocHost(&G.est_host, cap) != cudaSuccess)
      return sr__seterr(SR_ERR_NOMEM, "estimate: out of pinned host memory (%zu bytes)", cap);
    G.est_host_cap = cap;
  }
  *p = G.est_host;
  return SR_OK;
}

/* Checks the run layout of the keys; *nruns receives the number of run_start entries used. */
static sr_status est_runs_check(const char *op, int64_t nk, const int64_t *run_start,
                                int64_t run_len, int64_t *nruns) {
  if (run_len <= 0 || !run_start)
    return sr__seterr(SR_ERR_SHAPE, "%s: bad key runs (run_len %lld, run_start %s)", op,
                      (long long)run_len, run_start ? "set" : "NULL");
  *nruns = (nk + run_len - 1) / run_len;
  for (int64_t r = 0; r < *nruns; r++)
    if (run_start[r] < 0)
      return sr__seterr(SR_ERR_SHAPE, "%s: run %lld starts at %lld", op, (long long)r,
                        (long long)run_start[r]);
  return SR_OK;
}

/* L = scale * qw . k^T with the causal mask: a 128 x 128 tile per CTA, 256 threads holding
 * 8 x 8 outputs each (rows ty*4 + {0..3} and 64 + ty*4 + {0..3}, the same for columns with
 * tx), dims through shared memory 8 at a time (stored [dim][row]: float4 reads, broadcast
 * for the rows), double-buffered, the next 8 dims fetched into registers during the FMAs.
 * Each thread loads 4 consecutive dims of one q row and of one key row per stage. */
#define ES_T 128
#define ES_KD 8

template <bool VEC>
static __device__ __forceinline__ void es_fetch(const float *arow, const sr_bf16 *brow, bool aok,
                                                bool bok, int c, int d, float ra[4],
                                                float rb[4]) {
  if (VEC) { /* d % 4 == 0 and c % 4 == 0: c < d covers all four; rows 16/8-byte aligned */
    const bool in = c < d;
    const float4 av = aok && in ? *(const float4 *)(arow + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    ra[0] = av.x, ra[1] = av.y, ra[2] = av.z, ra[3] = av.w;
    const uint2 bv = bok && in ? *(const uint2 *)(brow + c) : make_uint2(0u, 0u);
    rb[0] = __uint_as_float(bv.x << 16), rb[1] = __uint_as_float(bv.x & 0xffff0000u);
    rb[2] = __uint_as_float(bv.y << 16), rb[3] = __uint_as_float(bv.y & 0xffff0000u);
  } else {
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const bool in = c + u < d;
      ra[u] = aok && in ? arow[c + u] : 0.0f;
      rb[u] = bok && in ? __bfloat162float(brow[c + u]) : 0.0f;
    }
  }
}

template <bool VEC>
static __global__ void __launch_bounds__(256) k_est_scores(const float *qw, int W,
                                                           const sr_bf16 *k, int64_t nk, int d,
                                                           float scale, int64_t qpos0,
                                                           const int64_t *run_start,
                                                           int64_t run_len, float *L) {
  __shared__ __align__(16) float As[2][ES_KD][ES_T];
  __shared__ __align__(16) float Bs[2][ES_KD][ES_T];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int i0 = blockIdx.y * ES_T;
  const int64_t j0 = (int64_t)blockIdx.x * ES_T;
  const int lr = tid >> 1, lc = (tid & 1) * 4;
  const bool aok = i0 + lr < W, bok = j0 + lr < nk;
  const float *arow = qw + (size_t)(aok ? i0 + lr : 0) * (size_t)d;
  const sr_bf16 *brow = k + (size_t)(bok ? j0 + lr : 0) * (size_t)d;
  float ra[4], rb[4];
  es_fetch<VEC>(arow, brow, aok, bok, lc, d, ra, rb);
#pragma unroll
  for (int u = 0; u < 4; u++) As[0][lc + u][lr] = ra[u], Bs[0][lc + u][lr] = rb[u];
  __syncthreads();
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
  int cur = 0;
  for (int k0 = 0; k0 < d; k0 += ES_KD) {
    const bool more = k0 + ES_KD < d;
    if (more) es_fetch<VEC>(arow, brow, aok, bok, k0 + ES_KD + lc, d, ra, rb);
#pragma unroll
    for (int kk = 0; kk < ES_KD; kk++) {
      const float4 a0 = *(const float4 *)&As[cur][kk][ty * 4];
      const float4 a1 = *(const float4 *)&As[cur][kk][64 + ty * 4];
      const float4 b0 = *(const float4 *)&Bs[cur][kk][tx * 4];
      const float4 b1 = *(const float4 *)&Bs[cur][kk][64 + tx * 4];
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (more) {
#pragma unroll
      for (int u = 0; u < 4; u++) As[cur ^ 1][lc + u][lr] = ra[u], Bs[cur ^ 1][lc + u][lr] = rb[u];
    }
    __syncthreads();
    cur ^= 1;
  }
  int64_t pj[8];
#pragma unroll
  for (int j = 0; j < 8; j++) {
    const int64_t col = j0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
    pj[j] = col < nk ? est_pos(run_start, run_len, col) : 0;
  }
  const bool vec_store = ((uintptr_t)L & 15) == 0 && nk % 4 == 0 && j0 + ES_T <= nk;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int row = i0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (row >= W) continue;
    const int64_t qp = qpos0 + row;
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = pj[j] > qp ? -INFINITY : scale * acc[i][j];
    float *dst = L + (size_t)row * (size_t)nk + j0;
    if (vec_store) {
      *(float4 *)(dst + tx * 4) = make_float4(v[0], v[1], v[2], v[3]);
      *(float4 *)(dst + 64 + tx * 4) = make_float4(v[4], v[5], v[6], v[7]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int c = j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4;
        if (j0 + c < nk) dst[c] = v[j];
      }
    }
  }
}

static sr_status cuda_est_scores(const float *qw, int W, int64_t qpos0, const void *k, int64_t nk,
                                 const int64_t *run_start, int64_t run_len, int d, float scale,
                                 float *L) {
  if (W < 0 || nk < 0 || d <= 0 || qpos0 < 0)
    return sr__seterr(SR_ERR_SHAPE, "est_scores: bad shape W=%d nk=%lld d=%d qpos0=%lld", W,
                      (long long)nk, d, (long long)qpos0);
  if (W == 0 || nk == 0) return SR_OK;
  if (!qw || !k || !L) return sr__seterr(SR_ERR_INTERNAL, "est_scores: NULL buffer");
  int64_t nruns = 0;
  SR_TRY(est_runs_check("est_scores", nk, run_start, run_len, &nruns));
  const int64_t gx = (nk + ES_T - 1) / ES_T, gy = ((int64_t)W + ES_T - 1) / ES_T;
  if (gx > INT32_MAX || gy > 65535)
    return sr__seterr(SR_ERR_SHAPE, "est_scores: W=%d x nk=%lld is too large", W, (long long)nk);
  int64_t *drs = NULL;
  sr_cuda_piece pc = {run_start, (size_t)nruns * sizeof(int64_t), (void **)&drs};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_EST, &pc, 1));
  const dim3 grid((unsigned)gx, (unsigned)gy);
  const bool vec = d % 4 == 0 && (uintptr_t)qw % 16 == 0 && (uintptr_t)k % 8 == 0;
  if (vec)
    k_est_scores<true><<<grid, 256, 0, G.stream>>>(qw, W, (const sr_bf16 *)k, nk, d, scale, qpos0,
                                                   drs, run_len, L);
  else
    k_est_scores<false><<<grid, 256, 0, G.stream>>>(qw, W, (const sr_bf16 *)k, nk, d, scale,
                                                    qpos0, drs, run_len, L);
  SR_CUDA_LAUNCHED("est_scores");
  return SR_OK;
}

/* Row reductions: a (split, row) grid; each CTA reduces a contiguous range of its row and
 * merges it with one atomic. */
#define ER_THREADS 256

/* Splits of a row so that the grid has about 1024 CTAs, each at least 4096 keys. */
static int64_t est_row_split(int W, int64_t nk, int64_t *per) {
  int64_t splits = (nk + 4095) / 4096;
  const int64_t want = (1024 + W - 1) / W;
  if (splits > want) splits = want;
  if (splits < 1) splits = 1;
  *per = (nk + splits - 1) / splits;
  return (nk + *per - 1) / *per;
}

/* Order-preserving key of a non-NaN float (-0 as +0); 0 is below every key (no value). */
static __device__ __forceinline__ uint32_t est_max_key(float v) {
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
static float est_max_value(uint32_t key) {
  if (key == 0) return -INFINITY;
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  memcpy(&v, &b, sizeof v);
  return v;
}

static __global__ void __launch_bounds__(ER_THREADS) k_est_rowmax(const float *L, int64_t nk,
                                                                  int64_t per, uint32_t *keys) {
  __shared__ float part[ER_THREADS / 32];
  const int64_t i = blockIdx.y, a = (int64_t)blockIdx.x * per;
  const int64_t b = a + per < nk ? a + per : nk;
  const float *row = L + (size_t)i * (size_t)nk;
  float m = -INFINITY;
#pragma unroll 4
  for (int64_t j = a + threadIdx.x; j < b; j += ER_THREADS) m = fmaxf(m, row[j]); /* NaN ignored */
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < ER_THREADS / 32; w++) m = fmaxf(m, part[w]);
    atomicMax(&keys[i], est_max_key(m));
  }
}

static sr_status cuda_est_rowmax(const float *L, int W, int64_t nk, float *max_host) {
  if (W < 0 || nk < 0 || W > 65535)
    return sr__seterr(SR_ERR_SHAPE, "est_rowmax: bad shape W=%d nk=%lld", W, (long long)nk);
  if (W == 0) return SR_OK;
  if (!max_host) return sr__seterr(SR_ERR_INTERNAL, "est_rowmax: NULL buffer");
  if (nk == 0) {
    for (int i = 0; i < W; i++) max_host[i] = -INFINITY;
    return SR_OK;
  }
  if (!L) return sr__seterr(SR_ERR_INTERNAL, "est_rowmax: NULL buffer");
  uint32_t *dkeys = NULL;
  void *host = NULL;
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_EST_OUT, (size_t)W * sizeof(uint32_t), (void **)&dkeys));
  SR_TRY(est_host_buf((size_t)W * sizeof(uint32_t), &host));
  SR_CUDA(cudaMemsetAsync(dkeys, 0, (size_t)W * sizeof(uint32_t), G.stream));
  int64_t per = 0;
  const int64_t splits = est_row_split(W, nk, &per);
  k_est_rowmax<<<dim3((unsigned)splits, (unsigned)W), ER_THREADS, 0, G.stream>>>(L, nk, per, dkeys);
  SR_CUDA_LAUNCHED("est_rowmax");
  SR_CUDA(cudaMemcpyAsync(host, dkeys, (size_t)W * sizeof(uint32_t), cudaMemcpyDeviceToHost,
                          G.stream));
  SR_TRY(cuda_sync());
  for (int i = 0; i < W; i++) max_host[i] = est_max_value(((const uint32_t *)host)[i]);
  return SR_OK;
}

static __global__ void __launch_bounds__(ER_THREADS) k_est_rowsum(const float *L, int64_t nk,
                                                                  int64_t per, const float *gmax,
                                                                  unsigned long long *sums) {
  __shared__ unsigned long long part[ER_THREADS / 32];
  const int64_t i = blockIdx.y, a = (int64_t)blockIdx.x * per;
  const float g = gmax[i];
  if (g == -INFINITY) return; /* the row's sum stays 0 */
  const int64_t b = a + per < nk ? a + per : nk;
  const float *row = L + (size_t)i * (size_t)nk;
  unsigned long long s = 0;
#pragma unroll 4
  for (int64_t j = a + threadIdx.x; j < b; j += ER_THREADS) s += est_fix(expf(row[j] - g));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < ER_THREADS / 32; w++) s += part[w];
    if (s) atomicAdd(&sums[i], s);
  }
}

static sr_status cuda_est_rowsum(const float *L, int W, int64_t nk, const float *gmax_host,
                                 int64_t *sum_host) {
  if (W < 0 || nk < 0 || W > 65535)
    return sr__seterr(SR_ERR_SHAPE, "est_rowsum: bad shape W=%d nk=%lld", W, (long long)nk);
  if (W == 0) return SR_OK;
  if (!sum_host || !gmax_host) return sr__seterr(SR_ERR_INTERNAL, "est_rowsum: NULL buffer");
  if (nk == 0) {
    for (int i = 0; i < W; i++) sum_host[i] = 0;
    return SR_OK;
  }
  if (!L) return sr__seterr(SR_ERR_INTERNAL, "est_rowsum: NULL buffer");
  float *dg = NULL;
  unsigned long long *dsum = NULL;
  void *host = NULL;
  sr_cuda_piece pc = {gmax_host, (size_t)W * sizeof(float), (void **)&dg};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_EST, &pc, 1));
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_EST_OUT, (size_t)W * sizeof(int64_t), (void **)&dsum));
  SR_TRY(est_host_buf((size_t)W * sizeof(int64_t), &host));
  SR_CUDA(cudaMemsetAsync(dsum, 0, (size_t)W * sizeof(int64_t), G.stream));
  int64_t per = 0;
  const int64_t splits = est_row_split(W, nk, &per);
  k_est_rowsum<<<dim3((unsigned)splits, (unsigned)W), ER_THREADS, 0, G.stream>>>(L, nk, per, dg,
                                                                                  dsum);
  SR_CUDA_LAUNCHED("est_rowsum");
  SR_CUDA(cudaMemcpyAsync(host, dsum, (size_t)W * sizeof(int64_t), cudaMemcpyDeviceToHost,
                          G.stream));
  SR_TRY(cuda_sync());
  memcpy(sum_host, host, (size_t)W * sizeof(int64_t));
  return SR_OK;
}

/*
 * Vertical and slash sums: one CTA per 64 keys, walking all W rows 64 at a time. Each 64 x 64
 * chunk of fix(A) goes to shared memory (row stride 65: the diagonal walk is conflict-free);
 * then thread t adds half of column t%64 into its register (the vertical sum of a column is
 * owned by one CTA: no atomics, one store at the end) and thread t < 127 walks diagonal
 * il - jl = t - 63, where consecutive elements share the slash offset o = qpos0 + i - pos(j)
 * as long as the keys' positions are consecutive; it adds them up and flushes the sum with
 * one 64-bit atomic whenever o changes (a run boundary, or the end of the diagonal).
 * Slash offsets are stored relative to o_lo, the smallest offset these keys can produce.
 */
#define EA_T 64
#define EA_THREADS 128

static __device__ __forceinline__ void ea_flush(unsigned long long *slash, int64_t o_lo,
                                                int64_t o_n, int64_t o, unsigned long long s) {
  if (s && o >= o_lo && o - o_lo < o_n) atomicAdd(&slash[o - o_lo], s);
}

static __global__ void __launch_bounds__(EA_THREADS)
    k_est_accum(const float *L, int W, int64_t nk, int64_t qpos0, const int64_t *run_start,
                int64_t run_len, const float *gmax, const float *inv, int round_bf16,
                int64_t o_lo, int64_t o_n, unsigned long long *vert, unsigned long long *slash) {
  __shared__ unsigned long long fx[EA_T][EA_T + 1];
  __shared__ int64_t pos[EA_T];
  __shared__ unsigned long long vhalf[EA_T];
  const int tid = threadIdx.x;
  const int64_t j0 = (int64_t)blockIdx.x * EA_T;
  if (tid < EA_T) pos[tid] = j0 + tid < nk ? est_pos(run_start, run_len, j0 + tid) : 0;
  const int vc = tid & (EA_T - 1), vh = tid / EA_T; /* vertical: column vc, rows vh*32.. */
  const int dlt = tid - (EA_T - 1);                 /* slash: the diagonal il - jl = dlt */
  unsigned long long vsum = 0;
  for (int r0 = 0; r0 < W; r0 += EA_T) {
    __syncthreads(); /* the previous chunk is read (and pos is written) */
    for (int x = tid; x < EA_T * EA_T; x += EA_THREADS) {
      const int il = x / EA_T, jl = x % EA_T, i = r0 + il;
      const int64_t j = j0 + jl;
      unsigned long long f = 0;
      if (i < W && j < nk) {
        const float g = gmax[i];
        if (g != -INFINITY) {
          float A = expf(L[(size_t)i * (size_t)nk + (size_t)j] - g) * inv[i];
          if (round_bf16) A = __bfloat162float(__float2bfloat16_rn(A));
          f = est_fix(A);
        }
      }
      fx[il][jl] = f;
    }
    __syncthreads();
#pragma unroll 8
    for (int il = vh * (EA_T / 2); il < (vh + 1) * (EA_T / 2); il++) vsum += fx[il][vc];
    if (dlt <= EA_T - 1) {
      int il = dlt > 0 ? dlt : 0, jl = il - dlt;
      int64_t cur = qpos0 + r0 + il - pos[jl];
      unsigned long long s = 0;
      for (; il < EA_T && jl < EA_T; il++, jl++) {
        const int64_t o = qpos0 + r0 + il - pos[jl];
        if (o != cur) {
          ea_flush(slash, o_lo, o_n, cur, s);
          s = 0;
          cur = o;
        }
        s += fx[il][jl];
      }
      ea_flush(slash, o_lo, o_n, cur, s);
    }
  }
  if (vh == 1) vhalf[vc] = vsum;
  __syncthreads();
  if (vh == 0 && j0 + vc < nk) vert[j0 + vc] = vsum + vhalf[vc];
}

static sr_status cuda_est_accum(const float *L, int W, int64_t nk, int64_t qpos0,
                                const int64_t *run_start, int64_t run_len, const float *gmax_host,
                                const float *inv_host, int round_bf16, int64_t n,
                                int64_t *vert_host, int64_t *slash_host) {
  if (W < 0 || nk < 0 || n < 0 || qpos0 < 0)
    return sr__seterr(SR_ERR_SHAPE, "est_accum: bad shape W=%d nk=%lld n=%lld qpos0=%lld", W,
                      (long long)nk, (long long)n, (long long)qpos0);
  if (W == 0 || nk == 0) return SR_OK;
  if (!L || !gmax_host || !inv_host || !vert_host || (n > 0 && !slash_host))
    return sr__seterr(SR_ERR_INTERNAL, "est_accum: NULL buffer");
  int64_t nruns = 0;
  SR_TRY(est_runs_check("est_accum", nk, run_start, run_len, &nruns));
  const int64_t gx = (nk + EA_T - 1) / EA_T;
  if (gx > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "est_accum: nk=%lld is too large", (long long)nk);
  /* Offsets o = qpos0 + i - pos(j) lie in [qpos0 - max pos, qpos0 + W - 1 - min pos]. */
  int64_t pmin = INT64_MAX, pmax = INT64_MIN;
  for (int64_t r = 0; r < nruns; r++) {
    const int64_t len = nk - r * run_len < run_len ? nk - r * run_len : run_len;
    if (run_start[r] < pmin) pmin = run_start[r];
    if (run_start[r] + len - 1 > pmax) pmax = run_start[r] + len - 1;
  }
  int64_t o_lo = qpos0 - pmax, o_hi = qpos0 + W - 1 - pmin;
  if (o_lo < 0) o_lo = 0;
  if (o_hi > n - 1) o_hi = n - 1;
  const int64_t o_n = o_hi >= o_lo ? o_hi - o_lo + 1 : 0;

  int64_t *drs = NULL;
  float *dg = NULL, *dinv = NULL;
  sr_cuda_piece pc[3] = {{run_start, (size_t)nruns * sizeof(int64_t), (void **)&drs},
                         {gmax_host, (size_t)W * sizeof(float), (void **)&dg},
                         {inv_host, (size_t)W * sizeof(float), (void **)&dinv}};
  SR_TRY(sr__cuda_upload(SR_SCRATCH_EST, pc, 3));
  const size_t words = (size_t)nk + (size_t)o_n;
  unsigned long long *dout = NULL;
  void *host = NULL;
  SR_TRY(sr__cuda_scratch(SR_SCRATCH_EST_OUT, words * sizeof(int64_t), (void **)&dout));
  SR_TRY(est_host_buf(words * sizeof(int64_t), &host));
  unsigned long long *dvert = dout, *dslash = dout + nk;
  if (o_n) SR_CUDA(cudaMemsetAsync(dslash, 0, (size_t)o_n * sizeof(int64_t), G.stream));
  k_est_accum<<<(unsigned)gx, EA_THREADS, 0, G.stream>>>(L, W, nk, qpos0, drs, run_len, dg, dinv,
                                                         round_bf16, o_lo, o_n, dvert, dslash);
  SR_CUDA_LAUNCHED("est_accum");
  SR_CUDA(cudaMemcpyAsync(host, dout, words * sizeof(int64_t), cudaMemcpyDeviceToHost, G.stream));
  SR_TRY(cuda_sync());
  const int64_t *hv = (const int64_t *)host, *hs = hv + nk;
  for (int64_t j = 0; j < nk; j++) vert_host[j] += hv[j];
  for (int64_t o = 0; o < o_n; o++) slash_host[o_lo + o] += hs[o];
  return SR_OK;
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
  t->host_alloc = cuda_host_alloc;
  t->host_free = cuda_host_free;
  t->gather = cuda_gather;
  t->sync = cuda_sync;
  t->attn_fwd = sr__cuda_attn_fwd;
  t->attn_lists = sr__cuda_attn_lists;
  t->event_times = sr__cuda_event_times;
  t->merge = cuda_merge;
  t->pool_mean = cuda_pool_mean;
  t->block_scores = cuda_block_scores;
  t->topk = cuda_topk;
  t->topk_rows = cuda_topk_rows;
  t->unstore = cuda_unstore;
  t->est_scores = cuda_est_scores;
  t->est_rowmax = cuda_est_rowmax;
  t->est_rowsum = cuda_est_rowsum;
  t->est_accum = cuda_est_accum;
  t->decode_fwd = sr__cuda_decode_fwd;
  t->page_minmax = sr__cuda_page_minmax;
  t->page_scores = sr__cuda_page_scores;
  t->page_topk = sr__cuda_page_topk;
  t->est_colmax = sr__cuda_est_colmax;
  t->upload = sr__cuda_upload_bytes;
  t->download = sr__cuda_download_bytes;
  G.ready = 1;
  return &G.table;
}
