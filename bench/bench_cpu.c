/*
 * bench_cpu.c — sr_bench_cpu: the CPU backend's attention against the machine's sgemm,
 * measured in one run on the same threads (docs/PERFORMANCE.md: always report a ratio to a peer).
 *
 *   1. sgemm GFLOP/s (OpenBLAS cblas_sgemm, square problem): the ceiling of the machine.
 *   2. Dense causal attention GFLOP/s, FLOPs = 4 * N^2 * d / 2 per q-head, and its ratio to
 *      sgemm (goal >= 0.5). Configs: d = 128 and 64, blocks 64x64 and 16x16 (the
 *      Block-Sparse block of the paper), q-heads 8 / kv-heads 2.
 *   3. Block-sparse speedup over dense at sparsity 0.5 / 0.9 / 0.95. Lists have the
 *      Block-Sparse shape (block 0, the diagonal, the block below, random other causal
 *      blocks up to a per-row budget k); k is chosen so that the measured fraction of
 *      computed blocks matches 1 - sparsity. Reported: speedup, the ideal 1/density and
 *      speedup/ideal (goal at 0.9: >= 0.8).
 *
 * Each time is the median of >= 5 timed runs after a warm-up run. Dense and sparse runs of
 * one config are interleaved and sgemm is timed before and after the attention part, so a
 * slow phase of a shared (virtual) machine hits the ratios' numerator and denominator alike. Output: a '#' header
 * (host, threads, versions), aligned columns, then JSON to --json PATH. A '#wrong' column
 * counts sampled rows that differ from a float64 reference (relative error > 1e-4): a fast
 * wrong kernel must not look good.
 */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"
#include "sparsering.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIN_RUNS 5 /* docs/PERFORMANCE.md: median of >= 5 timed runs after warm-up */
#define GOAL_DENSE_RATIO 0.5 /* dense attention / sgemm                      */
#define GOAL_SPARSE_EFF 0.8  /* speedup / ideal at sparsity 0.9               */

#ifdef __clang__
#define SR_CC "clang "
#else
#define SR_CC "gcc "
#endif
#define Q_HEADS 8
#define KV_HEADS 2

/* Command-line options (see usage()). */
typedef struct opts {
  int threads;
  int64_t n;
  int quick;
  int runs;
  const char *json;
} opts;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Median by sorting: robust to the occasional run that a shared machine slows down. */
static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* 64-byte aligned, exits on failure (a benchmark has nothing to recover). */
static void *xalloc(size_t bytes) {
  void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) {
    fprintf(stderr, "sr_bench_cpu: out of memory (%zu bytes)\n", bytes);
    exit(1);
  }
  return p;
}

/* A fixed seed: every run of the benchmark measures the same lists and inputs. */
static uint64_t rng_state = 0x5eed5eedULL;
static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static void fill(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = (float)((double)(rng_next() >> 11) * 0x1.0p-52 - 1.0);
}

/* CPU model from /proc/cpuinfo ("unknown" elsewhere). */
static void cpu_model(char *buf, size_t len) {
  snprintf(buf, len, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) == 0) {
      const char *c = strchr(line, ':');
      if (c) {
        c++;
        while (*c == ' ' || *c == '\t') c++;
        snprintf(buf, len, "%s", c);
        buf[strcspn(buf, "\n")] = '\0';
      }
      break;
    }
  }
  fclose(f);
}

/* ------------------------------------------------------------------------------------------ */
/* sgemm                                                                                       */

/* Times `runs` sgemm calls after one warm-up call into t[]. */
static void bench_sgemm(int64_t m, int runs, double *t) {
  float *a = xalloc((size_t)(m * m) * sizeof(float)), *b = xalloc((size_t)(m * m) * 4);
  float *c = xalloc((size_t)(m * m) * sizeof(float));
  fill(a, (size_t)(m * m));
  fill(b, (size_t)(m * m));
  for (int r = -1; r < runs; r++) { /* r = -1: warm-up */
    const double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)m, (int)m, 1.0f, a,
                (int)m, b, (int)m, 0.0f, c, (int)m);
    if (r >= 0) t[r] = now_s() - t0;
  }
  free(a), free(b), free(c);
}

/* Lets one thread pool's spinning workers go idle before the other pool starts. */
static void settle(void) { nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = 300000000}, NULL); }

/* ------------------------------------------------------------------------------------------ */
/* Attention problem: one rank holding the whole sequence; slot = kv_head * nkb + block.       */

/* Inputs and outputs of one configuration (all 64-byte aligned). */
typedef struct problem {
  int64_t n;
  int d, bq, bk, nqb, nkb;
  float *q, *k, *v, *out, *lse;
  int64_t *qpos;
} problem;

/* One set of work lists over the problem's (q-head, q-block) rows. */
typedef struct csr {
  int64_t *row_ptr, nnz;
  int32_t *slot;
  int64_t *kpos;
} csr;

static void problem_init(problem *p, int64_t n, int d, int bq, int bk) {
  p->n = n, p->d = d, p->bq = bq, p->bk = bk;
  p->nqb = (int)((n + bq - 1) / bq);
  p->nkb = (int)((n + bk - 1) / bk);
  const size_t qn = (size_t)Q_HEADS * n * d, kn = (size_t)KV_HEADS * p->nkb * bk * d;
  p->q = xalloc(qn * 4), p->out = xalloc(qn * 4), p->lse = xalloc((size_t)Q_HEADS * n * 4);
  p->k = xalloc(kn * 4), p->v = xalloc(kn * 4);
  fill(p->q, qn), fill(p->k, kn), fill(p->v, kn);
  p->qpos = xalloc((size_t)p->nqb * sizeof(int64_t));
  for (int m = 0; m < p->nqb; m++) p->qpos[m] = (int64_t)m * bq;
}

static void problem_free(problem *p) {
  free(p->q), free(p->k), free(p->v), free(p->out), free(p->lse), free(p->qpos);
}

static void csr_free(csr *c) { free(c->row_ptr), free(c->slot), free(c->kpos); }

/* Causal key blocks of q-block m: 0 .. last(m). */
static int last_block(const problem *p, int m) {
  int64_t qlast = (int64_t)m * p->bq + p->bq - 1;
  if (qlast > p->n - 1) qlast = p->n - 1;
  return (int)(qlast / p->bk);
}

/*
 * Lists with at most k blocks per row: every causal block when the row has <= k of them,
 * else block 0, the diagonal, the block below it and k-3 random others (sorted). k <= 0
 * means dense.
 */
static void build_csr(const problem *p, int k, csr *c) {
  const int64_t rows = (int64_t)Q_HEADS * p->nqb;
  c->row_ptr = xalloc((size_t)(rows + 1) * sizeof(int64_t));
  c->row_ptr[0] = 0;
  for (int h = 0; h < Q_HEADS; h++)
    for (int m = 0; m < p->nqb; m++) {
      const int64_t r = (int64_t)h * p->nqb + m, nc = last_block(p, m) + 1;
      c->row_ptr[r + 1] = c->row_ptr[r] + (k <= 0 || nc <= k ? nc : k);
    }
  c->nnz = c->row_ptr[rows];
  c->slot = xalloc((size_t)(c->nnz + 1) * sizeof(int32_t));
  c->kpos = xalloc((size_t)(c->nnz + 1) * sizeof(int64_t));
  unsigned char *take = xalloc((size_t)p->nkb + 1);
  for (int h = 0; h < Q_HEADS; h++) {
    const int g = h / (Q_HEADS / KV_HEADS);
    for (int m = 0; m < p->nqb; m++) {
      const int64_t r = (int64_t)h * p->nqb + m;
      const int nc = last_block(p, m) + 1;
      const int cnt = (int)(c->row_ptr[r + 1] - c->row_ptr[r]);
      memset(take, cnt == nc, (size_t)nc);
      if (cnt < nc) {
        /* The forced blocks, then distinct random others (rejection: cnt < nc). */
        int have = 0;
        const int forced[3] = {0, nc - 1, nc - 2};
        for (int f = 0; f < 3; f++)
          if (!take[forced[f]] && have < cnt) take[forced[f]] = 1, have++;
        while (have < cnt) {
          const int b = (int)(rng_next() % (uint64_t)nc);
          if (!take[b]) take[b] = 1, have++;
        }
      }
      int64_t e = c->row_ptr[r];
      for (int b = 0; b < nc; b++)
        if (take[b]) {
          c->slot[e] = (int32_t)(g * p->nkb + b);
          c->kpos[e++] = (int64_t)b * p->bk;
        }
    }
  }
  free(take);
}

/* Total listed blocks for budget k, without building the lists. */
static int64_t count_blocks(const problem *p, int k) {
  int64_t t = 0;
  for (int m = 0; m < p->nqb; m++) {
    const int64_t nc = last_block(p, m) + 1;
    t += k <= 0 || nc <= k ? nc : k;
  }
  return t * Q_HEADS;
}

/* The budget whose density (listed / dense blocks) is closest to the target. Density grows
 * with k, so the scan stops at the first k above the target. */
static int budget_for(const problem *p, double density) {
  const double dense = (double)count_blocks(p, 0);
  int best = 3;
  double best_err = INFINITY;
  for (int k = 3; k <= p->nkb; k++) {
    const double err = fabs(count_blocks(p, k) / dense - density);
    if (err < best_err) best = k, best_err = err;
    if (count_blocks(p, k) / dense > density) break;
  }
  return best;
}

static sr_attn_args args_for(const problem *p, const csr *c) {
  return (sr_attn_args){.q_heads = Q_HEADS, .d = p->d, .bq = p->bq, .bk = p->bk,
                        .nqb = p->nqb, .nq = p->n, .q = p->q, .qpos = p->qpos, .k = p->k,
                        .v = p->v, .row_ptr = c->row_ptr, .slot = c->slot, .kpos = c->kpos,
                        .kv_limit = p->n, .scale = 1.0f / sqrtf((float)p->d), .out = p->out,
                        .lse = p->lse};
}

/* Seconds of one attn_fwd over the lists. */
static double run_attn(const problem *p, const csr *c) {
  const sr_attn_args a = args_for(p, c);
  const double t0 = now_s();
  const sr_status st = sr_backend_cpu()->attn_fwd(&a);
  const double t = now_s() - t0;
  if (st != SR_OK) {
    fprintf(stderr, "sr_bench_cpu: attn_fwd: %s: %s\n", sr_strerror(st), sr_last_error());
    exit(1);
  }
  return t;
}

/* Rows (of `samples` random ones) whose output differs from a float64 reference over the
 * listed blocks by more than 1e-4 relative, or whose lse differs by more than 1e-3. */
static int count_wrong(const problem *p, const csr *c, int samples) {
  const int64_t nbk = (int64_t)p->nkb * p->bk;
  double *s = xalloc((size_t)nbk * sizeof(double)), *o = xalloc((size_t)p->d * 8);
  int64_t *pos = xalloc((size_t)nbk * sizeof(int64_t));
  int wrong = 0;
  for (int t = 0; t < samples; t++) {
    const int h = (int)(rng_next() % Q_HEADS);
    const int64_t row = (int64_t)(rng_next() % (uint64_t)p->n), m = row / p->bq;
    const int64_t rr = (int64_t)h * p->nqb + m;
    const float *qv = p->q + ((size_t)h * p->n + row) * p->d;
    int64_t nv = 0;
    double mx = -INFINITY;
    for (int64_t e = c->row_ptr[rr]; e < c->row_ptr[rr + 1]; e++)
      for (int j = 0; j < p->bk; j++) {
        const int64_t kp = c->kpos[e] + j;
        if (kp > row || kp >= p->n) continue;
        const float *kv = p->k + ((size_t)c->slot[e] * p->bk + j) * p->d;
        double acc = 0;
        for (int x = 0; x < p->d; x++) acc += (double)qv[x] * kv[x];
        s[nv] = acc / sqrt((double)p->d);
        pos[nv++] = ((int64_t)c->slot[e] * p->bk + j);
        if (s[nv - 1] > mx) mx = s[nv - 1];
      }
    double sum = 0, num = 0, den = 0;
    for (int x = 0; x < p->d; x++) o[x] = 0;
    for (int64_t i = 0; i < nv; i++) {
      const double w = exp(s[i] - mx);
      sum += w;
      for (int x = 0; x < p->d; x++) o[x] += w * p->v[(size_t)pos[i] * p->d + x];
    }
    const float *got = p->out + ((size_t)h * p->n + row) * p->d;
    for (int x = 0; x < p->d; x++) {
      const double ref = nv ? o[x] / sum : 0.0;
      num += (got[x] - ref) * (got[x] - ref);
      den += ref * ref;
    }
    const double lref = nv ? mx + log(sum) : -INFINITY;
    const float lgot = p->lse[(size_t)h * p->n + row];
    const int lse_ok = nv ? fabs(lgot - lref) <= 1e-3 : (isinf(lgot) && lgot < 0);
    if (!(sqrt(num / (den > 0 ? den : 1)) <= 1e-4) || !lse_ok) wrong++;
  }
  free(s), free(o), free(pos);
  return wrong;
}

/* ------------------------------------------------------------------------------------------ */

/* --help text; also printed on a bad option. */
static void usage(FILE *f) {
  fprintf(f,
          "usage: sr_bench_cpu [--threads N] [--n N] [--runs R] [--quick] [--json PATH]\n"
          "  --threads N  threads for both OpenBLAS and sparsering (default: OpenMP default)\n"
          "  --n N        sequence length for attention (default 8192)\n"
          "  --runs R     timed runs per measurement, median reported (default 7, min 5)\n"
          "  --quick      small sizes for a smoke run (n 1024, sgemm 512)\n"
          "  --json PATH  where to write the results (default bench/results/cpu_attention.json)\n"
          "Exit status: 0; 2 bad usage; 3 a timed kernel gave a wrong row (float64 check);\n"
          "1 other errors. Speed goals are reported in the output, not in the exit status.\n");
}

/* getopt_long; returns 0, or the exit code 2 after printing why. */
static int parse(int argc, char **argv, opts *o) {
  static const struct option longopts[] = {
      {"threads", required_argument, NULL, 't'}, {"n", required_argument, NULL, 'n'},
      {"runs", required_argument, NULL, 'r'},    {"quick", no_argument, NULL, 'q'},
      {"json", required_argument, NULL, 'j'},    {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  *o = (opts){.threads = 0, .n = 0, .runs = 7,
              .json = "bench/results/cpu_attention.json"};
  int ch;
  char *end;
  while ((ch = getopt_long(argc, argv, "t:n:r:qj:h", longopts, NULL)) != -1) {
    switch (ch) {
    case 't':
      o->threads = (int)strtol(optarg, &end, 10);
      if (*end || o->threads < 1) return fprintf(stderr, "--threads: bad value\n"), 2;
      break;
    case 'n':
      o->n = strtoll(optarg, &end, 10);
      if (*end || o->n < 64) return fprintf(stderr, "--n: need an integer >= 64\n"), 2;
      break;
    case 'r':
      o->runs = (int)strtol(optarg, &end, 10);
      if (*end || o->runs < MIN_RUNS || o->runs > 64)
        return fprintf(stderr, "--runs: need %d..64\n", MIN_RUNS), 2;
      break;
    case 'q': o->quick = 1; break;
    case 'j': o->json = optarg; break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc) return fprintf(stderr, "unexpected argument '%s'\n", argv[optind]), 2;
  if (o->n == 0) o->n = o->quick ? 1024 : 8192;
  return 0;
}

/* mkdir -p of the directory part of path. */
static void make_parent_dirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *s = buf + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      if (mkdir(buf, 0775) != 0 && errno != EEXIST) return;
      *s = '/';
    }
}

/* One run: header, sgemm, attention configs, tables, JSON. OpenBLAS, OpenMP and the
 * backend get the same thread count so the ratio compares the same cores. */
int main(int argc, char **argv) {
  opts o;
  const int pr = parse(argc, argv, &o);
  if (pr) return pr;
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  sr_cpu_set_threads(threads);

  char host[256];
  cpu_model(host, sizeof host);
  const char *blas = openblas_get_config();
  printf("# sr_bench_cpu: sparsering %s CPU attention vs sgemm, same threads, same run\n",
         sr_version());
  printf("# host      %s (%ld online cpus)\n", host, sysconf(_SC_NPROCESSORS_ONLN));
  printf("# threads   %d\n", threads);
  printf("# compiler  %s%s, kernels %s (chosen at run time; SR_CPU_PATH forces one)\n", SR_CC,
         __VERSION__, sr_cpu_kernel_path());
  printf("# openblas  %s\n", blas ? blas : OPENBLAS_VERSION);
  printf("# attention q_heads %d, kv_heads %d, fp32, causal; FLOPs = 4*N^2*d/2 per q-head;"
         " median of %d runs after warm-up\n#\n",
         Q_HEADS, KV_HEADS, o.runs);

  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "benchmark", "sr_bench_cpu");
  cJSON_AddStringToObject(root, "sparsering_version", sr_version());
  cJSON_AddStringToObject(root, "host_cpu", host);
  cJSON_AddNumberToObject(root, "threads", threads);
  cJSON_AddStringToObject(root, "compiler", SR_CC __VERSION__);
  cJSON_AddStringToObject(root, "kernels_simd", sr_cpu_kernel_path());
  cJSON_AddNumberToObject(root, "q_heads", Q_HEADS);
  cJSON_AddNumberToObject(root, "kv_heads", KV_HEADS);
  cJSON_AddNumberToObject(root, "goal_dense_ratio_to_sgemm", GOAL_DENSE_RATIO);
  cJSON_AddNumberToObject(root, "goal_speedup_over_ideal_at_0.9", GOAL_SPARSE_EFF);
  cJSON_AddStringToObject(root, "openblas", blas ? blas : OPENBLAS_VERSION);
  cJSON_AddNumberToObject(root, "runs", o.runs);
  {
    char stamp[64];
    time_t tt = time(NULL);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
    cJSON_AddStringToObject(root, "date_utc", stamp);
  }

  /* 1. sgemm, measured before and after the attention part; the median of both blocks is
   * the reference, so a slow phase of a shared machine does not bias the ratio one way. */
  const int64_t gm = o.quick ? 512 : 2048;
  double gt[128];
  bench_sgemm(gm, o.runs, gt);
  settle();

  /* 2 and 3. Per config: dense and every sparse level share the inputs, and their timed runs
   * are interleaved (dense, s1, s2, s3, dense, ...) so speedups compare like with like. */
  const struct { int d, bq, bk; } cfg[] = {{128, 64, 64}, {64, 64, 64}, {128, 16, 16},
                                           {64, 16, 16}};
  enum { NCFG = sizeof cfg / sizeof cfg[0], NSP = 3, NL = NSP + 1 };
  const double sparsity[NSP] = {0.5, 0.9, 0.95};
  double tmed[NCFG][NL], dens[NCFG][NL];
  int64_t blocks[NCFG][NL];
  int budget[NCFG][NL], wrong[NCFG][NL];
  for (int i = 0; i < NCFG; i++) {
    problem p;
    problem_init(&p, o.n, cfg[i].d, cfg[i].bq, cfg[i].bk);
    const double dense_blocks = (double)count_blocks(&p, 0);
    csr c[NL];
    for (int l = 0; l < NL; l++) {
      budget[i][l] = l == 0 ? 0 : budget_for(&p, 1.0 - sparsity[l - 1]);
      build_csr(&p, budget[i][l], &c[l]);
      blocks[i][l] = c[l].nnz;
      dens[i][l] = (double)c[l].nnz / dense_blocks;
      run_attn(&p, &c[l]); /* warm-up */
    }
    double t[NL][64];
    for (int r = 0; r < o.runs; r++)
      for (int l = 0; l < NL; l++) t[l][r] = run_attn(&p, &c[l]);
    for (int l = 0; l < NL; l++) {
      tmed[i][l] = median(t[l], o.runs);
      run_attn(&p, &c[l]); /* fresh output of this list for the check */
      wrong[i][l] = count_wrong(&p, &c[l], 32);
      csr_free(&c[l]);
    }
    problem_free(&p);
  }
  settle();
  bench_sgemm(gm, o.runs, gt + o.runs);
  const double gt_med = median(gt, 2 * o.runs);
  const double sgemm = 2.0 * (double)gm * gm * gm / gt_med * 1e-9;

  printf("# sgemm (cblas_sgemm, row-major NN; median of %d runs before and after)\n"
         "#%7s %7s %7s %10s %9s\n", 2 * o.runs, "m", "n", "k", "time(ms)", "GFLOP/s");
  printf(" %7lld %7lld %7lld %10.2f %9.1f\n#\n", (long long)gm, (long long)gm, (long long)gm,
         gt_med * 1e3, sgemm);
  cJSON *js = cJSON_AddObjectToObject(root, "sgemm");
  cJSON_AddNumberToObject(js, "m", (double)gm);
  cJSON_AddNumberToObject(js, "n", (double)gm);
  cJSON_AddNumberToObject(js, "k", (double)gm);
  cJSON_AddNumberToObject(js, "time_s", gt_med);
  cJSON_AddNumberToObject(js, "gflops", sgemm);
  cJSON_AddNumberToObject(js, "gflops_before", 2.0 * (double)gm * gm * gm / median(gt, o.runs) * 1e-9);
  cJSON_AddNumberToObject(js, "gflops_after",
                          2.0 * (double)gm * gm * gm / median(gt + o.runs, o.runs) * 1e-9);

  cJSON *jd = cJSON_AddArrayToObject(root, "dense");
  cJSON *jsp = cJSON_AddArrayToObject(root, "sparse");
  printf("# dense causal attention\n#%6s %4s %4s %4s %8s %10s %9s %9s %7s\n", "N", "d", "bq",
         "bk", "blocks", "time(ms)", "GFLOP/s", "/sgemm", "#wrong");
  for (int i = 0; i < NCFG; i++) {
    const double flops = 4.0 * (double)o.n * o.n * cfg[i].d / 2 * Q_HEADS, t = tmed[i][0];
    printf(" %6lld %4d %4d %4d %8lld %10.2f %9.1f %9.3f %7d\n", (long long)o.n, cfg[i].d,
           cfg[i].bq, cfg[i].bk, (long long)blocks[i][0], t * 1e3, flops / t * 1e-9,
           flops / t * 1e-9 / sgemm, wrong[i][0]);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "n", (double)o.n);
    cJSON_AddNumberToObject(e, "d", cfg[i].d);
    cJSON_AddNumberToObject(e, "bq", cfg[i].bq);
    cJSON_AddNumberToObject(e, "bk", cfg[i].bk);
    cJSON_AddNumberToObject(e, "q_heads", Q_HEADS);
    cJSON_AddNumberToObject(e, "kv_heads", KV_HEADS);
    cJSON_AddNumberToObject(e, "blocks", (double)blocks[i][0]);
    cJSON_AddNumberToObject(e, "time_s", t);
    cJSON_AddNumberToObject(e, "gflops", flops / t * 1e-9);
    cJSON_AddNumberToObject(e, "ratio_to_sgemm", flops / t * 1e-9 / sgemm);
    cJSON_AddNumberToObject(e, "wrong_rows_of_32", wrong[i][0]);
    cJSON_AddItemToArray(jd, e);
  }
  printf("#\n# block-sparse (Block-Sparse shape: block 0, diagonal, block below, random others"
         " up to k per row)\n#%6s %4s %4s %4s %8s %8s %5s %8s %10s %8s %7s %8s %9s %9s %7s\n",
         "N", "d", "bq", "bk", "sparsity", "measured", "k", "blocks", "time(ms)", "speedup",
         "ideal", "sp/ideal", "effGF/s", "sparseGF/s", "#wrong");
  for (int i = 0; i < NCFG; i++) {
    const double flops = 4.0 * (double)o.n * o.n * cfg[i].d / 2 * Q_HEADS;
    for (int l = 1; l < NL; l++) {
      const double t = tmed[i][l], density = dens[i][l];
      const double speedup = tmed[i][0] / t, ideal = 1.0 / density;
      printf(" %6lld %4d %4d %4d %8.3f %8.3f %5d %8lld %10.2f %8.2f %7.2f %8.3f %9.1f %9.1f"
             " %7d\n",
             (long long)o.n, cfg[i].d, cfg[i].bq, cfg[i].bk, sparsity[l - 1], 1.0 - density,
             budget[i][l], (long long)blocks[i][l], t * 1e3, speedup, ideal, speedup / ideal,
             flops / t * 1e-9, flops * density / t * 1e-9, wrong[i][l]);
      cJSON *e = cJSON_CreateObject();
      cJSON_AddNumberToObject(e, "n", (double)o.n);
      cJSON_AddNumberToObject(e, "d", cfg[i].d);
      cJSON_AddNumberToObject(e, "bq", cfg[i].bq);
      cJSON_AddNumberToObject(e, "bk", cfg[i].bk);
      cJSON_AddNumberToObject(e, "sparsity_target", sparsity[l - 1]);
      cJSON_AddNumberToObject(e, "sparsity_measured", 1.0 - density);
      cJSON_AddNumberToObject(e, "budget_k", budget[i][l]);
      cJSON_AddNumberToObject(e, "blocks", (double)blocks[i][l]);
      cJSON_AddNumberToObject(e, "time_s", t);
      cJSON_AddNumberToObject(e, "dense_time_s", tmed[i][0]);
      cJSON_AddNumberToObject(e, "speedup", speedup);
      cJSON_AddNumberToObject(e, "ideal_speedup", ideal);
      cJSON_AddNumberToObject(e, "speedup_over_ideal", speedup / ideal);
      cJSON_AddNumberToObject(e, "effective_gflops", flops / t * 1e-9);
      cJSON_AddNumberToObject(e, "sparse_aware_gflops", flops * density / t * 1e-9);
      cJSON_AddNumberToObject(e, "wrong_rows_of_32", wrong[i][l]);
      cJSON_AddItemToArray(jsp, e);
    }
  }

  /* Goals (docs/PERFORMANCE.md): the worst config decides. */
  double min_ratio = INFINITY, min_eff = INFINITY;
  for (int i = 0; i < NCFG; i++) {
    const double flops = 4.0 * (double)o.n * o.n * cfg[i].d / 2 * Q_HEADS;
    const double ratio = flops / tmed[i][0] * 1e-9 / sgemm;
    const double eff = tmed[i][0] / tmed[i][2] * dens[i][2]; /* level 2 = sparsity 0.9 */
    if (ratio < min_ratio) min_ratio = ratio;
    if (eff < min_eff) min_eff = eff;
  }
  printf("#\n# goal dense >= %.2f x sgemm:            worst %.3f  %s\n", GOAL_DENSE_RATIO,
         min_ratio, min_ratio >= GOAL_DENSE_RATIO ? "met" : "NOT MET");
  printf("# goal speedup/ideal >= %.2f at 0.9:     worst %.3f  %s\n", GOAL_SPARSE_EFF, min_eff,
         min_eff >= GOAL_SPARSE_EFF ? "met" : "NOT MET");
  cJSON *jg = cJSON_AddObjectToObject(root, "goals");
  cJSON_AddNumberToObject(jg, "worst_dense_ratio_to_sgemm", min_ratio);
  cJSON_AddBoolToObject(jg, "dense_ratio_met", min_ratio >= GOAL_DENSE_RATIO);
  cJSON_AddNumberToObject(jg, "worst_speedup_over_ideal_at_0.9", min_eff);
  cJSON_AddBoolToObject(jg, "sparse_efficiency_met", min_eff >= GOAL_SPARSE_EFF);

  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  make_parent_dirs(o.json);
  FILE *f = text ? fopen(o.json, "w") : NULL;
  if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0) {
    fprintf(stderr, "sr_bench_cpu: cannot write %s: %s\n", o.json, strerror(errno));
    if (f) fclose(f);
    free(text);
    return 1;
  }
  fclose(f);
  free(text);
  printf("#\n# results written to %s\n", o.json);
  /* Speed goals are reported; a wrong result is an error. */
  int nwrong = 0;
  for (int i = 0; i < NCFG; i++)
    for (int l = 0; l < NL; l++) nwrong += wrong[i][l];
  if (nwrong) {
    fprintf(stderr, "sr_bench_cpu: %d sampled rows differ from the float64 reference\n", nwrong);
    return 3;
  }
  return 0;
}
