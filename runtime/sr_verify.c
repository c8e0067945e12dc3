/*
 * sr_verify.c — float64 dense reference for sampled rows, compared with the run's output.
 *
 * Invariants:
 *   - Nothing here reads the sparse path's q/k/v buffers: rows come from the row function.
 *   - Per kv-head, the sampled rows of all q-heads of the group that this rank owns are
 *     processed together (in batches of at most VERIFY_BATCH rows), and the keys 0..max(pos)
 *     are generated once per batch, in chunks of VERIFY_CHUNK positions: memory is
 *     O(batch * d + chunk * d) whatever N is.
 *   - Each row runs an online softmax in float64 (running max m, sum l, selected sum lsel,
 *     weighted value sum acc, rescaled once per chunk), so ref = acc / l and
 *     ref_lse = m + log(l) are exact to float64 rounding. A row is only ever touched by one
 *     thread, in key order, so results do not depend on the thread count.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_verify.h"
#include "sr_internal.h"
#include "sr_synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define VERIFY_BATCH 2048
#define VERIFY_CHUNK 2048

sr_status sr_verify_synth_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                               int64_t count, float *out) {
  sr_synth_rows((const sr_config *)ctx, layer, which, head, pos0, count, out);
  return SR_OK;
}

/* ---- accumulators ---------------------------------------------------------------------- */

sr_status sr_quality_init(sr_quality *q, int q_heads) {
  memset(q, 0, sizeof *q);
  SR_ASSERT(q_heads > 0);
  q->q_heads = q_heads;
  size_t n = (size_t)q_heads;
  q->err2 = calloc(n, sizeof(double));
  q->ref2 = calloc(n, sizeof(double));
  q->recall = calloc(n, sizeof(double));
  q->needle_mass = calloc(n, sizeof(double));
  q->rows = calloc(n, sizeof(int64_t));
  q->recall_rows = calloc(n, sizeof(int64_t));
  q->needles = calloc(n, sizeof(int64_t));
  q->needle_hits = calloc(n, sizeof(int64_t));
  if (!q->err2 || !q->ref2 || !q->recall || !q->needle_mass || !q->rows || !q->recall_rows ||
      !q->needles || !q->needle_hits) {
    sr_quality_free(q);
    return sr__seterr(SR_ERR_NOMEM, "out of memory allocating verification accumulators");
  }
  return SR_OK;
}

void sr_quality_free(sr_quality *q) {
  free(q->err2);
  free(q->ref2);
  free(q->recall);
  free(q->needle_mass);
  free(q->rows);
  free(q->recall_rows);
  free(q->needles);
  free(q->needle_hits);
  memset(q, 0, sizeof *q);
}

sr_status sr_quality_reduce(sr_quality *q, MPI_Comm comm) {
  double *d[] = {q->err2, q->ref2, q->recall, q->needle_mass};
  int64_t *i[] = {q->rows, q->recall_rows, q->needles, q->needle_hits};
  for (size_t k = 0; k < sizeof d / sizeof *d; k++)
    if (MPI_Allreduce(MPI_IN_PLACE, d[k], q->q_heads, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS)
      return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of verification sums failed");
  for (size_t k = 0; k < sizeof i / sizeof *i; k++)
    if (MPI_Allreduce(MPI_IN_PLACE, i[k], q->q_heads, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
      return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of verification counts failed");
  if (MPI_Allreduce(MPI_IN_PLACE, &q->lse_maxerr, 1, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Allreduce of the lse error failed");
  return SR_OK;
}

double sr_quality_rel_err(const sr_quality *q, int head) {
  if (q->rows[head] == 0) return NAN;
  return q->ref2[head] > 0 ? sqrt(q->err2[head] / q->ref2[head]) : sqrt(q->err2[head]);
}

void sr_quality_summarize(const sr_quality *q, sr_quality_summary *s) {
  memset(s, 0, sizeof *s);
  double e = 0, r = 0, rec = 0, nm = 0;
  int64_t rr = 0;
  s->rel_err_max = 0;
  for (int h = 0; h < q->q_heads; h++) {
    s->rows += q->rows[h];
    e += q->err2[h];
    r += q->ref2[h];
    rec += q->recall[h];
    rr += q->recall_rows[h];
    nm += q->needle_mass[h];
    s->needles += q->needles[h];
    s->needle_hits += q->needle_hits[h];
    double he = sr_quality_rel_err(q, h);
    if (q->rows[h] > 0 && !(he <= s->rel_err_max)) s->rel_err_max = he; /* keeps NaN */
  }
  s->rel_err = s->rows == 0 ? NAN : r > 0 ? sqrt(e / r) : sqrt(e);
  if (s->rows == 0) s->rel_err_max = NAN;
  s->lse_maxerr = q->lse_maxerr;
  s->recall = rr > 0 ? rec / (double)rr : NAN;
  s->needle_hit_rate = s->needles > 0 ? (double)s->needle_hits / (double)s->needles : NAN;
  s->needle_mass = s->needles > 0 ? nm / (double)s->needles : NAN;
}

double sr_verify_limit(const sr_config *cfg, size_t elem_bytes) {
  if (cfg->verify_max_relerr >= 0) return cfg->verify_max_relerr;
  if (cfg->method != SR_METHOD_DENSE) return 0;
  return elem_bytes >= 4 ? SR_VERIFY_TOL_FP32 : SR_VERIFY_TOL_BF16;
}

/* ---- sampling ---------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

sr_status sr_verify_sample(const sr_config *cfg, int layer, int q_head, int64_t **pos,
                           int64_t *count) {
  *pos = NULL;
  *count = 0;
  const int64_t n = cfg->seq_len;
  const int64_t r = cfg->verify_rows;
  if (r == 0 || n <= 0) return SR_OK;
  const bool all = r < 0 || r >= n;
  const int group = cfg->q_heads / cfg->kv_heads;
  const int64_t nneedle =
      cfg->input_source == SR_INPUT_SYNTHETIC && !all ? (int64_t)cfg->synth.needles : 0;
  /* Needle rows: the union of the needles' query spans, at most N/2 distinct positions. */
  const int64_t span = sr_synth_needle_span(cfg);
  int64_t nspan = nneedle > 0 ? nneedle * span : 0;
  if (nspan > n) nspan = n;
  const int64_t cap = (all ? n : r) + nspan;
  int64_t *v = malloc((size_t)cap * sizeof *v);
  sr_needle *nd = nneedle > 0 ? malloc((size_t)nneedle * sizeof *nd) : NULL;
  if (!v || (nneedle > 0 && !nd)) {
    free(v);
    free(nd);
    return sr__seterr(SR_ERR_NOMEM, "out of memory allocating %lld verification positions",
                      (long long)cap);
  }
  int64_t c = 0;
  if (all) {
    for (int64_t i = 0; i < n; i++) v[c++] = i;
  } else {
    /* One position per stratum [t N / R, (t+1) N / R): spread over the sequence, distinct. */
    uint64_t key = mix64(mix64(cfg->seed ^ 0x7F4A7C159E3779B9ull) ^
                         mix64(((uint64_t)(uint32_t)layer << 32) | (uint32_t)q_head));
    for (int64_t t = 0; t < r; t++) {
      int64_t s0 = t * n / r, s1 = (t + 1) * n / r;
      v[c++] = s0 + (int64_t)(mix64(key + (uint64_t)(t + 1) * 0x9E3779B97F4A7C15ull) %
                              (uint64_t)(s1 - s0));
    }
    int got = sr_synth_needles(cfg, layer, q_head / group, nd, (int)nneedle);
    /* Every position of every query span. Span starts are non-decreasing in t, so positions
     * below the end of the spans so far are already listed: each is added once. */
    int64_t done = 0;
    for (int t = 0; t < got; t++) {
      int64_t a = nd[t].qpos > done ? nd[t].qpos : done, b = nd[t].qpos + nd[t].span;
      for (int64_t i = a; i < b && c < cap; i++) v[c++] = i;
      if (b > done) done = b;
    }
  }
  free(nd);
  qsort(v, (size_t)c, sizeof *v, cmp_i64);
  int64_t u = 0;
  for (int64_t i = 0; i < c; i++)
    if (u == 0 || v[i] != v[u - 1]) v[u++] = v[i];
  *pos = v;
  *count = u;
  return SR_OK;
}

/* ---- the reference --------------------------------------------------------------------- */

typedef struct vrow {
  int h;             /* q-head */
  int64_t pos;       /* global position */
  int64_t lrow;      /* local row on this rank */
  int64_t sel_row;   /* selection row, -1 if none */
  int64_t cur;       /* cursor into sel->col while keys stream */
  int64_t vcur;      /* cursor into sel->vcol (selections with key columns) */
  double m, l, lsel; /* online softmax state (logits already scaled) */
} vrow;

/* Rows sorted by (q-head, position): a head's consecutive positions form runs that the row
 * function delivers in one call. */
static int cmp_vrow(const void *a, const void *b) {
  const vrow *x = a, *y = b;
  if (x->h != y->h) return (x->h > y->h) - (x->h < y->h);
  return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Streams keys [c0, c0 + cn) into one row. kt is the chunk's keys transposed ([d][cn], so the
 * logits of all keys are computed with the key index innermost, which vectorises), vd its
 * values ([cn][d]); sbuf holds cn logits. The online softmax rescales once per chunk. */
static void stream_chunk(vrow *R, const double *q, double *acc, int d, int bk, double scale,
                         const sr_selection *sel, int64_t c0, int64_t cn, const double *kt,
                         const double *vd, double *sbuf) {
  int64_t jend = c0 + cn;
  if (jend > R->pos + 1) jend = R->pos + 1;
  const int64_t nk = jend - c0;
  if (nk <= 0) return;
  for (int64_t j = 0; j < nk; j++) sbuf[j] = 0;
  for (int x = 0; x < d; x++) {
    const double qx = q[x] * scale;
    const double *row = kt + (size_t)x * cn;
    for (int64_t j = 0; j < nk; j++) sbuf[j] += qx * row[j];
  }
  double cmax = -INFINITY;
  for (int64_t j = 0; j < nk; j++)
    if (sbuf[j] > cmax) cmax = sbuf[j];
  if (cmax > R->m) {
    const double a = exp(R->m - cmax); /* 0 on the first chunk (m = -inf) */
    R->l *= a;
    R->lsel *= a;
    for (int x = 0; x < d; x++) acc[x] *= a;
    R->m = cmax;
  }
  const double m = R->m;
  const int64_t sel_end = R->sel_row >= 0 ? sel->row_ptr[R->sel_row + 1] : 0;
  for (int64_t j = c0; j < jend;) {
    /* One key block (or the part of it inside this chunk) at a time. */
    const int64_t b = j / bk;
    int64_t seg_end = (b + 1) * (int64_t)bk;
    if (seg_end > jend) seg_end = jend;
    bool in_sel = false;
    if (R->sel_row >= 0) {
      while (R->cur < sel_end && sel->col[R->cur] < b) R->cur++;
      in_sel = R->cur < sel_end && sel->col[R->cur] == b;
    }
    /* Outside the selected blocks, single key columns may be selected. */
    const bool has_cols = !in_sel && R->sel_row >= 0 && sel->vrow_ptr;
    const int64_t vend = has_cols ? sel->vrow_ptr[R->sel_row + 1] : 0;
    double lseg = 0, lcol = 0;
    for (; j < seg_end; j++) {
      const double w = exp(sbuf[j - c0] - m);
      const double *v = vd + (size_t)(j - c0) * d;
      lseg += w;
      for (int x = 0; x < d; x++) acc[x] += w * v[x];
      if (has_cols) {
        while (R->vcur < vend && sel->vcol[R->vcur] < j) R->vcur++;
        if (R->vcur < vend && sel->vcol[R->vcur] == j) lcol += w;
      }
    }
    R->l += lseg;
    if (in_sel) R->lsel += lseg;
    else R->lsel += lcol;
  }
}

/* Is key `key` (in key block b) selected in the row: its block, or it as a key column? */
static bool sel_has(const sr_selection *sel, int64_t row, int64_t b, int64_t key) {
  int64_t lo = sel->row_ptr[row], hi = sel->row_ptr[row + 1];
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (sel->col[mid] < b) lo = mid + 1;
    else hi = mid;
  }
  if (lo < sel->row_ptr[row + 1] && sel->col[lo] == b) return true;
  if (!sel->vrow_ptr) return false;
  lo = sel->vrow_ptr[row], hi = sel->vrow_ptr[row + 1];
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (sel->vcol[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo < sel->vrow_ptr[row + 1] && sel->vcol[lo] == key;
}

typedef struct vwork {
  double *q, *acc, *kd, *vd; /* kd holds the key chunk transposed, [d][cn] */
  float *kf, *vf, *qf;
  vrow *rows;
  sr_needle *needles;
  /* [VERIFY_BATCH] per needle row of one needle: batch index, best logit (unscaled) and its
   * key, weight on the key span */
  int64_t *nrow, *nbest_j;
  double *nbest, *nmass;
} vwork;

static void vwork_free(vwork *w) {
  free(w->q);
  free(w->acc);
  free(w->kd);
  free(w->vd);
  free(w->kf);
  free(w->vf);
  free(w->qf);
  free(w->rows);
  free(w->needles);
  free(w->nrow);
  free(w->nbest_j);
  free(w->nbest);
  free(w->nmass);
}

/* Processes rows R[0..nb) (sorted by position) of kv-head kvh and adds to acc. */
static sr_status verify_batch(const sr_config *cfg, const sr_plan *p, int layer, int kvh,
                              sr_row_fn rowfn, void *ctx, const float *out_local,
                              const float *lse_local, const sr_selection *sel, vrow *R,
                              int64_t nb, const sr_needle *nd, int nneedle, vwork *w,
                              sr_quality *acc) {
  const int d = p->d;
  const double scale = 1.0 / sqrt((double)d);
  int64_t maxpos = 0;
  for (int64_t r = 0; r < nb; r++)
    if (R[r].pos > maxpos) maxpos = R[r].pos;

  /* Queries, in runs of consecutive positions of one head. */
  for (int64_t r = 0; r < nb;) {
    int64_t e = r + 1;
    while (e < nb && R[e].h == R[r].h && R[e].pos == R[e - 1].pos + 1 && e - r < VERIFY_CHUNK)
      e++;
    SR_TRY(rowfn(ctx, layer, 'q', R[r].h, R[r].pos, e - r, w->qf));
    for (int64_t i = r; i < e; i++)
      for (int x = 0; x < d; x++) w->q[(size_t)i * d + x] = (double)w->qf[(size_t)(i - r) * d + x];
    r = e;
  }
  memset(w->acc, 0, (size_t)nb * d * sizeof(double));
  for (int64_t r = 0; r < nb; r++) {
    R[r].m = -INFINITY;
    R[r].l = R[r].lsel = 0;
    R[r].cur = R[r].sel_row >= 0 ? sel->row_ptr[R[r].sel_row] : 0;
    R[r].vcur = R[r].sel_row >= 0 && sel->vrow_ptr ? sel->vrow_ptr[R[r].sel_row] : 0;
  }

  /* Keys 0..maxpos, each chunk generated once for the whole batch; rows whose position lies
   * before the chunk take nothing from it. */
  for (int64_t c0 = 0; c0 <= maxpos; c0 += VERIFY_CHUNK) {
    int64_t cn = maxpos + 1 - c0 < VERIFY_CHUNK ? maxpos + 1 - c0 : VERIFY_CHUNK;
    SR_TRY(rowfn(ctx, layer, 'k', kvh, c0, cn, w->kf));
    SR_TRY(rowfn(ctx, layer, 'v', kvh, c0, cn, w->vf));
    for (int64_t j = 0; j < cn; j++)
      for (int x = 0; x < d; x++) w->kd[(size_t)x * cn + j] = (double)w->kf[(size_t)j * d + x];
    for (size_t i = 0; i < (size_t)cn * d; i++) w->vd[i] = (double)w->vf[i];
    bool oom = false;
#pragma omp parallel
    {
      double *sbuf = malloc((size_t)cn * sizeof *sbuf);
      if (!sbuf) {
#pragma omp atomic write
        oom = true;
      }
#pragma omp for schedule(dynamic, 4)
      for (int64_t r = 0; r < nb; r++)
        if (sbuf)
          stream_chunk(&R[r], w->q + (size_t)r * d, w->acc + (size_t)r * d, d, p->bk, scale, sel,
                       c0, cn, w->kd, w->vd, sbuf);
      free(sbuf);
    }
    if (oom) return sr__seterr(SR_ERR_NOMEM, "out of memory allocating verification logits");
  }

  /* Compare and accumulate (serially, in row order). */
  for (int64_t r = 0; r < nb; r++) {
    const vrow *V = &R[r];
    const int h = V->h;
    const double inv = 1.0 / V->l;
    const double ref_lse = V->m + log(V->l);
    const float *o = out_local + ((size_t)h * p->n_local + V->lrow) * d;
    const double *a = w->acc + (size_t)r * d;
    double e2 = 0, r2 = 0;
    for (int x = 0; x < d; x++) {
      double ref = a[x] * inv;
      double diff = (double)o[x] - ref;
      e2 += diff * diff;
      r2 += ref * ref;
    }
    acc->err2[h] += e2;
    acc->ref2[h] += r2;
    acc->rows[h]++;
    if (lse_local) {
      double le = fabs((double)lse_local[(size_t)h * p->n_local + V->lrow] - ref_lse);
      if (!isfinite(le)) le = INFINITY;
      if (le > acc->lse_maxerr || isnan(acc->lse_maxerr)) acc->lse_maxerr = le;
    }
    if (V->sel_row >= 0) {
      acc->recall[h] += V->lsel * inv;
      acc->recall_rows[h]++;
    }
  }

  /* Needles: the rows at positions [qpos, qpos + span) of needle t are its needle rows. Its
   * key span [kpos, kpos + span) is generated once per batch (in chunks); the reference
   * weight of key j for a row is exp(q.k_j / sqrt(d) - ref_lse). needle_mass adds the row's
   * weight on the whole key span; the row is a hit when its selection lists the block of the
   * span key it weighs most (the first of equals). With span 1 that is the needle key. */
  for (int t = 0; t < nneedle; t++) {
    const int64_t q0 = nd[t].qpos, q1 = nd[t].qpos + nd[t].span;
    const int64_t k0 = nd[t].kpos, k1 = nd[t].kpos + nd[t].span;
    int64_t nn = 0;
    for (int64_t r = 0; r < nb; r++)
      if (R[r].pos >= q0 && R[r].pos < q1) w->nrow[nn++] = r;
    if (nn == 0) continue;
    for (int64_t i = 0; i < nn; i++) {
      w->nbest[i] = -INFINITY;
      w->nbest_j[i] = k0;
      w->nmass[i] = 0;
    }
    for (int64_t c0 = k0; c0 < k1; c0 += VERIFY_CHUNK) {
      const int64_t cn = k1 - c0 < VERIFY_CHUNK ? k1 - c0 : VERIFY_CHUNK;
      SR_TRY(rowfn(ctx, layer, 'k', kvh, c0, cn, w->kf));
#pragma omp parallel for schedule(static) if (nn * cn >= 4096)
      for (int64_t i = 0; i < nn; i++) {
        const vrow *V = &R[w->nrow[i]];
        const double *qr = w->q + (size_t)w->nrow[i] * d;
        const double ref_lse = V->m + log(V->l);
        for (int64_t j = 0; j < cn; j++) {
          double s = 0;
          for (int x = 0; x < d; x++) s += qr[x] * (double)w->kf[(size_t)j * d + x];
          if (s > w->nbest[i]) {
            w->nbest[i] = s;
            w->nbest_j[i] = c0 + j;
          }
          w->nmass[i] += exp(s * scale - ref_lse);
        }
      }
    }
    for (int64_t i = 0; i < nn; i++) {
      const vrow *V = &R[w->nrow[i]];
      acc->needles[V->h]++;
      if (V->sel_row >= 0 && sel_has(sel, V->sel_row, w->nbest_j[i] / p->bk, w->nbest_j[i]))
        acc->needle_hits[V->h]++;
      acc->needle_mass[V->h] += w->nmass[i];
    }
  }
  return SR_OK;
}

sr_status sr_verify_layer(const sr_config *cfg, const sr_plan *p, int layer, sr_row_fn rows,
                          void *ctx, const float *out_local, const float *lse_local,
                          const sr_selection *sel, sr_quality *acc) {
  if (cfg->verify_rows == 0) return SR_OK;
  SR_ASSERT(p->q_heads == acc->q_heads && p->q_heads == cfg->q_heads);
  SR_ASSERT(p->kv_heads > 0 && p->group * p->kv_heads == p->q_heads && p->d > 0 && p->bk > 0);
  SR_ASSERT(sel == NULL || (sel->q_heads == p->q_heads && sel->nqb == p->nqb_local));
  const int d = p->d;
  const bool synthetic = cfg->input_source == SR_INPUT_SYNTHETIC;

  vwork w = {0};
  sr_status st = SR_OK;
  size_t cap = 0; /* rows allocated in w.rows */
  w.kd = malloc((size_t)VERIFY_CHUNK * d * sizeof(double));
  w.vd = malloc((size_t)VERIFY_CHUNK * d * sizeof(double));
  w.kf = malloc((size_t)VERIFY_CHUNK * d * sizeof(float));
  w.vf = malloc((size_t)VERIFY_CHUNK * d * sizeof(float));
  w.qf = malloc((size_t)VERIFY_CHUNK * d * sizeof(float));
  w.q = malloc((size_t)VERIFY_BATCH * d * sizeof(double));
  w.acc = malloc((size_t)VERIFY_BATCH * d * sizeof(double));
  int nneedle_max = synthetic ? (int)cfg->synth.needles : 0;
  if (nneedle_max > 0) {
    w.needles = malloc((size_t)nneedle_max * sizeof *w.needles);
    w.nrow = malloc((size_t)VERIFY_BATCH * sizeof *w.nrow);
    w.nbest_j = malloc((size_t)VERIFY_BATCH * sizeof *w.nbest_j);
    w.nbest = malloc((size_t)VERIFY_BATCH * sizeof *w.nbest);
    w.nmass = malloc((size_t)VERIFY_BATCH * sizeof *w.nmass);
  }
  if (!w.kd || !w.vd || !w.kf || !w.vf || !w.qf || !w.q || !w.acc ||
      (nneedle_max > 0 && (!w.needles || !w.nrow || !w.nbest_j || !w.nbest || !w.nmass))) {
    vwork_free(&w);
    return sr__seterr(SR_ERR_NOMEM, "out of memory allocating verification buffers");
  }

  for (int kvh = 0; kvh < p->kv_heads && st == SR_OK; kvh++) {
    int nneedle = nneedle_max > 0 ? sr_synth_needles(cfg, layer, kvh, w.needles, nneedle_max) : 0;
    /* This rank's sampled rows of every q-head of the group. */
    size_t nr = 0;
    for (int g = 0; g < p->group && st == SR_OK; g++) {
      const int h = kvh * p->group + g;
      int64_t *pos = NULL, np = 0;
      st = sr_verify_sample(cfg, layer, h, &pos, &np);
      if (st != SR_OK) break;
      for (int64_t i = 0; i < np; i++) {
        if (sr_plan_owner_of_pos(p, pos[i]) != p->rank) continue;
        if (nr == cap) {
          size_t nc = cap ? 2 * cap : 1024;
          vrow *nrw = realloc(w.rows, nc * sizeof *nrw);
          if (!nrw) {
            st = sr__seterr(SR_ERR_NOMEM, "out of memory listing verification rows");
            break;
          }
          w.rows = nrw;
          cap = nc;
        }
        vrow *V = &w.rows[nr++];
        memset(V, 0, sizeof *V);
        V->h = h;
        V->pos = pos[i];
        V->lrow = sr_plan_local_row(p, pos[i]);
        V->sel_row = sel ? (int64_t)h * p->nqb_local + V->lrow / p->bq : -1;
      }
      free(pos);
    }
    if (st != SR_OK || nr == 0) continue;
    qsort(w.rows, nr, sizeof *w.rows, cmp_vrow);
    for (size_t b0 = 0; b0 < nr && st == SR_OK; b0 += VERIFY_BATCH) {
      size_t nb = nr - b0 < VERIFY_BATCH ? nr - b0 : VERIFY_BATCH;
      st = verify_batch(cfg, p, layer, kvh, rows, ctx, out_local, lse_local, sel, w.rows + b0,
                        (int64_t)nb, w.needles, nneedle, &w, acc);
    }
  }
  vwork_free(&w);
  return st;
}
