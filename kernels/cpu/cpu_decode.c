/*
 * cpu_decode.c — the decode ops of the CPU backend (kernels.h "Decode"): split-KV attention of
 * one new query per (sequence, q-head) over listed cache rows, Quest's page summaries, page
 * scores and per-list top-k, and the column max of the SnapKV-family estimate.
 *
 * decode_fwd splits every list into pieces of SPLIT_ENTRIES entries (a fixed count, not a
 * function of the thread count, so the result is the same for any number of threads); each
 * piece keeps an online softmax (running max, sum, weighted V) for the q-heads the list serves
 * (the whole GQA group reads each key once), and the pieces of a list are merged in ascending
 * order with the log-sum-exp rule. Scores are kept in base-2 units; the weights of an entry's
 * keys come from the vectorised float exp2 (a few ulp), one rescale per entry that raises the
 * max; sums and weighted values are accumulated in double, so that a different split of the
 * keys (over ranks) changes the result by little more than the rounding of the weights.
 */
#include "cpu_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define SPLIT_ENTRIES 64 /* entries (<= 16 rows each) per piece of a list */
#define MAX_GROUP 64     /* q-heads one list serves at most */

static inline int64_t nlists_of(const sr_decode_args *a) {
  return (int64_t)a->nseq * (a->per_qhead ? a->q_heads : a->kv_heads);
}

static sr_status decode_check(const sr_decode_args *a) {
  if (a->nseq <= 0 || a->q_heads <= 0 || a->kv_heads <= 0 || a->d <= 0 ||
      a->q_heads % a->kv_heads != 0 || a->seg_rows < 0 || a->own_stride < 0 || a->nshared < 0)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: bad shape (nseq %d, heads %d/%d, d %d)",
                      a->nseq, a->q_heads, a->kv_heads, a->d);
  if (a->d > 512) return sr__seterr(SR_ERR_SHAPE, "decode_fwd: head dim %d > 512", a->d);
  if (!a->per_qhead && a->q_heads / a->kv_heads > MAX_GROUP)
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: %d q-heads per kv-head (at most %d)",
                      a->q_heads / a->kv_heads, MAX_GROUP);
  if (a->tail_len < 0 || a->tail_len > 16 ||
      (a->tail_len > 0 && (a->tail_row < 0 || a->tail_row + a->tail_len > a->seg_rows)))
    return sr__seterr(SR_ERR_SHAPE, "decode_fwd: tail rows %d+%d outside the segment (%lld)",
                      a->tail_row, a->tail_len, (long long)a->seg_rows);
  const int64_t nl = nlists_of(a);
  for (int64_t e = 0; e < nl * a->own_stride; e++)
    if (a->own_len[e] < 0 || a->own_len[e] > 16 ||
        (a->own_len[e] > 0 && (a->own_row[e] < 0 || a->own_row[e] + a->own_len[e] > a->seg_rows)))
      return sr__seterr(SR_ERR_SHAPE, "decode_fwd: entry %lld (rows %d+%d) outside the segment "
                        "(%lld rows)", (long long)e, a->own_row[e], a->own_len[e],
                        (long long)a->seg_rows);
  for (int64_t e = 0; e < a->nshared; e++)
    if (a->shared_len[e] < 0 || a->shared_len[e] > 16 ||
        (a->shared_len[e] > 0 &&
         (a->shared_row[e] < 0 || a->shared_row[e] + a->shared_len[e] > a->seg_rows)))
      return sr__seterr(SR_ERR_SHAPE, "decode_fwd: shared entry %lld outside the segment",
                        (long long)e);
  return SR_OK;
}

/* Entry e of a list: own entries, then shared, then the tail. */
static inline void entry_of(const sr_decode_args *a, int64_t l, int64_t e, int32_t *row,
                            int32_t *len) {
  if (e < a->own_stride) {
    *row = a->own_row[l * a->own_stride + e];
    *len = a->own_len[l * a->own_stride + e];
  } else if (e < a->own_stride + a->nshared) {
    *row = a->shared_row[e - a->own_stride];
    *len = a->shared_len[e - a->own_stride];
  } else {
    *row = a->tail_row;
    *len = a->tail_len;
  }
}

sr_status sr__cpu_decode_fwd(const sr_decode_args *a) {
  SR_TRY(decode_check(a));
  const int d = a->d, group = a->q_heads / a->kv_heads;
  const int G = a->per_qhead ? 1 : group; /* q-heads per list */
  const int64_t nl = nlists_of(a);
  const int64_t nent = a->own_stride + a->nshared + 1;
  const int64_t nsplit = (nent + SPLIT_ENTRIES - 1) / SPLIT_ENTRIES;
  const int64_t nwork = nl * nsplit;
  /* Partial results per (list, split, q-head of the list): m (base 2), s, acc[d]. */
  float *pm = sr__alloc((size_t)nwork * G * sizeof(float));
  double *ps = sr__alloc((size_t)nwork * G * sizeof(double));
  double *pa = sr__alloc((size_t)nwork * G * (size_t)d * sizeof(double));
  if (!pm || !ps || !pa) {
    sr__free(pm);
    sr__free(ps);
    sr__free(pa);
    return sr__seterr(SR_ERR_NOMEM, "decode_fwd: out of memory for %lld partial rows",
                      (long long)(nwork * G));
  }
  const float *kb = a->k, *vb = a->v;
#pragma omp parallel for schedule(dynamic, 1) num_threads(sr__cpu_threads())
  for (int64_t w = 0; w < nwork; w++) {
    const int64_t l = w / nsplit, c = w % nsplit;
    const int64_t b = l / (a->per_qhead ? a->q_heads : a->kv_heads);
    const int64_t li = l % (a->per_qhead ? a->q_heads : a->kv_heads);
    const int64_t g = a->per_qhead ? li / group : li;   /* kv-head */
    const int64_t h0 = a->per_qhead ? li : li * group;  /* first q-head served */
    const size_t seg = ((size_t)b * (size_t)a->kv_heads + (size_t)g) * (size_t)a->seg_rows;
    float m[MAX_GROUP];
    double s[MAX_GROUP], *acc = pa + (size_t)w * G * d;
    for (int j = 0; j < G; j++) {
      m[j] = -INFINITY;
      s[j] = 0.0;
    }
    memset(acc, 0, (size_t)G * d * sizeof(double));
    const int64_t e1 = (c + 1) * SPLIT_ENTRIES < nent ? (c + 1) * SPLIT_ENTRIES : nent;
    const float zscale = a->scale * 1.44269504088896340736f; /* scores in base-2 units */
    float z[16], p[16];
    for (int64_t e = c * SPLIT_ENTRIES; e < e1; e++) {
      int32_t row, len;
      entry_of(a, l, e, &row, &len);
      if (len <= 0) continue;
      const float *ke = kb + (seg + (size_t)row) * (size_t)d;
      const float *ve = vb + (seg + (size_t)row) * (size_t)d;
      /* One entry (<= 16 keys) at a time per q-head: its scores, one rescale of the running
       * sum and output when the entry raises the max, then exp2 and P.V over the entry. */
      for (int j = 0; j < G; j++) {
        const float *q = a->q + ((size_t)b * a->q_heads + (size_t)(h0 + j)) * (size_t)d;
        float mb = -INFINITY;
        for (int32_t r = 0; r < len; r++) {
          const float *kr = ke + (size_t)r * (size_t)d;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int x = 0; x < d; x++) dot += q[x] * kr[x];
          z[r] = dot * zscale;
          mb = z[r] > mb ? z[r] : mb;
        }
        double *aj = acc + (size_t)j * d;
        if (mb > m[j]) {
          const double f = m[j] == -INFINITY ? 0.0 : exp2((double)m[j] - (double)mb);
          s[j] *= f;
#pragma omp simd
          for (int x = 0; x < d; x++) aj[x] *= f;
          m[j] = mb;
        }
        const float mj = m[j];
        double se = 0.0;
#pragma omp simd reduction(+ : se)
        for (int32_t r = 0; r < len; r++) {
          p[r] = sr__cpu_exp2(z[r] - mj);
          se += (double)p[r];
        }
        s[j] += se;
        for (int32_t r = 0; r < len; r++) {
          const double pr = (double)p[r];
          const float *vr = ve + (size_t)r * (size_t)d;
#pragma omp simd
          for (int x = 0; x < d; x++) aj[x] += pr * (double)vr[x];
        }
      }
    }
    for (int j = 0; j < G; j++) {
      pm[(size_t)w * G + j] = m[j];
      ps[(size_t)w * G + j] = s[j];
    }
  }
  /* Merge the pieces of each list in ascending order. */
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int64_t l = 0; l < nl; l++) {
    const int64_t b = l / (a->per_qhead ? a->q_heads : a->kv_heads);
    const int64_t li = l % (a->per_qhead ? a->q_heads : a->kv_heads);
    const int64_t h0 = a->per_qhead ? li : li * group;
    for (int j = 0; j < G; j++) {
      float M = -INFINITY;
      for (int64_t c = 0; c < nsplit; c++) {
        const float mc = pm[(size_t)(l * nsplit + c) * G + j];
        if (mc > M) M = mc;
      }
      const size_t r = (size_t)b * a->q_heads + (size_t)(h0 + j);
      float *o = a->out + r * (size_t)d;
      if (M == -INFINITY) {
        memset(o, 0, (size_t)d * sizeof(float));
        a->lse[r] = -INFINITY;
        continue;
      }
      double S = 0.0, od[512];
      for (int x = 0; x < d; x++) od[x] = 0.0;
      for (int64_t c = 0; c < nsplit; c++) {
        const size_t wj = (size_t)(l * nsplit + c) * G + j;
        if (pm[wj] == -INFINITY) continue;
        const double f = exp2((double)pm[wj] - (double)M);
        S += ps[wj] * f;
        const double *ac = pa + wj * (size_t)d;
        for (int x = 0; x < d; x++) od[x] += ac[x] * f;
      }
      for (int x = 0; x < d; x++) o[x] = (float)(od[x] / S);
      a->lse[r] = (float)(((double)M + log2(S)) * 0.69314718055994530942);
    }
  }
  sr__free(pm);
  sr__free(ps);
  sr__free(pa);
  return SR_OK;
}

sr_status sr__cpu_page_minmax(const void *kv, int64_t nseg, int64_t seg_rows, int d,
                                 int64_t lp, int64_t p0, int64_t np, int len, void *pminv,
                                 void *pmaxv) {
  if (nseg < 0 || seg_rows < 0 || d <= 0 || p0 < 0 || np < 0 || p0 + np > lp || len < 1 ||
      len > 16 || (np > 0 && 16 * (p0 + np - 1) + len > seg_rows))
    return sr__seterr(SR_ERR_SHAPE, "page_minmax: pages %lld+%lld of %d rows outside %lld pages "
                      "/ %lld rows", (long long)p0, (long long)np, len, (long long)lp,
                      (long long)seg_rows);
  const float *k = kv;
  float *pmin = pminv, *pmax = pmaxv;
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int64_t t = 0; t < nseg * np; t++) {
    const int64_t s = t / np, p = p0 + t % np;
    const float *r0 = k + ((size_t)s * seg_rows + (size_t)(16 * p)) * (size_t)d;
    float *mn = pmin + ((size_t)s * lp + (size_t)p) * (size_t)d;
    float *mx = pmax + ((size_t)s * lp + (size_t)p) * (size_t)d;
    for (int x = 0; x < d; x++) mn[x] = mx[x] = r0[x];
    for (int r = 1; r < len; r++)
      for (int x = 0; x < d; x++) {
        const float v = r0[(size_t)r * d + x];
        mn[x] = v < mn[x] ? v : mn[x];
        mx[x] = v > mx[x] ? v : mx[x];
      }
  }
  return SR_OK;
}

sr_status sr__cpu_page_scores(const float *q, int nseq, int q_heads, int kv_heads,
                                 int per_qhead, const void *pminv, const void *pmaxv, int64_t lp,
                                 int64_t nvalid, int d, float *s) {
  if (nseq <= 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || d <= 0 || lp < 0 ||
      nvalid < 0 || nvalid > lp)
    return sr__seterr(SR_ERR_SHAPE, "page_scores: bad shape (heads %d/%d, %lld of %lld pages)",
                      q_heads, kv_heads, (long long)nvalid, (long long)lp);
  const int group = q_heads / kv_heads;
  const int64_t nl = (int64_t)nseq * (per_qhead ? q_heads : kv_heads);
  const float *pmin = pminv, *pmax = pmaxv;
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int64_t t = 0; t < nl * nvalid; t++) {
    const int64_t l = t / nvalid, p = t % nvalid;
    const int64_t b = l / (per_qhead ? q_heads : kv_heads), li = l % (per_qhead ? q_heads : kv_heads);
    const int64_t g = per_qhead ? li / group : li, h0 = per_qhead ? li : li * group;
    const int G = per_qhead ? 1 : group;
    const float *mn = pmin + (((size_t)b * kv_heads + (size_t)g) * lp + (size_t)p) * d;
    const float *mx = pmax + (((size_t)b * kv_heads + (size_t)g) * lp + (size_t)p) * d;
    float tot = 0.0f;
    for (int j = 0; j < G; j++) {
      const float *qh = q + ((size_t)b * q_heads + (size_t)(h0 + j)) * d;
      float acc = 0.0f;
      for (int x = 0; x < d; x++) {
        const float u = qh[x] * mn[x], v = qh[x] * mx[x];
        acc += u > v ? u : v;
      }
      tot += acc;
    }
    s[(size_t)l * lp + (size_t)p] = tot;
  }
  return SR_OK;
}

/* i ranks before j: larger score, then lower index. */
static inline int ranks_before(const float *x, int64_t i, int64_t j) {
  return x[i] > x[j] || (x[i] == x[j] && i < j);
}

static void sift_down(const float *x, int64_t *h, int64_t p, int64_t len) {
  for (;;) {
    int64_t w = p, c1 = 2 * p + 1, c2 = c1 + 1;
    /* the root is the worst kept: a child that ranks after it goes up */
    if (c1 < len && ranks_before(x, h[w], h[c1])) w = c1;
    if (c2 < len && ranks_before(x, h[w], h[c2])) w = c2;
    if (w == p) return;
    int64_t t = h[p];
    h[p] = h[w];
    h[w] = t;
    p = w;
  }
}

sr_status sr__cpu_page_topk(const float *s, int64_t nlists, int64_t lp, int64_t nvalid, int k,
                               int32_t *own_row, int32_t *own_len, float *cand) {
  if (nlists < 0 || lp < 0 || nvalid < 0 || nvalid > lp || k < 0 || 16 * lp > INT32_MAX)
    return sr__seterr(SR_ERR_SHAPE, "page_topk: bad shape (%lld of %lld pages, k %d)",
                      (long long)nvalid, (long long)lp, k);
  const int64_t kk = k < nvalid ? k : nvalid;
  int err = 0;
#pragma omp parallel num_threads(sr__cpu_threads())
  {
    int64_t *h = kk > 0 ? malloc((size_t)kk * sizeof(int64_t)) : NULL;
    if (kk > 0 && !h) {
#pragma omp atomic write
      err = 1;
    }
#pragma omp for schedule(static)
    for (int64_t l = 0; l < nlists; l++) {
      if (kk > 0 && !h) continue;
      const float *x = s + (size_t)l * lp;
      for (int64_t i = 0; i < kk; i++) h[i] = i;
      for (int64_t i = kk / 2 - 1; i >= 0; i--) sift_down(x, h, i, kk);
      for (int64_t i = kk; i < nvalid; i++)
        if (kk > 0 && ranks_before(x, i, h[0])) {
          h[0] = i;
          sift_down(x, h, 0, kk);
        }
      /* the chosen pages in ascending order (the order the kernels read them) */
      for (int64_t i = 1; i < kk; i++) {
        const int64_t v = h[i];
        int64_t j = i - 1;
        for (; j >= 0 && h[j] > v; j--) h[j + 1] = h[j];
        h[j + 1] = v;
      }
      for (int64_t i = 0; i < k; i++) {
        const size_t o = (size_t)l * k + (size_t)i;
        if (i < kk) {
          own_row[o] = (int32_t)(16 * h[i]);
          own_len[o] = 16;
          cand[o] = x[h[i]];
        } else {
          own_row[o] = 0;
          own_len[o] = 0;
          cand[o] = -INFINITY;
        }
      }
    }
    free(h);
  }
  if (err) return sr__seterr(SR_ERR_NOMEM, "page_topk: out of memory");
  return SR_OK;
}

static inline float to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

sr_status sr__cpu_est_colmax(const float *L, int W, int64_t nk, const float *gmax,
                                const float *inv, int round_bf16, float *colmax) {
  if (W <= 0 || nk < 0) return sr__seterr(SR_ERR_SHAPE, "est_colmax: bad shape W=%d nk=%lld", W,
                                          (long long)nk);
#pragma omp parallel for schedule(static) num_threads(sr__cpu_threads())
  for (int64_t j = 0; j < nk; j++) {
    float best = colmax[j];
    for (int i = 0; i < W; i++) {
      if (gmax[i] == -INFINITY) continue;
      const float l = L[(size_t)i * (size_t)nk + (size_t)j];
      if (l == -INFINITY) continue;
      float p = expf(l - gmax[i]) * inv[i];
      if (round_bf16) p = to_bf16(p);
      if (p > best) best = p;
    }
    colmax[j] = best;
  }
  return SR_OK;
}

sr_status sr__cpu_copy_bytes(void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
  return SR_OK;
}
