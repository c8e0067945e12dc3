/*
 * bench_gpu.c — sr_bench_gpu: the CUDA backend's attn_fwd on the paper's prefill shape
 * (bf16, causal, batch 1, 32 q-heads / 8 kv-heads, d = 128) at N = 16K..128K, dense and
 * Block-Sparse-shaped masks, timed with CUDA events (warm-ups, then the median of --reps).
 *
 * Masks: per q-head and q-block row, the Block-Sparse budget K for the target sparsity
 * (sr_block_sparse_budget, the same rule as the runtime), then min(causal blocks, K) blocks:
 * block 0, the diagonal, the block below it and random others (as the method's forced +inf
 * entries and top-k choose). Sparsity 0 lists every causal block. Each mask is also written as
 * a CSR file (--masks DIR) so bench/gpu/peers.py times FlexAttention on exactly the same
 * blocks; at each N the inputs are random (never zeros) and several times the L2 size.
 *
 * Reported per configuration: the kernel time (events around the kernel launch alone; the
 * peers' mask metadata is also built outside their timed call), the time of the whole
 * attn_fwd call (which also uploads the CSR lists), effective TFLOP/s (dense causal FLOPs
 * 4*N^2*d/2 per q-head over the time) and sparse-aware TFLOP/s (4*d FLOPs per visible
 * (query, key) pair of the listed blocks). Output: a '#' header, aligned columns, and JSON.
 *
 * Usage: sr_bench_gpu [--n 16384,32768,...] [--sparsity 0,0.5,0.9,0.95] [--block 64,128]
 *                     [--kernel auto|ws|wgmma|mma|generic] [--reps 10] [--masks DIR]
 *                     [--mask-block 128] [--json FILE] [--small-block-max-n 32768]
 *                     [--order auto|qblocks|heads]
 * Blocks below 128 run only up to --small-block-max-n (their CSR lists grow as 1/block^2 and
 * building them dominates the run at 128K; the shorter Ns are enough to pick the block size).
 * --order forces the CTA order of the kernels (sr_cuda.h; auto: heads for sparse lists).
 */
#include "kernels.h"
#include "sr_attend.h"
#include "sr_cuda.h"
#include "sr_internal.h"
#include "sr_select.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define QH 32
#define KVH 8
#define HD 128
#define MAXV 16

static int parse_list(const char *s, double *v) {
  int n = 0;
  while (*s && n < MAXV) {
    char *end;
    v[n++] = strtod(s, &end);
    s = *end == ',' ? end + 1 : end;
    if (end == s && *s) break;
  }
  return n;
}

static void die(const char *what) {
  fprintf(stderr, "sr_bench_gpu: %s: %s\n", what, sr_last_error());
  exit(1);
}
#define TRY(call, what)                                                                            \
  do {                                                                                             \
    if ((call) != SR_OK) die(what);                                                                \
  } while (0)

static uint64_t rng = 0x5eed;
static uint64_t next_u64(void) {
  uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* A mask as CSR over (q-head, q-block) rows of key-block ids, ascending. */
typedef struct mask {
  int64_t n, nqb, nnz;
  int block, kbudget;
  int64_t *row_ptr; /* [QH*nqb + 1] */
  int32_t *col;     /* [nnz] */
  double pairs;     /* visible (query, key) pairs over all heads */
} mask;

static void mask_build(mask *mk, int64_t n, int b, double sparsity) {
  const int64_t nqb = n / b;
  mk->n = n, mk->nqb = nqb, mk->block = b;
  mk->kbudget = sparsity > 0 ? sr_block_sparse_budget(nqb, sparsity) : (int)nqb;
  mk->row_ptr = malloc(((size_t)QH * nqb + 1) * sizeof(int64_t));
  int64_t cap = 0;
  for (int64_t m = 0; m < nqb; m++) cap += m + 1 < mk->kbudget ? m + 1 : mk->kbudget;
  cap *= QH;
  mk->col = malloc((size_t)(cap > 0 ? cap : 1) * sizeof(int32_t));
  char *take = calloc((size_t)nqb, 1);
  if (!mk->row_ptr || !mk->col || !take) {
    fprintf(stderr, "sr_bench_gpu: out of memory for a mask of %lld entries\n", (long long)cap);
    exit(1);
  }
  mk->row_ptr[0] = 0;
  mk->pairs = 0;
  int64_t e = 0;
  for (int h = 0; h < QH; h++)
    for (int64_t m = 0; m < nqb; m++) {
      const int64_t ncausal = m + 1, want = ncausal < mk->kbudget ? ncausal : mk->kbudget;
      int64_t got = 0;
      if (want == ncausal) {
        for (int64_t j = 0; j < ncausal; j++) mk->col[e++] = (int32_t)j;
        got = want;
      } else {
        memset(take, 0, (size_t)ncausal);
        const int64_t forced[3] = {0, m, m - 1};
        for (int i = 0; i < 3; i++)
          if (forced[i] >= 0 && !take[forced[i]]) take[forced[i]] = 1, got++;
        while (got < want) {
          const int64_t j = (int64_t)(next_u64() % (uint64_t)ncausal);
          if (!take[j]) take[j] = 1, got++;
        }
        for (int64_t j = 0; j < ncausal; j++)
          if (take[j]) mk->col[e++] = (int32_t)j;
      }
      mk->row_ptr[(int64_t)h * nqb + m + 1] = e;
      for (int64_t x = mk->row_ptr[(int64_t)h * nqb + m]; x < e; x++)
        mk->pairs += (double)sr_block_pairs(m * b, b, (int64_t)mk->col[x] * b, b);
    }
  mk->nnz = e;
  free(take);
}

static void mask_free(mask *mk) {
  free(mk->row_ptr);
  free(mk->col);
  memset(mk, 0, sizeof *mk);
}

/* CSR file for peers.py: int64 header {magic, n, q_heads, block, nqb, nnz}, row_ptr, col. */
static void mask_write(const mask *mk, const char *dir, double sparsity) {
  char path[4096];
  snprintf(path, sizeof path, "%s/mask_n%lld_b%d_s%.2f.csr", dir, (long long)mk->n, mk->block,
           sparsity);
  FILE *f = fopen(path, "wb");
  if (!f) {
    fprintf(stderr, "sr_bench_gpu: %s: %s\n", path, strerror(errno));
    exit(1);
  }
  const int64_t hdr[6] = {0x5352435352ll, mk->n, QH, mk->block, mk->nqb, mk->nnz};
  fwrite(hdr, sizeof hdr, 1, f);
  fwrite(mk->row_ptr, sizeof(int64_t), (size_t)QH * mk->nqb + 1, f);
  fwrite(mk->col, sizeof(int32_t), (size_t)mk->nnz, f);
  if (fclose(f) != 0) {
    fprintf(stderr, "sr_bench_gpu: writing %s failed\n", path);
    exit(1);
  }
}

static int cmp_float(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Fills n storage elements of dst with random values, a chunk of host randoms at a time. */
static void fill_random(const sr_backend *be, void *dst, size_t n, const float *buf, size_t buf_n) {
  for (size_t off = 0; off < n; off += buf_n) {
    const size_t m = n - off < buf_n ? n - off : buf_n;
    TRY(be->store((char *)dst + off * be->elem_bytes, buf + (off / buf_n % 7) * 1031 % 4096, m),
        "store");
  }
}

int main(int argc, char **argv) {
  double ns[MAXV] = {16384, 32768, 65536, 131072}, sps[MAXV] = {0, 0.5, 0.9, 0.95},
         blocks[MAXV] = {64, 128};
  int nn = 4, nsp = 4, nb = 2, reps = 10, forced = SR_CUDA_ATTN_AUTO, mask_block = 128;
  int order = SR_CUDA_ORDER_AUTO;
  int64_t small_max_n = 32768;
  const char *json_path = NULL, *mask_dir = NULL;
  static const struct option opts[] = {
      {"n", required_argument, 0, 'n'},         {"sparsity", required_argument, 0, 's'},
      {"block", required_argument, 0, 'b'},     {"kernel", required_argument, 0, 'k'},
      {"reps", required_argument, 0, 'r'},      {"masks", required_argument, 0, 'm'},
      {"mask-block", required_argument, 0, 'B'}, {"json", required_argument, 0, 'j'},
      {"small-block-max-n", required_argument, 0, 'S'}, {"order", required_argument, 0, 'o'},
      {0, 0, 0, 0}};
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (c) {
    case 'n': nn = parse_list(optarg, ns); break;
    case 's': nsp = parse_list(optarg, sps); break;
    case 'b': nb = parse_list(optarg, blocks); break;
    case 'r': reps = atoi(optarg) > 0 ? atoi(optarg) : 10; break;
    case 'm': mask_dir = optarg; break;
    case 'B': mask_block = atoi(optarg); break;
    case 'j': json_path = optarg; break;
    case 'S': small_max_n = atoll(optarg); break;
    case 'o':
      order = !strcmp(optarg, "qblocks") ? SR_CUDA_ORDER_QBLOCKS
              : !strcmp(optarg, "heads") ? SR_CUDA_ORDER_HEADS
              : !strcmp(optarg, "auto")  ? SR_CUDA_ORDER_AUTO
                                         : -1;
      if (order < 0) {
        fprintf(stderr, "sr_bench_gpu: --order: auto, qblocks or heads, not '%s'\n", optarg);
        return 2;
      }
      break;
    case 'k':
      forced = !strcmp(optarg, "mma")       ? SR_CUDA_ATTN_MMA
               : !strcmp(optarg, "wgmma")   ? SR_CUDA_ATTN_WGMMA
               : !strcmp(optarg, "ws")      ? SR_CUDA_ATTN_WS
               : !strcmp(optarg, "generic") ? SR_CUDA_ATTN_GENERIC
                                            : SR_CUDA_ATTN_AUTO;
      break;
    default:
      fprintf(stderr, "usage: see the comment at the top of bench/gpu/bench_gpu.c\n");
      return 2;
    }
  }
  const sr_backend *be = sr_backend_cuda(0);
  if (!be) {
    fprintf(stderr, "sr_bench_gpu: skipped: %s\n", sr_last_error());
    return 77;
  }
  if (mask_dir) mkdir(mask_dir, 0755);
  sr__cuda_attn_force(forced);
  sr__cuda_attn_order(order);
  sr__cuda_attn_timing(1);
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, sr__cuda_device());
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  printf("# sr_bench_gpu: %s (%d SMs, %.0f MB L2), driver API %d, runtime %d, wgmma %s\n",
         prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, drv, rt,
         sr__cuda_have_wgmma() ? "yes" : "no");
  printf("# bf16, causal, %d q-heads / %d kv-heads, d=%d, warm-up 2, median of %d\n", QH, KVH, HD,
         reps);
  printf("%7s %5s %6s %6s %8s %7s %9s %9s %8s %8s %9s\n", "N", "block", "spars", "kept", "kernel",
         "order",
         "kern_ms", "call_ms", "eff_TF", "sp_TF", "call_spTF");

  cJSON *root = cJSON_CreateObject(), *runs = cJSON_AddArrayToObject(root, "runs");
  cJSON_AddStringToObject(root, "benchmark", "sr_bench_gpu");
  cJSON_AddStringToObject(root, "device", prop.name);
  cJSON_AddNumberToObject(root, "sm_count", prop.multiProcessorCount);
  cJSON_AddNumberToObject(root, "cuda_driver_api", drv);
  cJSON_AddNumberToObject(root, "cuda_runtime", rt);
  cJSON_AddBoolToObject(root, "wgmma_built", sr__cuda_have_wgmma());
  cJSON_AddNumberToObject(root, "q_heads", QH);
  cJSON_AddNumberToObject(root, "kv_heads", KVH);
  cJSON_AddNumberToObject(root, "d", HD);
  cJSON_AddNumberToObject(root, "reps", reps);

  const size_t buf_n = (size_t)1 << 24;
  float *buf = malloc((buf_n + 4096) * sizeof(float));
  if (!buf) return 1;
  for (size_t i = 0; i < buf_n + 4096; i++)
    buf[i] = (float)((double)(next_u64() >> 11) * 0x1.0p-53 * 3.0 - 1.5);
  float *times = malloc((size_t)reps * sizeof(float)), *ctimes = malloc((size_t)reps * sizeof(float));
  cudaEvent_t ev0, ev1;
  cudaEventCreate(&ev0);
  cudaEventCreate(&ev1);

  for (int in = 0; in < nn; in++) {
    const int64_t n = (int64_t)ns[in];
    const size_t qn = (size_t)QH * n * HD, kn = (size_t)KVH * n * HD;
    void *q, *k, *v;
    float *out, *lse;
    TRY(be->alloc(qn * be->elem_bytes, &q), "alloc q");
    TRY(be->alloc(kn * be->elem_bytes, &k), "alloc k");
    TRY(be->alloc(kn * be->elem_bytes, &v), "alloc v");
    TRY(be->alloc(qn * sizeof(float), (void **)&out), "alloc out");
    TRY(be->alloc((size_t)QH * n * sizeof(float), (void **)&lse), "alloc lse");
    fill_random(be, q, qn, buf, buf_n);
    fill_random(be, k, kn, buf + 17, buf_n);
    fill_random(be, v, kn, buf + 29, buf_n);
    for (int ib = 0; ib < nb; ib++) {
      const int b = (int)blocks[ib];
      if (b < 128 && n > small_max_n) continue;
      const int64_t nqb = n / b, nkb = n / b;
      int64_t *qpos = malloc((size_t)nqb * sizeof(int64_t)), *kpos = NULL;
      int32_t *slot = NULL;
      for (int64_t m = 0; m < nqb; m++) qpos[m] = m * b;
      for (int is = 0; is < nsp; is++) {
        mask mk;
        mask_build(&mk, n, b, sps[is]);
        if (mask_dir && b == mask_block) mask_write(&mk, mask_dir, sps[is]);
        kpos = realloc(kpos, (size_t)(mk.nnz + 1) * sizeof(int64_t));
        slot = realloc(slot, (size_t)(mk.nnz + 1) * sizeof(int32_t));
        for (int h = 0; h < QH; h++)
          for (int64_t x = mk.row_ptr[(int64_t)h * nqb]; x < mk.row_ptr[(int64_t)(h + 1) * nqb]; x++) {
            kpos[x] = (int64_t)mk.col[x] * b;
            slot[x] = (int32_t)((h / (QH / KVH)) * nkb + mk.col[x]); /* the shard's slot layout */
          }
        const sr_attn_args a = {.q_heads = QH, .d = HD, .bq = b, .bk = b, .nqb = (int)nqb,
                                .nq = n, .q = q, .qpos = qpos, .k = k, .v = v,
                                .row_ptr = mk.row_ptr, .slot = slot, .kpos = kpos,
                                .kv_limit = n, .scale = 1.0f / sqrtf((float)HD), .out = out,
                                .lse = lse, .kv_rows = (int64_t)KVH * n};
        for (int w = 0; w < 2; w++) TRY(be->attn_fwd(&a), "attn_fwd");
        TRY(be->sync(), "sync");
        for (int r = 0; r < reps; r++) {
          cudaEventRecord(ev0, sr__cuda_compute_stream());
          TRY(be->attn_fwd(&a), "attn_fwd");
          cudaEventRecord(ev1, sr__cuda_compute_stream());
          TRY(be->sync(), "sync");
          times[r] = sr__cuda_attn_kernel_ms();
          cudaEventElapsedTime(&ctimes[r], ev0, ev1);
        }
        qsort(times, (size_t)reps, sizeof(float), cmp_float);
        qsort(ctimes, (size_t)reps, sizeof(float), cmp_float);
        const double ms = times[reps / 2], cms = ctimes[reps / 2];
        const double eff = 4.0 * (double)n * (double)n * HD / 2 * QH / (ms * 1e-3) * 1e-12;
        const double spf = 4.0 * mk.pairs * HD / (ms * 1e-3) * 1e-12;
        const double cspf = 4.0 * mk.pairs * HD / (cms * 1e-3) * 1e-12;
        const double kept = mk.pairs / ((double)n * (double)(n + 1) / 2 * QH);
        const char *kname = sr__cuda_attn_name(sr__cuda_attn_last());
        const char *oname = sr__cuda_attn_order_last() == SR_CUDA_ORDER_HEADS ? "heads" : "qblocks";
        printf("%7lld %5d %6.2f %6.3f %8s %7s %9.3f %9.3f %8.1f %8.1f %9.1f\n", (long long)n, b,
               sps[is], kept, kname, oname, ms, cms, eff, spf, cspf);
        fflush(stdout);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "n", (double)n);
        cJSON_AddNumberToObject(o, "block", b);
        cJSON_AddNumberToObject(o, "sparsity_target", sps[is]);
        cJSON_AddNumberToObject(o, "topk_budget", mk.kbudget);
        cJSON_AddNumberToObject(o, "density_pairs", kept);
        cJSON_AddNumberToObject(o, "nnz_blocks", (double)mk.nnz);
        cJSON_AddStringToObject(o, "kernel", kname);
        cJSON_AddStringToObject(o, "cta_order", oname);
        cJSON_AddNumberToObject(o, "kernel_ms", ms);
        cJSON_AddNumberToObject(o, "call_ms", cms);
        cJSON_AddNumberToObject(o, "kernel_ms_min", times[0]);
        cJSON_AddNumberToObject(o, "kernel_ms_max", times[reps - 1]);
        cJSON_AddNumberToObject(o, "effective_tflops", eff);
        cJSON_AddNumberToObject(o, "sparse_tflops", spf);
        cJSON_AddNumberToObject(o, "call_sparse_tflops", cspf);
        cJSON_AddItemToArray(runs, o);
        mask_free(&mk);
      }
      free(qpos);
      free(kpos);
      free(slot);
    }
    be->free(q), be->free(k), be->free(v), be->free(out), be->free(lse);
  }
  if (json_path) {
    char *txt = cJSON_Print(root);
    FILE *f = fopen(json_path, "w");
    if (!f || fputs(txt, f) < 0 || fclose(f) != 0) {
      fprintf(stderr, "sr_bench_gpu: cannot write %s\n", json_path);
      return 1;
    }
    free(txt);
  }
  cJSON_Delete(root);
  free(buf), free(times), free(ctimes);
  return 0;
}
