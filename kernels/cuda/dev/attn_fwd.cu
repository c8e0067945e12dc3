/*
 * dev/attn_fwd.cu — the attention kernel ladder (llm.c dev/cuda style).
 *
 * Every version of sr_attn_kernels.cuh is first validated against a float64 CPU reference on
 * fresh random bf16 inputs (outputs poisoned with NaN before each run, K/V past the sequence
 * end poisoned too), then timed with CUDA events (2 warm-ups, median of 10) on the benchmark
 * shape: causal, 32 q-heads / 8 kv-heads, d = 128, dense and Block-Sparse-shaped masks.
 *
 *   1  generic   one warp per query row, fp32 SIMT
 *   2  mma       mma.sync m16n8k16 + ldmatrix, K and V loaded together, no overlap
 *   3  mma+pipe  the same with FlashAttention-2's cp.async schedule (production fallback)
 *   4  wgmma     Hopper warpgroup MMA, double-buffered K/V
 *   5  wgmma+ovl FlashAttention-3's intra-warpgroup overlap: block j's softmax runs while the
 *                tensor cores compute P_{j-1}.V_{j-1}
 *   6  persist   v5 made persistent (one CTA per SM streams the entries of its rows), so a row's
 *                prologue overlaps the previous row's tail
 *   7  ovl+3st   v5 with three K/V stages: blocks are prefetched two iterations ahead
 *   8  ws        v7 warp-specialised (attn_ws.cuh): a producer warpgroup loads, mbarriers per
 *                stage instead of CTA barriers, ping-pong of the two consumer warpgroups;
 *                bq = bk = d = 128 only
 *   9  ws2st     v8 with two K/V stages
 *  10  ws-nopp   v8 without the ping-pong (the consumers issue their GEMMs when ready)
 *  11  tma       v8 with whole Q/K/V tiles loaded by TMA (one thread, 128-byte swizzle boxes);
 *                partial tiles stay on cp.async
 *  12  tma2st    v11 with two stages
 *  13  tma-nopp  v11 without the ping-pong
 *
 * Build: make -C kernels/cuda/dev   Run: ./attn_fwd [versions, e.g. 5,7 (0: all)] [N ...]
 * Output: one line per (version, config), then a table; exit 1 if any validation failed.
 */
#include "../sr_attn_kernels.cuh"
#include "../sr_attn_ws.cuh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(call)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));       \
      exit(2);                                                                                     \
    }                                                                                              \
  } while (0)

static uint64_t rng = 0x1234;
static uint64_t next_u64(void) {
  uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static float uniform(void) { return (float)((double)(next_u64() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }

static uint16_t f2bf(float f) { /* round to nearest even; NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* A problem: bf16 inputs on host and device, CSR lists, outputs. */
struct problem {
  int qh, kvh, d, bq, bk, nqb;
  int64_t n, nkb;
  std::vector<uint16_t> q, k, v; /* q [qh][n][d]; k, v [kvh][nkb*bk][d], NaN past n */
  std::vector<int64_t> qpos, row_ptr, kpos;
  std::vector<int32_t> slot;
  double pairs; /* visible (query, key) pairs over the listed blocks */
  sr_bf16 *dq, *dk, *dv;
  int64_t *dqpos, *drow_ptr, *dkpos;
  int32_t *dslot;
  float *dout, *dlse;
};

/* Block-Sparse-shaped lists: block 0, the diagonal, the block below, and random others until
 * a fraction `density` of the causal blocks of the row is listed (all of them at 1). */
static void build(problem &p, int qh, int kvh, int d, int bq, int bk, int64_t n, double density) {
  p.qh = qh, p.kvh = kvh, p.d = d, p.bq = bq, p.bk = bk, p.n = n;
  p.nqb = (int)((n + bq - 1) / bq);
  p.nkb = (n + bk - 1) / bk;
  const int64_t npad = p.nkb * bk;
  p.q.resize((size_t)qh * n * d);
  p.k.resize((size_t)kvh * npad * d);
  p.v.resize((size_t)kvh * npad * d);
  for (auto &x : p.q) x = f2bf(1.5f * uniform());
  for (int g = 0; g < kvh; g++)
    for (int64_t t = 0; t < npad; t++)
      for (int c = 0; c < d; c++) {
        const size_t i = ((size_t)g * npad + t) * d + c;
        p.k[i] = t < n ? f2bf(1.5f * uniform()) : 0x7fc0;
        p.v[i] = t < n ? f2bf(uniform()) : 0x7fc0;
      }
  p.qpos.resize(p.nqb);
  for (int m = 0; m < p.nqb; m++) p.qpos[m] = (int64_t)m * bq;
  p.row_ptr.assign((size_t)qh * p.nqb + 1, 0);
  p.kpos.clear();
  p.slot.clear();
  p.pairs = 0;
  std::vector<int64_t> pick;
  std::vector<char> take(p.nkb);
  for (int h = 0; h < qh; h++)
    for (int m = 0; m < p.nqb; m++) {
      const int64_t qf = p.qpos[m], ql = std::min<int64_t>(qf + bq, n) - 1;
      const int64_t diag = ql / bk, ncausal = diag + 1;
      int64_t want = (int64_t)(density * (double)ncausal + 0.999999);
      if (want < std::min<int64_t>(3, ncausal)) want = std::min<int64_t>(3, ncausal);
      std::fill(take.begin(), take.end(), 0);
      int64_t got = 0;
      for (int64_t b : {(int64_t)0, diag, diag - 1})
        if (b >= 0 && !take[b]) take[b] = 1, got++;
      if (want >= ncausal)
        for (int64_t b = 0; b < ncausal; b++) got += !take[b], take[b] = 1;
      while (got < want) {
        const int64_t b = (int64_t)(next_u64() % (uint64_t)ncausal);
        if (!take[b]) take[b] = 1, got++;
      }
      for (int64_t b = 0; b < ncausal; b++)
        if (take[b]) {
          p.kpos.push_back(b * bk);
          p.slot.push_back((int32_t)((h / (qh / kvh)) * p.nkb + b));
          for (int64_t i = qf; i <= ql; i++) {
            const int64_t vis = std::min<int64_t>(std::min<int64_t>(i - b * bk + 1, bk), n - b * bk);
            if (vis > 0) p.pairs += (double)vis;
          }
        }
      p.row_ptr[(size_t)h * p.nqb + m + 1] = (int64_t)p.kpos.size();
    }
  const size_t nnz = p.kpos.size() ? p.kpos.size() : 1;
  CK(cudaMalloc(&p.dq, p.q.size() * 2));
  CK(cudaMalloc(&p.dk, p.k.size() * 2));
  CK(cudaMalloc(&p.dv, p.v.size() * 2));
  CK(cudaMalloc(&p.dqpos, p.qpos.size() * 8));
  CK(cudaMalloc(&p.drow_ptr, p.row_ptr.size() * 8));
  CK(cudaMalloc(&p.dkpos, nnz * 8));
  CK(cudaMalloc(&p.dslot, nnz * 4));
  CK(cudaMalloc(&p.dout, (size_t)qh * n * d * 4));
  CK(cudaMalloc(&p.dlse, (size_t)qh * n * 4));
  CK(cudaMemcpy(p.dq, p.q.data(), p.q.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.dk, p.k.data(), p.k.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.dv, p.v.data(), p.v.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.dqpos, p.qpos.data(), p.qpos.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.drow_ptr, p.row_ptr.data(), p.row_ptr.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.dkpos, p.kpos.data(), p.kpos.size() * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(p.dslot, p.slot.data(), p.slot.size() * 4, cudaMemcpyHostToDevice));
}

static void release(problem &p) {
  cudaFree(p.dq), cudaFree(p.dk), cudaFree(p.dv), cudaFree(p.dqpos), cudaFree(p.drow_ptr);
  cudaFree(p.dkpos), cudaFree(p.dslot), cudaFree(p.dout), cudaFree(p.dlse);
}

static sr_attn_dev dev_args(const problem &p) {
  sr_attn_dev a;
  a.q_heads = p.qh, a.d = p.d, a.bq = p.bq, a.bk = p.bk, a.nqb = p.nqb;
  a.head_major = 0; /* the ladder's measurements were taken in this order */
  a.nq = p.n, a.kv_limit = p.n;
  a.sl2 = (float)(1.0 / sqrt((double)p.d)) * SR_LOG2E;
  a.q = p.dq, a.k = p.dk, a.v = p.dv;
  a.qpos = p.dqpos, a.row_ptr = p.drow_ptr, a.kpos = p.dkpos, a.slot = p.dslot;
  a.out = p.dout, a.lse = p.dlse;
  return a;
}

/* Launches version ver on p; false if the version does not support the shape. */
static CUtensorMap tensor_map(const void *base, uint64_t rows) {
  CUtensorMap m;
  if (!sr_ws_map(base, rows, &m)) {
    fprintf(stderr, "cannot make a tensor map (driver without cuTensorMapEncodeTiled?)\n");
    exit(2);
  }
  return m;
}

template <int NST, bool PP, bool TMA>
static void launch_ws(const sr_attn_dev &a, unsigned grid, uint64_t kv_rows) {
  static bool set = false;
  const size_t sm = sr_ws_smem_bytes<NST>();
  if (!set) {
    CK(cudaFuncSetAttribute(sr_attn_ws<NST, PP, TMA>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    set = true;
  }
  sr_ws_maps tm;
  memset(&tm, 0, sizeof tm);
  if (TMA) {
    tm.q = tensor_map(a.q, (uint64_t)a.q_heads * (uint64_t)a.nq);
    tm.k = tensor_map(a.k, kv_rows);
    tm.v = tensor_map(a.v, kv_rows);
  }
  sr_attn_ws<NST, PP, TMA><<<grid, 384, sm>>>(a, tm);
}

template <int BQ, int BK, int D>
static void launch_fast(int ver, const sr_attn_dev &a, unsigned grid, uint64_t kv_rows) {
  if (ver == 2) {
    static bool set = false;
    const size_t sm = sr_mma_smem_bytes<BQ, BK, D>();
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_mma<BQ, BK, D, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); set = true; }
    sr_attn_mma<BQ, BK, D, false><<<grid, BQ * 2, sm>>>(a);
  } else if (ver == 3) {
    static bool set = false;
    const size_t sm = sr_mma_smem_bytes<BQ, BK, D>();
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_mma<BQ, BK, D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); set = true; }
    sr_attn_mma<BQ, BK, D, true><<<grid, BQ * 2, sm>>>(a);
  } else if (ver == 6) {
    static bool set = false;
    static int sms = 0;
    const size_t sm = sr_wgmma_persist_smem_bytes<BQ, BK, D>();
    if (!set) {
      CK(cudaFuncSetAttribute(sr_attn_wgmma_persist<BQ, BK, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
      CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
      set = true;
    }
    sr_attn_wgmma_persist<BQ, BK, D><<<std::min<unsigned>(grid, (unsigned)sms), BQ * 2, sm>>>(a, (int)grid);
  } else if (ver >= 8) {
    if constexpr (BQ == 128 && BK == 128 && D == 128) {
      switch (ver) {
      case 8: launch_ws<3, true, false>(a, grid, kv_rows); break;
      case 9: launch_ws<2, true, false>(a, grid, kv_rows); break;
      case 10: launch_ws<3, false, false>(a, grid, kv_rows); break;
      case 11: launch_ws<3, true, true>(a, grid, kv_rows); break;
      case 12: launch_ws<2, true, true>(a, grid, kv_rows); break;
      default: launch_ws<3, false, true>(a, grid, kv_rows); break;
      }
    }
  } else if (ver == 7) {
    static bool set = false;
    const size_t sm = sr_wgmma_pipe_smem_bytes<BQ, BK, D, 3>();
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_wgmma_pipe<BQ, BK, D, 3>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); set = true; }
    sr_attn_wgmma_pipe<BQ, BK, D, 3><<<grid, BQ * 2, sm>>>(a);
  } else if (ver == 5) {
    static bool set = false;
    const size_t sm = sr_wgmma_pipe_smem_bytes<BQ, BK, D>();
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_wgmma_pipe<BQ, BK, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); set = true; }
    sr_attn_wgmma_pipe<BQ, BK, D><<<grid, BQ * 2, sm>>>(a);
  } else {
    static bool set = false;
    const size_t sm = sr_wgmma_smem_bytes<BQ, BK, D>();
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_wgmma<BQ, BK, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); set = true; }
    sr_attn_wgmma<BQ, BK, D><<<grid, BQ * 2, sm>>>(a);
  }
}

static bool launch(int ver, const problem &p) {
  const sr_attn_dev a = dev_args(p);
  const unsigned grid = (unsigned)(p.qh * p.nqb);
  if (ver == 1) {
    static bool set = false;
    if (!set) { CK(cudaFuncSetAttribute(sr_attn_generic, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024)); set = true; }
    sr_attn_generic<<<grid, SR_GEN_WARPS * 32, SR_GEN_WARPS * 2 * p.d * 4>>>(a);
    CK(cudaGetLastError());
    return true;
  }
#define CASE(BQ, BK, D) \
  if (p.bq == BQ && p.bk == BK && p.d == D) { launch_fast<BQ, BK, D>(ver, a, grid, (uint64_t)p.kvh * p.nkb * p.bk); CK(cudaGetLastError()); return true; }
  CASE(64, 64, 64) CASE(64, 64, 128) CASE(64, 128, 64) CASE(64, 128, 128)
  CASE(128, 64, 64) CASE(128, 64, 128) CASE(128, 128, 64) CASE(128, 128, 128)
#undef CASE
  return false;
}

/* Float64 reference of one (head, row) over the listed blocks; returns lse (or -inf). */
static double ref_row(const problem &p, int h, int m, int i, double *o) {
  const int64_t qp = p.qpos[m] + i, npad = p.nkb * p.bk;
  const int g = h / (p.qh / p.kvh), d = p.d;
  const double scale = 1.0 / sqrt((double)d);
  const uint16_t *qv = &p.q[((size_t)h * p.n + qp) * d];
  std::vector<double> s;
  std::vector<int64_t> kp;
  double mx = -INFINITY;
  const size_t r = (size_t)h * p.nqb + m;
  for (int64_t e = p.row_ptr[r]; e < p.row_ptr[r + 1]; e++)
    for (int j = 0; j < p.bk; j++) {
      const int64_t t = p.kpos[e] + j;
      if (t > qp || t >= p.n) continue;
      const uint16_t *kv = &p.k[((size_t)g * npad + t) * d];
      double acc = 0;
      for (int c = 0; c < d; c++) acc += (double)bf2f(qv[c]) * bf2f(kv[c]);
      s.push_back(acc * scale);
      kp.push_back(t);
      mx = std::max(mx, acc * scale);
    }
  for (int c = 0; c < d; c++) o[c] = 0;
  if (s.empty()) return -INFINITY;
  double sum = 0;
  for (size_t t = 0; t < s.size(); t++) {
    const double w = exp(s[t] - mx);
    sum += w;
    const uint16_t *vv = &p.v[((size_t)g * npad + kp[t]) * d];
    for (int c = 0; c < d; c++) o[c] += w * bf2f(vv[c]);
  }
  for (int c = 0; c < d; c++) o[c] /= sum;
  return mx + log(sum);
}

/* Float64 reference of every row of p. */
struct reference {
  std::vector<double> out, lse;
};
static void compute_reference(const problem &p, reference &ref) {
  ref.out.resize((size_t)p.qh * p.n * p.d);
  ref.lse.resize((size_t)p.qh * p.n);
  for (int h = 0; h < p.qh; h++)
    for (int64_t row = 0; row < p.n; row++) {
      const size_t x = (size_t)h * p.n + row;
      ref.lse[x] = ref_row(p, h, (int)(row / p.bq), (int)(row % p.bq), &ref.out[x * p.d]);
    }
}

/* Runs version ver once on poisoned outputs and compares every row with the reference. */
static bool validate(int ver, problem &p, const reference &ref, const char *what) {
  CK(cudaMemset(p.dout, 0xff, (size_t)p.qh * p.n * p.d * 4));
  CK(cudaMemset(p.dlse, 0xff, (size_t)p.qh * p.n * 4));
  if (!launch(ver, p)) return true;
  CK(cudaDeviceSynchronize());
  std::vector<float> out((size_t)p.qh * p.n * p.d), lse((size_t)p.qh * p.n);
  CK(cudaMemcpy(out.data(), p.dout, out.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), p.dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0, lerr = 0;
  for (size_t x = 0; x < lse.size(); x++) {
    for (int c = 0; c < p.d; c++) {
      const double o = ref.out[x * p.d + c], df = out[x * p.d + c] - o;
      num += df * df, den += o * o;
      if (out[x * p.d + c] != out[x * p.d + c]) num = INFINITY;
    }
    const double rl = ref.lse[x];
    const double le = std::isinf(rl) ? (lse[x] == rl ? 0 : INFINITY) : fabs(lse[x] - rl);
    if (!(le <= lerr)) lerr = le;
  }
  const double rel = sqrt(num / den);
  const bool ok = rel <= 1e-2 && lerr <= 1e-2;
  printf("check v%d %-8s bq=%3d bk=%3d d=%3d n=%5lld  out relerr %.2e  lse abserr %.2e  %s\n", ver,
         what, p.bq, p.bk, p.d, (long long)p.n, rel, lerr, ok ? "ok" : "FAIL");
  return ok;
}

static double time_ms(int ver, problem &p, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int w = 0; w < 2; w++) launch(ver, p);
  std::vector<float> t;
  for (int r = 0; r < reps; r++) {
    CK(cudaEventRecord(a));
    launch(ver, p);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a), cudaEventDestroy(b);
  return t[t.size() / 2];
}

int main(int argc, char **argv) {
  /* argv[1]: versions to run, comma-separated ("5,7"); 0 or none = all. */
  bool sel[14] = {false};
  bool any = false;
  for (const char *c = argc > 1 ? argv[1] : ""; *c;) {
    const int v = (int)strtol(c, (char **)&c, 10);
    if (v > 0 && v < 14) sel[v] = any = true;
    if (*c == ',') c++;
    else break;
  }
  std::vector<int64_t> ns;
  for (int i = 2; i < argc; i++) ns.push_back(atoll(argv[i]));
  if (ns.empty()) ns = {16384};
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int flag = 0, *dflag;
  CK(cudaMalloc(&dflag, 4));
  sr_attn_wgmma_probe<<<1, 1>>>(dflag);
  CK(cudaMemcpy(&flag, dflag, 4, cudaMemcpyDeviceToHost));
  printf("# device %s, %d SMs, wgmma kernels %s\n", prop.name, prop.multiProcessorCount,
         flag ? "built" : "NOT built (need sm_90a)");
  bool all_ok = true;
  auto wanted = [&](int ver) { return (!any || sel[ver]) && (ver < 4 || flag); };
  /* Validation: every version on every supported shape, dense and sparse, partial blocks;
   * the reference is computed once per problem. */
  for (int bq : {64, 128})
    for (int bk : {64, 128})
      for (int d : {64, 128})
        for (double dens : {1.0, 0.4}) {
          problem p;
          reference ref;
          build(p, 4, 2, d, bq, bk, 500 + (int64_t)(next_u64() % 200), dens);
          compute_reference(p, ref);
          for (int ver = 1; ver <= 13; ver++)
            if (wanted(ver) && (ver > 1 || (bq == 64 && bk == 128)) &&
                (ver < 8 || (bq == 128 && bk == 128 && d == 128)))
              all_ok &= validate(ver, p, ref, dens == 1.0 ? "dense" : "sparse");
          release(p);
        }
  {
    /* More rows (32 heads x 19 q-blocks) than SMs: the persistent kernel's row streaming. */
    problem p;
    reference ref;
    build(p, 32, 8, 64, 64, 64, 1200, 0.5);
    compute_reference(p, ref);
    for (int ver = 2; ver <= 7; ver++)
      if (wanted(ver)) all_ok &= validate(ver, p, ref, "manyrows");
    release(p);
  }
  if (wanted(8) || wanted(9) || wanted(10) || wanted(11) || wanted(12) || wanted(13)) {
    /* v8-v13's shape with more rows than SMs, sparse rows of unequal length, a partial last block. */
    problem p;
    reference ref;
    build(p, 32, 8, 128, 128, 128, 4000 + (int64_t)(next_u64() % 100), 0.5);
    compute_reference(p, ref);
    for (int ver = 8; ver <= 13; ver++)
      if (wanted(ver)) all_ok &= validate(ver, p, ref, "manyrows");
    release(p);
  }
  if (wanted(1)) {
    problem p;
    reference ref;
    build(p, 4, 2, 80, 24, 40, 333, 0.5);
    compute_reference(p, ref);
    all_ok &= validate(1, p, ref, "odd");
    release(p);
  }
  /* Timing on the benchmark shape: one problem per (N, density, bq, bk), every version. */
  printf("%-3s %-9s %6s %4s %4s %5s %9s %9s %9s\n", "ver", "name", "N", "bq", "bk", "dens",
         "ms", "eff_TF", "sparse_TF");
  const char *names[] = {"",        "generic", "mma",     "mma+pipe", "wgmma",
                         "wgmma+ovl", "persist", "ovl+3st", "ws",
                         "ws2st",     "ws-nopp", "tma",     "tma2st",  "tma-nopp"};
  for (int64_t n : ns)
    for (double dens : {1.0, 0.1})
      for (int bq : {64, 128})
        for (int bk : {64, 128}) {
          problem p;
          build(p, 32, 8, 128, bq, bk, n, dens);
          const double dense_flops = 4.0 * (double)n * (double)n * 128 / 2 * 32;
          const double sparse_flops = 4.0 * p.pairs * 128;
          for (int ver = 1; ver <= 13; ver++) {
            if (!wanted(ver)) continue;
            if (ver >= 8 && (bq != 128 || bk != 128)) continue;
            if (ver == 1 && (bq != 64 || bk != 128 || dens != 1.0 || n > 16384)) continue;
            if (ver == 2 && bq != bk) continue;
            const double ms = time_ms(ver, p, ver == 1 ? 3 : 10);
            printf("%-3d %-9s %6lld %4d %4d %5.2f %9.3f %9.1f %9.1f\n", ver, names[ver],
                   (long long)n, bq, bk, dens, ms, dense_flops / ms * 1e-9,
                   sparse_flops / ms * 1e-9);
            fflush(stdout);
          }
          release(p);
        }
  printf("# validation %s\n", all_ok ? "passed" : "FAILED");
  return all_ok ? 0 : 1;
}
