/*
 * sr_inspect.c — the top-k attention-mass curve of sampled rows (exact float64 softmax over
 * every causal key), and the `sparsering inspect` subcommand.
 *
 * Invariants:
 *   - Rows come only from the row function; nothing is cached between layers.
 *   - Per kv-head, this rank's sampled rows of every q-head of the group are measured together
 *     in batches whose logit buffers stay under BATCH_BYTES; keys 0..max(pos) are generated once
 *     per batch in chunks of CHUNK positions. A row's logits are kept whole (the top-k needs the
 *     full row), in float64.
 *   - Per row: the softmax weights w_j = exp(s_j - max), their sum, the k heaviest by selection
 *     (quickselect for the largest kmax = ceil(max f (pos + 1)), then a sort of those), and the
 *     prefix sums at each k. A row is touched by one thread only, so results do not depend on
 *     the thread count.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_inspect.h"
#include "sr_comm.h"
#include "sr_h5.h"
#include "sr_internal.h"
#include "sr_synth.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK 4096
#define BATCH_BYTES ((size_t)256 << 20)

void sr_inspect_opts_default(sr_inspect_opts *o) {
  memset(o, 0, sizeof *o);
  o->rows = 16;
  o->from = 0.5;
  static const double k[] = {0.001, 0.005, 0.01, 0.03125, 0.05, 0.1};
  o->nk = (int)(sizeof k / sizeof *k);
  memcpy(o->k, k, sizeof k);
  o->sinks = 64;
  o->recent = 256;
}

sr_status sr_inspect_init(sr_inspect_curve *c, int q_heads, const sr_inspect_opts *o) {
  memset(c, 0, sizeof *c);
  SR_ASSERT(q_heads > 0 && o->nk > 0 && o->nk <= SR_INSPECT_MAX_K);
  c->q_heads = q_heads;
  c->nk = o->nk;
  memcpy(c->k, o->k, sizeof c->k);
  size_t n = (size_t)q_heads;
  c->mass = calloc(n * (size_t)o->nk, sizeof(double));
  c->window = calloc(n, sizeof(double));
  c->sink4 = calloc(n, sizeof(double));
  c->above = calloc(n, sizeof(double));
  c->rows = calloc(n, sizeof(int64_t));
  c->type = malloc(n * sizeof(int));
  if (!c->mass || !c->window || !c->sink4 || !c->above || !c->rows || !c->type) {
    sr_inspect_free(c);
    return sr__seterr(SR_ERR_NOMEM, "out of memory allocating the inspection sums");
  }
  for (int h = 0; h < q_heads; h++) c->type[h] = -1;
  return SR_OK;
}

void sr_inspect_free(sr_inspect_curve *c) {
  free(c->mass);
  free(c->window);
  free(c->sink4);
  free(c->above);
  free(c->rows);
  free(c->type);
  memset(c, 0, sizeof *c);
}

sr_status sr_inspect_reduce(sr_inspect_curve *c, MPI_Comm comm) {
  double *d[] = {c->window, c->sink4, c->above};
  if (MPI_Allreduce(MPI_IN_PLACE, c->mass, c->q_heads * c->nk, MPI_DOUBLE, MPI_SUM, comm) !=
      MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of the inspection sums failed");
  for (size_t i = 0; i < sizeof d / sizeof *d; i++)
    if (MPI_Allreduce(MPI_IN_PLACE, d[i], c->q_heads, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS)
      return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of the inspection sums failed");
  if (MPI_Allreduce(MPI_IN_PLACE, c->rows, c->q_heads, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of the inspection row counts failed");
  if (MPI_Allreduce(MPI_IN_PLACE, c->type, c->q_heads, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of the head types failed");
  return SR_OK;
}

double sr_inspect_mean(const sr_inspect_curve *c, int type, int ki, int64_t *rows) {
  double s = 0;
  int64_t r = 0;
  for (int h = 0; h < c->q_heads; h++) {
    if (type >= 0 && c->type[h] != type) continue;
    r += c->rows[h];
    s += ki >= 0 ? c->mass[(size_t)h * c->nk + ki]
         : ki == -1 ? c->window[h] : ki == -2 ? c->sink4[h] : c->above[h];
  }
  if (rows) *rows = r;
  return r > 0 ? s / (double)r : NAN;
}

/* ---- the calibration goals (docs/SYNTHETIC.md, "Targets") -------------------------------- */

/* Retrieval heads, at the default fractions 0.1%, 0.5%, 1%, 3.125%, 5%, 10% of the causal keys
 * (our model of their shape; with streaming heads at ~0.99 it puts the default mix on the
 * published points below). */
static const double GOAL_K[6] = {0.001, 0.005, 0.01, 0.03125, 0.05, 0.1};
static const double RETRIEVAL[6] = {0.70, 0.84, 0.88, 0.940, 0.959, 0.980};
static const double RETRIEVAL_TOL[6] = {0.10, 0.04, 0.03, 0.015, 0.015, 0.01};

static int goal_index(double f) {
  for (int i = 0; i < 6; i++)
    if (fabs(f - GOAL_K[i]) <= 1e-12) return i;
  return -1;
}

/* Are the kv-head types of cfg (layer 0; every layer has the same counts) in the ratio
 * 1 sink : 1 local : 2 retrieval? */
static bool default_mix(const sr_config *cfg) {
  if (cfg->input_source != SR_INPUT_SYNTHETIC || cfg->synth.profile != SR_SYNTH_CALIBRATED)
    return false;
  int cnt[SR_HEAD_TYPES] = {0};
  for (int g = 0; g < cfg->kv_heads; g++) cnt[sr_synth_head_type(cfg, 0, g)]++;
  return cnt[SR_HEAD_SINK] > 0 && cnt[SR_HEAD_SINK] == cnt[SR_HEAD_LOCAL] &&
         cnt[SR_HEAD_RETRIEVAL] == 2 * cnt[SR_HEAD_SINK];
}

bool sr_inspect_goal_of(const sr_config *cfg, int type, sr_goal_measure m, double f,
                        int64_t min_keys, sr_inspect_goal *g) {
  memset(g, 0, sizeof *g);
  const int i = m == SR_GOAL_MASS ? goal_index(f) : -1;
  if (m == SR_GOAL_MASS && i < 0) return false;
  if (type < 0) { /* every head */
    if (m == SR_GOAL_ABOVE) {
      *g = (sr_inspect_goal){0.05, 0, -1, "H2O (2306.14048) Fig. 2a: > 95% of entries < 1% of the row max"};
      return true;
    }
    if (m != SR_GOAL_MASS || !cfg || !default_mix(cfg)) return false;
    if (i == 3) {
      *g = (sr_inspect_goal){0.968, 0.01, 0, "MInference (2407.02490) Sec. 2.1, Fig. 2b"};
      return true;
    }
    if (i == 5) {
      *g = (sr_inspect_goal){0.99, 0.01, 0, "Quest (2406.10774) Sec. 3.2, Fig. 3"};
      return true;
    }
    return false;
  }
  switch (type) {
  case SR_HEAD_RETRIEVAL:
    if (m != SR_GOAL_MASS) return false;
    *g = (sr_inspect_goal){RETRIEVAL[i], RETRIEVAL_TOL[i], 0, "model (docs/SYNTHETIC.md)"};
    return true;
  case SR_HEAD_SINK:
  case SR_HEAD_LOCAL:
    if (m == SR_GOAL_MASS) {
      if ((double)min_keys * f < 320.0) return false;
      *g = (sr_inspect_goal){0.95, 0, +1, "DuoAttention (2410.10819) Sec. 3.2: 64 + 256-token cache"};
      return true;
    }
    if (m == SR_GOAL_WINDOW) {
      *g = (sr_inspect_goal){type == SR_HEAD_SINK ? 0.9 : 0.8, 0, +1,
                             "DuoAttention (2410.10819) Sec. 3.2: 64 + 256-token cache"};
      return true;
    }
    if (m == SR_GOAL_SINK4 && type == SR_HEAD_SINK) {
      *g = (sr_inspect_goal){0.5, 0, +1, "StreamingLLM (2309.17453) Sec. 3.1, Fig. 2"};
      return true;
    }
    return false;
  default: return false;
  }
}

bool sr_inspect_goal_met(const sr_inspect_goal *g, double v) {
  if (isnan(v)) return false;
  if (g->sense > 0) return v >= g->value;
  if (g->sense < 0) return v <= g->value;
  return fabs(v - g->value) <= g->tol;
}

/* ---- sampling ---------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

sr_status sr_inspect_sample(const sr_config *cfg, int layer, int q_head, const sr_inspect_opts *o,
                            int64_t **pos, int64_t *n) {
  *pos = NULL;
  *n = 0;
  const int64_t N = cfg->seq_len;
  if (N <= 0 || o->rows <= 0) return SR_OK;
  double fr = o->from > 0 ? (o->from < 1 ? o->from : 1) : 0;
  int64_t lo = (int64_t)floor(fr * (double)N);
  if (lo >= N) lo = N - 1;
  const int64_t range = N - lo;
  const int64_t r = o->rows < range ? o->rows : range;
  int64_t *v = malloc((size_t)r * sizeof *v);
  if (!v) return sr__seterr(SR_ERR_NOMEM, "out of memory allocating %lld sampled rows", (long long)r);
  uint64_t key = mix64(mix64(cfg->seed ^ 0x5851F42D4C957F2Dull) ^
                       mix64(((uint64_t)(uint32_t)layer << 32) | (uint32_t)q_head));
  for (int64_t t = 0; t < r; t++) {
    int64_t s0 = lo + t * range / r, s1 = lo + (t + 1) * range / r;
    v[t] = s0 + (int64_t)(mix64(key + (uint64_t)(t + 1) * 0x9E3779B97F4A7C15ull) %
                          (uint64_t)(s1 - s0));
  }
  *pos = v;
  *n = r;
  return SR_OK;
}

/* ---- one row ------------------------------------------------------------------------------ */

/* Moves the `k` largest of x[0..n) to x[0..k) (any order): Hoare-style quickselect. */
static void select_top(double *x, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  uint64_t rnd = 0x2545F4914F6CDD1Dull;
  while (lo < hi && k > lo && k <= hi) {
    rnd = mix64(rnd + 1);
    double piv = x[lo + (int64_t)(rnd % (uint64_t)(hi - lo + 1))];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (x[i] > piv) i++;
      while (x[j] < piv) j--;
      if (i <= j) {
        double t = x[i];
        x[i] = x[j];
        x[j] = t;
        i++;
        j--;
      }
    }
    /* [lo, j] >= piv >= [i, hi] */
    if (k <= j + 1) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

static int cmp_desc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}

typedef struct irow {
  int h;
  int64_t pos;
  double *s; /* logits of keys 0..pos (scaled) */
} irow;

/* Turns a row's logits into its measures (destroys s). */
static void row_measure(irow *R, const sr_inspect_opts *o, double *mass, double *window,
                        double *sink4, double *above) {
  const int64_t n = R->pos + 1;
  double *s = R->s;
  double m = -INFINITY;
  for (int64_t j = 0; j < n; j++)
    if (s[j] > m) m = s[j];
  double tot = 0, win = 0, s4 = 0;
  int64_t ab = 0;
  for (int64_t j = 0; j < n; j++) {
    double w = exp(s[j] - m);
    s[j] = w;
    tot += w;
    if (j < o->sinks || j >= n - o->recent) win += w;
    if (j < 4) s4 += w;
    ab += w >= 0.01;
  }
  int64_t kmax = 0, kk[SR_INSPECT_MAX_K];
  for (int c = 0; c < o->nk; c++) {
    int64_t k = (int64_t)ceil(o->k[c] * (double)n - 1e-9);
    if (k < 1) k = 1;
    if (k > n) k = n;
    kk[c] = k;
    if (k > kmax) kmax = k;
  }
  select_top(s, n, kmax);
  qsort(s, (size_t)kmax, sizeof *s, cmp_desc);
  double run = 0;
  int64_t j = 0;
  /* prefix sums at each k (the k list need not be sorted) */
  double *pre = malloc((size_t)(kmax + 1) * sizeof *pre);
  if (pre) {
    pre[0] = 0;
    for (j = 0; j < kmax; j++) pre[j + 1] = pre[j] + s[j];
    for (int c = 0; c < o->nk; c++) mass[c] = pre[kk[c]] / tot;
    free(pre);
  } else { /* (no memory: sum per k) */
    for (int c = 0; c < o->nk; c++) {
      run = 0;
      for (j = 0; j < kk[c]; j++) run += s[j];
      mass[c] = run / tot;
    }
  }
  *window = win / tot;
  *sink4 = s4 / tot;
  *above = (double)ab / (double)n;
}

/* ---- a layer ------------------------------------------------------------------------------ */

static int cmp_irow(const void *a, const void *b) {
  const irow *x = a, *y = b;
  if (x->pos != y->pos) return (x->pos > y->pos) - (x->pos < y->pos);
  return (x->h > y->h) - (x->h < y->h);
}

static sr_status inspect_batch(const sr_config *cfg, int layer, int kvh, sr_row_fn rowfn,
                               void *ctx, const sr_inspect_opts *o, irow *R, int64_t nb,
                               sr_inspect_curve *acc) {
  const int d = cfg->head_dim;
  const double scale = 1.0 / sqrt((double)d);
  sr_status st = SR_OK;
  int64_t maxpos = 0;
  for (int64_t r = 0; r < nb; r++)
    if (R[r].pos > maxpos) maxpos = R[r].pos;
  double *q = malloc((size_t)nb * d * sizeof *q);
  float *qf = malloc((size_t)d * sizeof *qf);
  float *kf = malloc((size_t)CHUNK * d * sizeof *kf);
  double *kt = malloc((size_t)CHUNK * d * sizeof *kt);
  double *res = malloc((size_t)nb * (o->nk + 3) * sizeof *res);
  if (!q || !qf || !kf || !kt || !res) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory allocating inspection buffers");
    goto done;
  }
  for (int64_t r = 0; r < nb; r++) {
    R[r].s = malloc((size_t)(R[r].pos + 1) * sizeof(double));
    if (!R[r].s) {
      st = sr__seterr(SR_ERR_NOMEM, "out of memory allocating the logits of a %lld-key row",
                      (long long)(R[r].pos + 1));
      goto done;
    }
  }
  for (int64_t r = 0; r < nb; r++) {
    if ((st = rowfn(ctx, layer, 'q', R[r].h, R[r].pos, 1, qf)) != SR_OK) goto done;
    for (int x = 0; x < d; x++) q[(size_t)r * d + x] = (double)qf[x] * scale;
  }
  for (int64_t c0 = 0; c0 <= maxpos; c0 += CHUNK) {
    const int64_t cn = maxpos + 1 - c0 < CHUNK ? maxpos + 1 - c0 : CHUNK;
    if ((st = rowfn(ctx, layer, 'k', kvh, c0, cn, kf)) != SR_OK) goto done;
    for (int64_t j = 0; j < cn; j++)
      for (int x = 0; x < d; x++) kt[(size_t)x * cn + j] = (double)kf[(size_t)j * d + x];
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t r = 0; r < nb; r++) {
      int64_t jend = R[r].pos + 1 - c0;
      if (jend > cn) jend = cn;
      if (jend <= 0) continue;
      double *s = R[r].s + c0;
      const double *qr = q + (size_t)r * d;
      for (int64_t j = 0; j < jend; j++) s[j] = 0;
      for (int x = 0; x < d; x++) {
        const double qx = qr[x];
        const double *row = kt + (size_t)x * cn;
        for (int64_t j = 0; j < jend; j++) s[j] += qx * row[j];
      }
    }
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < nb; r++) {
    double *m = res + (size_t)r * (o->nk + 3);
    row_measure(&R[r], o, m, m + o->nk, m + o->nk + 1, m + o->nk + 2);
  }
  for (int64_t r = 0; r < nb; r++) {
    const int h = R[r].h;
    const double *m = res + (size_t)r * (o->nk + 3);
    for (int c = 0; c < o->nk; c++) acc->mass[(size_t)h * acc->nk + c] += m[c];
    acc->window[h] += m[o->nk];
    acc->sink4[h] += m[o->nk + 1];
    acc->above[h] += m[o->nk + 2];
    acc->rows[h]++;
  }
done:
  for (int64_t r = 0; r < nb; r++) {
    free(R[r].s);
    R[r].s = NULL;
  }
  free(q);
  free(qf);
  free(kf);
  free(kt);
  free(res);
  return st;
}

sr_status sr_inspect_layer(const sr_config *cfg, int layer, sr_row_fn rows, void *ctx,
                           const sr_inspect_opts *o, int rank, int nranks, sr_inspect_curve *acc) {
  SR_ASSERT(acc->q_heads == cfg->q_heads && acc->nk == o->nk);
  SR_ASSERT(cfg->kv_heads > 0 && cfg->q_heads % cfg->kv_heads == 0 && nranks > 0);
  const int group = cfg->q_heads / cfg->kv_heads;
  const bool synthetic = cfg->input_source == SR_INPUT_SYNTHETIC;
  for (int h = 0; h < cfg->q_heads; h++)
    acc->type[h] = synthetic ? (int)sr_synth_head_type(cfg, layer, h / group) : -1;
  sr_status st = SR_OK;
  for (int kvh = 0; kvh < cfg->kv_heads && st == SR_OK; kvh++) {
    /* The group's rows, in a fixed order; this rank takes every nranks-th. */
    irow *R = NULL;
    int64_t nr = 0, cap = 0, idx = 0;
    for (int g = 0; g < group && st == SR_OK; g++) {
      const int h = kvh * group + g;
      int64_t *pos = NULL, np = 0;
      if ((st = sr_inspect_sample(cfg, layer, h, o, &pos, &np)) != SR_OK) break;
      for (int64_t i = 0; i < np; i++, idx++) {
        if (idx % nranks != rank) continue;
        if (nr == cap) {
          int64_t nc = cap ? 2 * cap : 64;
          irow *n2 = realloc(R, (size_t)nc * sizeof *n2);
          if (!n2) {
            st = sr__seterr(SR_ERR_NOMEM, "out of memory listing inspection rows");
            break;
          }
          R = n2;
          cap = nc;
        }
        R[nr++] = (irow){.h = h, .pos = pos[i], .s = NULL};
      }
      free(pos);
    }
    if (st == SR_OK && nr > 0) {
      qsort(R, (size_t)nr, sizeof *R, cmp_irow);
      /* Batches of rows whose logits fit in BATCH_BYTES (at least one row). */
      for (int64_t b0 = 0; b0 < nr && st == SR_OK;) {
        size_t bytes = 0;
        int64_t b1 = b0;
        while (b1 < nr && (b1 == b0 || bytes + (size_t)(R[b1].pos + 1) * 8 <= BATCH_BYTES))
          bytes += (size_t)(R[b1++].pos + 1) * 8;
        st = inspect_batch(cfg, layer, kvh, rows, ctx, o, R + b0, b1 - b0, acc);
        b0 = b1;
      }
    }
    free(R);
  }
  return st;
}

/* ---- the subcommand ----------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: mpirun -np P sparsering inspect [options]\n"
          "\n"
          "How concentrated the attention of the configured input is: for sampled query rows\n"
          "of every q-head, the share of the exact (float64) softmax over all causal keys that\n"
          "the k heaviest keys carry, k a fraction of the row's causal keys; per head, per head\n"
          "type and overall, next to the calibration targets (docs/SYNTHETIC.md).\n"
          "\n"
          "Options:\n"
          "  -c, --config FILE     YAML config (default: the embedded demo); its input section\n"
          "                        says what is inspected (synthetic, or an HDF5 dump)\n"
          "  -s, --set KEY=VALUE   override a config key, repeatable\n"
          "  -n, --rows R          sampled rows per q-head (default 16)\n"
          "      --from F          rows drawn from [F N, N) (default 0.5)\n"
          "  -l, --layer L         layer to inspect (default 0; -1: every layer, summed)\n"
          "  -k, --k LIST          fractions of the causal keys, in percent, comma-separated\n"
          "                        (default 0.1,0.5,1,3.125,5,10)\n"
          "  -j, --json PATH       write the numbers as JSON\n"
          "  -q, --quiet           no per-head rows (types and overall only)\n"
          "  -h, --help            this help\n"
          "\n"
          "Columns: window = mass on the first 64 + last 256 keys (a DuoAttention streaming\n"
          "head's cache), sink4 = mass on keys 0-3, >1%%max = fraction of keys weighing at least\n"
          "1%% of the row's largest weight (H2O's sparsity is 1 minus it).\n");
}

static sr_status inspect_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                              int64_t count, float *out) {
  const void *const *c = ctx;
  sr_h5_in *h5 = (sr_h5_in *)c[1];
  if (h5) return sr_h5_read_head_rows(h5, layer, which, head, pos0, count, out);
  sr_synth_rows((const sr_config *)c[0], layer, which, head, pos0, count, out);
  return SR_OK;
}

static const char *type_label(int t) { return t < 0 ? "-" : sr_head_type_name((sr_head_type)t); }

static void print_line(FILE *f, const char *a, const char *b, const char *type, int64_t rows,
                       const double *v, int nk, const double *extra, int nextra) {
  fprintf(f, "%6s %4s %-9s %6lld", a, b, type, (long long)rows);
  for (int c = 0; c < nk; c++) {
    if (isnan(v[c])) fprintf(f, " %7s", "-");
    else fprintf(f, " %7.4f", v[c]);
  }
  for (int e = 0; e < nextra; e++) {
    if (isnan(extra[e])) fprintf(f, " %7s", "-");
    else fprintf(f, " %7.4f", extra[e]);
  }
  fprintf(f, "\n");
}

static const char *MEASURE_NAME[4] = {"mass", "window", "sink4", "above_1pct_max"};

/* The value of measure m (k index ki for the mass) of heads of a type. */
static double measured(const sr_inspect_curve *c, int type, sr_goal_measure m, int ki) {
  return sr_inspect_mean(c, type, m == SR_GOAL_MASS ? ki : -(int)m, NULL);
}

static cJSON *json_curve(const sr_inspect_curve *c, int type, const sr_config *cfg,
                         int64_t min_keys) {
  cJSON *o = cJSON_CreateObject();
  int64_t rows = 0;
  sr_inspect_mean(c, type, 0, &rows);
  cJSON_AddNumberToObject(o, "rows", (double)rows);
  cJSON *m = cJSON_AddArrayToObject(o, "mass");
  for (int k = 0; k < c->nk; k++) {
    double v = sr_inspect_mean(c, type, k, NULL);
    cJSON_AddItemToArray(m, isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v));
  }
  for (int e = 1; e < 4; e++) {
    double v = measured(c, type, (sr_goal_measure)e, 0);
    cJSON_AddItemToObject(o, MEASURE_NAME[e], isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v));
  }
  cJSON *goals = cJSON_AddArrayToObject(o, "goals");
  for (int e = 0; e < 4; e++)
    for (int k = 0; k < (e == 0 ? c->nk : 1); k++) {
      sr_inspect_goal g;
      if (cfg->input_source != SR_INPUT_SYNTHETIC ||
          !sr_inspect_goal_of(cfg, type, (sr_goal_measure)e, c->k[k], min_keys, &g))
        continue;
      double v = measured(c, type, (sr_goal_measure)e, k);
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "measure", MEASURE_NAME[e]);
      if (e == 0) cJSON_AddNumberToObject(x, "k", c->k[k]);
      cJSON_AddNumberToObject(x, "value", g.value);
      if (g.sense == 0) cJSON_AddNumberToObject(x, "tol", g.tol);
      cJSON_AddStringToObject(x, "sense", g.sense > 0 ? "at_least" : g.sense < 0 ? "at_most" : "within");
      cJSON_AddItemToObject(x, "measured", isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v));
      cJSON_AddBoolToObject(x, "met", sr_inspect_goal_met(&g, v));
      cJSON_AddStringToObject(x, "source", g.source);
      cJSON_AddItemToArray(goals, x);
    }
  return o;
}

static sr_status write_json(const char *path, const sr_config *cfg, const sr_inspect_opts *o,
                            const sr_inspect_curve *c, int layer, int64_t min_keys) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "input", cfg->input_source == SR_INPUT_HDF5 ? "hdf5" : "synthetic");
  if (cfg->input_source == SR_INPUT_SYNTHETIC)
    cJSON_AddStringToObject(root, "profile",
                            cfg->synth.profile == SR_SYNTH_CALIBRATED ? "calibrated" : "plain");
  cJSON_AddNumberToObject(root, "seq_len", (double)cfg->seq_len);
  cJSON_AddNumberToObject(root, "q_heads", cfg->q_heads);
  cJSON_AddNumberToObject(root, "kv_heads", cfg->kv_heads);
  cJSON_AddNumberToObject(root, "head_dim", cfg->head_dim);
  cJSON_AddNumberToObject(root, "layer", layer);
  cJSON_AddNumberToObject(root, "rows_per_head", (double)o->rows);
  cJSON_AddNumberToObject(root, "from", o->from);
  cJSON *k = cJSON_AddArrayToObject(root, "k");
  for (int i = 0; i < c->nk; i++) cJSON_AddItemToArray(k, cJSON_CreateNumber(c->k[i]));
  cJSON *heads = cJSON_AddArrayToObject(root, "heads");
  const int group = cfg->q_heads / cfg->kv_heads;
  for (int h = 0; h < c->q_heads; h++) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "head", h);
    cJSON_AddNumberToObject(e, "kv_head", h / group);
    cJSON_AddStringToObject(e, "type", type_label(c->type[h]));
    cJSON_AddNumberToObject(e, "rows", (double)c->rows[h]);
    cJSON *m = cJSON_AddArrayToObject(e, "mass");
    for (int i = 0; i < c->nk; i++)
      cJSON_AddItemToArray(m, cJSON_CreateNumber(c->rows[h] ? c->mass[(size_t)h * c->nk + i] /
                                                                  (double)c->rows[h] : 0));
    double r = c->rows[h] ? (double)c->rows[h] : 1;
    cJSON_AddNumberToObject(e, "window", c->window[h] / r);
    cJSON_AddNumberToObject(e, "sink4", c->sink4[h] / r);
    cJSON_AddNumberToObject(e, "above_1pct_max", c->above[h] / r);
    cJSON_AddItemToArray(heads, e);
  }
  cJSON *types = cJSON_AddObjectToObject(root, "types");
  for (int t = 0; t < SR_HEAD_TYPES; t++) {
    int64_t rows = 0;
    sr_inspect_mean(c, t, 0, &rows);
    if (rows > 0)
      cJSON_AddItemToObject(types, sr_head_type_name((sr_head_type)t),
                            json_curve(c, t, cfg, min_keys));
  }
  cJSON_AddItemToObject(root, "all", json_curve(c, -1, cfg, min_keys));
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) return sr__seterr(SR_ERR_NOMEM, "out of memory writing the JSON report");
  FILE *f = fopen(path, "w");
  if (!f) {
    free(text);
    return sr__seterr(SR_ERR_IO, "%s: cannot write the JSON report", path);
  }
  int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  ok = (fclose(f) == 0) && ok;
  free(text);
  return ok ? SR_OK : sr__seterr(SR_ERR_IO, "%s: write failed", path);
}

static sr_status parse_klist(const char *s, sr_inspect_opts *o) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *e;
    double v = strtod(p, &e);
    if (e == p || !(v > 0 && v <= 100))
      return sr__seterr(SR_ERR_USAGE, "--k: '%s' is not a list of percentages in (0, 100]", s);
    if (n == SR_INSPECT_MAX_K)
      return sr__seterr(SR_ERR_USAGE, "--k: at most %d fractions", SR_INSPECT_MAX_K);
    o->k[n++] = v / 100.0;
    p = e;
    if (*p == ',') p++;
    else if (*p) return sr__seterr(SR_ERR_USAGE, "--k: '%s' is not a comma-separated list", s);
  }
  if (n == 0) return sr__seterr(SR_ERR_USAGE, "--k: empty list");
  o->nk = n;
  return SR_OK;
}

static sr_status parse_int(const char *opt, const char *s, int64_t lo, int64_t *v) {
  char *e;
  long long x = strtoll(s, &e, 10);
  if (e == s || *e || x < lo)
    return sr__seterr(SR_ERR_USAGE, "%s: '%s' is not an integer >= %lld", opt, s, (long long)lo);
  *v = x;
  return SR_OK;
}

/* Threads per rank: the configured count, else the node's cores shared among its ranks. */
static void set_threads(const sr_config *cfg) {
  int n = cfg->threads;
  if (n <= 0) {
    MPI_Comm node;
    int local = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
      MPI_Comm_size(node, &local);
      MPI_Comm_free(&node);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    n = (int)(cores > 0 ? cores : 1) / (local > 0 ? local : 1);
    if (n < 1) n = 1;
  }
  omp_set_num_threads(n);
}

int sr_inspect_main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, nranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
      {"rows", required_argument, 0, 'n'},   {"from", required_argument, 0, 'F'},
      {"layer", required_argument, 0, 'l'},  {"k", required_argument, 0, 'k'},
      {"json", required_argument, 0, 'j'},   {"quiet", no_argument, 0, 'q'},
      {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
  sr_config cfg;
  sr_config_defaults(&cfg);
  sr_inspect_opts o;
  sr_inspect_opts_default(&o);
  const char *config_path = NULL, *json = NULL;
  char **over = calloc((size_t)argc + 1, sizeof(char *));
  int n_over = 0, quiet = 0, exit_code = 0;
  int64_t layer = 0;
  sr_status st = over ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory");
  sr_h5_in *h5 = NULL;
  sr_inspect_curve cur = {0};
  optind = 1;
  opterr = 0;
  int c;
  while (st == SR_OK && (c = getopt_long(argc, argv, ":c:s:n:l:k:j:qh", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 's': over[n_over++] = optarg; break;
    case 'n': st = parse_int("--rows", optarg, 1, &o.rows); break;
    case 'F': {
      char *e;
      o.from = strtod(optarg, &e);
      if (e == optarg || *e || !(o.from >= 0 && o.from < 1))
        st = sr__seterr(SR_ERR_USAGE, "--from: '%s' is not a number in [0, 1)", optarg);
      break;
    }
    case 'l': st = parse_int("--layer", optarg, -1, &layer); break;
    case 'k': st = parse_klist(optarg, &o); break;
    case 'j': json = optarg; break;
    case 'q': quiet = 1; break;
    case 'h':
      if (rank == 0) usage(stdout);
      goto finish;
    case ':':
      st = sr__seterr(SR_ERR_USAGE, "option %s needs a value (see inspect --help)", argv[optind - 1]);
      break;
    default:
      st = sr__seterr(SR_ERR_USAGE, "unknown option '%s' (see inspect --help)", argv[optind - 1]);
    }
  }
  if (st == SR_OK && optind < argc)
    st = sr__seterr(SR_ERR_USAGE, "unexpected argument '%s' (see inspect --help)", argv[optind]);
  if (st == SR_OK) st = sr_config_load(&cfg, config_path, (const char *const *)over, n_over);
  if (st == SR_OK) st = sr_config_validate(&cfg);
  if (st == SR_OK && layer >= cfg.layers)
    st = sr__seterr(SR_ERR_USAGE, "--layer: %lld, but model.layers is %d", (long long)layer,
                    cfg.layers);
  st = sr_comm_agree(MPI_COMM_WORLD, st);
  if (st != SR_OK) goto fail;
  set_threads(&cfg);
  if (cfg.input_source == SR_INPUT_HDF5)
    st = sr_comm_agree(MPI_COMM_WORLD, sr_h5_in_open(&h5, MPI_COMM_WORLD, cfg.input_path, &cfg));
  if (st != SR_OK) goto fail;

  double t0 = MPI_Wtime();
  st = sr_inspect_init(&cur, cfg.q_heads, &o);
  const void *ctx[2] = {&cfg, h5};
  for (int l = layer < 0 ? 0 : (int)layer; st == SR_OK && l < (layer < 0 ? cfg.layers : layer + 1);
       l++)
    st = sr_inspect_layer(&cfg, l, inspect_rows, (void *)ctx, &o, rank, nranks, &cur);
  st = sr_comm_agree(MPI_COMM_WORLD, st);
  if (st == SR_OK) st = sr_comm_agree(MPI_COMM_WORLD, sr_inspect_reduce(&cur, MPI_COMM_WORLD));
  if (st != SR_OK) goto fail;
  double secs = MPI_Wtime() - t0;

  if (rank == 0) {
    FILE *f = stdout;
    const bool syn = cfg.input_source == SR_INPUT_SYNTHETIC;
    const int group = cfg.q_heads / cfg.kv_heads;
    fprintf(f, "# sparsering inspect: top-k attention mass, exact float64 softmax over every causal key\n");
    if (syn) {
      int cnt[SR_HEAD_TYPES] = {0};
      for (int g = 0; g < cfg.kv_heads; g++)
        cnt[sr_synth_head_type(&cfg, layer < 0 ? 0 : (int)layer, g)]++;
      if (cfg.synth.profile == SR_SYNTH_CALIBRATED)
        fprintf(f, "# input: synthetic, profile calibrated (kv-heads: %d sink, %d local, %d retrieval), seed %llu\n",
                cnt[SR_HEAD_SINK], cnt[SR_HEAD_LOCAL], cnt[SR_HEAD_RETRIEVAL],
                (unsigned long long)cfg.seed);
      else
        fprintf(f, "# input: synthetic, profile plain, seed %llu\n", (unsigned long long)cfg.seed);
    } else {
      fprintf(f, "# input: %s (HDF5)\n", cfg.input_path);
    }
    char lay[32];
    if (layer < 0) snprintf(lay, sizeof lay, "all %d summed", cfg.layers);
    else snprintf(lay, sizeof lay, "%lld", (long long)layer);
    fprintf(f, "# N %lld, %d q-heads / %d kv-heads, head_dim %d, layer %s; %lld rows per q-head in "
            "[%lld, %lld); %d rank%s, %.2f s\n",
            (long long)cfg.seq_len, cfg.q_heads, cfg.kv_heads, cfg.head_dim, lay, (long long)o.rows,
            (long long)floor(o.from * (double)cfg.seq_len), (long long)cfg.seq_len, nranks,
            nranks == 1 ? "" : "s", secs);
    fprintf(f, "# mass carried by the k heaviest keys of a row, k = ceil(f x causal keys), mean over rows\n");
    char hdr[64];
    fprintf(f, "%6s %4s %-9s %6s", "head", "kv", "type", "rows");
    for (int k = 0; k < cur.nk; k++) {
      snprintf(hdr, sizeof hdr, "%g%%", 100.0 * cur.k[k]);
      fprintf(f, " %7s", hdr);
    }
    fprintf(f, " %7s %7s %7s\n", "window", "sink4", ">1%max");
    double v[SR_INSPECT_MAX_K], ex[3];
    if (!quiet)
      for (int h = 0; h < cur.q_heads; h++) {
        char a[16], b[16];
        snprintf(a, sizeof a, "%d", h);
        snprintf(b, sizeof b, "%d", h / group);
        double r = cur.rows[h] ? (double)cur.rows[h] : NAN;
        for (int k = 0; k < cur.nk; k++) v[k] = cur.mass[(size_t)h * cur.nk + k] / r;
        ex[0] = cur.window[h] / r;
        ex[1] = cur.sink4[h] / r;
        ex[2] = cur.above[h] / r;
        print_line(f, a, b, type_label(cur.type[h]), cur.rows[h], v, cur.nk, ex, 3);
      }
    if (syn)
      fprintf(f, "# per head type (mean over rows); target: the calibration goals of docs/SYNTHETIC.md\n"
                 "# (>x at least, <x at most, x +- tol in the tol row; '-' none at this N)\n");
    else
      fprintf(f, "# over all heads (mean over rows)\n");
    const int64_t min_keys = (int64_t)floor(o.from * (double)cfg.seq_len) + 1;
    int met = 0, goals = 0;
    for (int t = -1; t < SR_HEAD_TYPES; t++) {
      int64_t rows = 0;
      sr_inspect_mean(&cur, t, 0, &rows);
      if (rows == 0) continue;
      for (int k = 0; k < cur.nk; k++) v[k] = sr_inspect_mean(&cur, t, k, NULL);
      for (int e = 0; e < 3; e++) ex[e] = sr_inspect_mean(&cur, t, -1 - e, NULL);
      print_line(f, "mean", t < 0 ? "all" : "", t < 0 ? "" : type_label(t), rows, v, cur.nk, ex, 3);
      if (!syn) continue;
      /* target and tol rows, as text cells */
      char cell[SR_INSPECT_MAX_K + 3][16], tol[SR_INSPECT_MAX_K + 3][16];
      bool any = false, anytol = false;
      for (int c2 = 0; c2 < cur.nk + 3; c2++) {
        sr_goal_measure mm = c2 < cur.nk ? SR_GOAL_MASS : (sr_goal_measure)(c2 - cur.nk + 1);
        double fk = c2 < cur.nk ? cur.k[c2] : 0;
        sr_inspect_goal g;
        snprintf(cell[c2], sizeof cell[c2], "-");
        snprintf(tol[c2], sizeof tol[c2], "-");
        if (!sr_inspect_goal_of(&cfg, t, mm, fk, min_keys, &g)) continue;
        any = true;
        goals++;
        met += sr_inspect_goal_met(&g, measured(&cur, t, mm, c2 < cur.nk ? c2 : 0));
        snprintf(cell[c2], sizeof cell[c2], "%s%.3f", g.sense > 0 ? ">" : g.sense < 0 ? "<" : "",
                 g.value);
        if (g.sense == 0) {
          snprintf(tol[c2], sizeof tol[c2], "%.3f", g.tol);
          anytol = true;
        }
      }
      for (int row = 0; row < 2; row++) {
        if (!(row == 0 ? any : anytol)) continue;
        fprintf(f, "%6s %4s %-9s %6s", row == 0 ? "target" : "tol", t < 0 ? "all" : "",
                t < 0 ? "" : type_label(t), "");
        for (int c2 = 0; c2 < cur.nk + 3; c2++) fprintf(f, " %7s", row == 0 ? cell[c2] : tol[c2]);
        fprintf(f, "\n");
      }
    }
    if (syn && goals > 0) fprintf(f, "# calibration goals met: %d of %d\n", met, goals);
    fflush(f);
    if (json) st = write_json(json, &cfg, &o, &cur, (int)layer, min_keys);
  }
  st = sr_comm_agree(MPI_COMM_WORLD, st);
  if (st != SR_OK) goto fail;
  goto finish;

fail:
  if (rank == 0) fprintf(stderr, "sparsering: error: %s\n", sr_last_error());
  exit_code = sr_exit_code(st);
finish:
  sr_inspect_free(&cur);
  if (h5) sr_h5_in_close(h5);
  sr_config_free(&cfg);
  free(over);
  MPI_Finalize();
  return exit_code;
}
