/*
 * cpu_attn.c — block-sparse causal flash-attention forward on the CPU (fp32).
 *
 * Work: one CSR row = one (q-head h, local q-block m) = up to bq query rows; the row's entries
 * name the KV slots it attends to. Rows are independent, so OpenMP threads take rows with a
 * dynamic schedule (causal and sparse rows differ greatly in length), longest rows first.
 *
 * Data layout per row (the invariants the inner loops rely on):
 *   qt [d][bqp]   Q block transposed and pre-multiplied by scale*log2(e), so scores come out
 *                 in base-2 units and the softmax uses exp2 without a multiply per score.
 *                 Lanes >= the valid rows are zero (never NaN), so padded lanes stay finite.
 *   st [bk][bqp]  S^T = K . Q^T for the current block, overwritten in place by P^T.
 *   ot            unnormalised output, rescaled by alpha whenever the row max grows:
 *                 O [bq][d] when d is a multiple of 16, else O^T [d][bqp] (see attn_row).
 *   m, l          running max (base 2) and running sum per lane; alpha the rescale factor.
 * bqp = bq rounded up to 16 lanes. Each thread allocates these once per call.
 *
 * GQA rows share one pass. The q-heads of a GQA group read the same K/V slots; when their
 * rows at a q-block list the same entries (dense and causal rows always do; sparse rows do
 * when their selections agree), up to SR_CPU_MERGE_LANES / bqp such heads run as one row
 * whose lanes are the heads' queries side by side (head g at lanes g*bqp ..): each K/V block
 * is then read once for all of them, and small q-blocks (bq = 16) get the wide lane tiles of
 * large ones. Every lane's arithmetic is the same in either form, so merging never changes a
 * bit of the result.
 *
 * Masking. Only keys j < jn of a slot are ever read, jn = min(bk, kv_limit - kpos,
 * last query position + 1 - kpos): keys beyond the sequence end may be garbage in the pool,
 * and keys after the last query row are invisible to every row. Keys below jn that are
 * still in the future of some rows (the diagonal block) get -inf in S for those lanes.
 *
 * Empty rows. A lane that has seen no visible key has m = -inf; its exponent reference is
 * taken as 0 instead of m, so exp2(-inf - 0) = 0 and no -inf - -inf = NaN ever appears.
 * At the end such rows get out = 0 and lse = -inf, as kernels.h specifies.
 */
#include "cpu_internal.h"

#include <omp.h>

/* Most lanes one merged row may have (see "GQA rows share one pass" above). */
#define SR_CPU_MERGE_LANES 128
/* K/V prefetch: the block two entries ahead into L2, the next one into L1 (and the first
 * SR_CPU_PREFETCH_AHEAD blocks of a row while its Q is transposed). One block of compute
 * (bq = 16) is shorter than a fetch from L3 or memory; two ahead hid it (Block-Sparse rows at
 * 0.9, 16x16 blocks: 20-25% faster than one ahead on a 2-core EPYC), and the L2 step keeps two
 * 16 KB blocks (d 128) from flooding L1. */
#define SR_CPU_PREFETCH_AHEAD 2

/* Per-thread scratch, one allocation per thread per call. */
typedef struct attn_scratch {
  float *qt, *st, *ot;     /* [d][ld], [bk][ld], [d][ld]; ld = lanes of a merged row  */
  float *kc, *vc;          /* a column chunk's gathered K and V rows, [bk][d]       */
  float *m, *l;            /* running max (base 2) and sum, [ld]                    */
  float *alpha, *inv;      /* rescale of the old output; 1/l at the end, [ld]       */
  void *base;
} attn_scratch;

/* Runs on a worker thread, so it leaves the message to the calling thread (sr__seterr keeps
 * one message per thread). */
static sr_status attn_scratch_alloc(attn_scratch *w, int64_t d, int64_t bk, int64_t bqp) {
  const size_t floats = (size_t)bqp * (size_t)(2 * d + bk + 4) + 2 * (size_t)bk * (size_t)d;
  w->base = sr__alloc(floats * sizeof(float));
  if (!w->base) return SR_ERR_NOMEM;
  float *p = w->base;
  /* Every piece is a multiple of bqp floats, hence 64-byte aligned like the base. */
  w->qt = p, p += d * bqp;
  w->ot = p, p += d * bqp;
  w->st = p, p += bk * bqp;
  w->m = p, p += bqp;
  w->l = p, p += bqp;
  w->alpha = p, p += bqp;
  w->inv = p, p += bqp;
  w->kc = p, p += bk * d;
  w->vc = p;
  return SR_OK;
}

/*
 * Online softmax for one block of jn keys over L lanes: masks the future keys of the
 * diagonal block, updates m and l, writes alpha (the factor for the old output) and turns
 * st into P^T in place. The lanes are walked in groups of 16 with fixed-size inner loops, so
 * each inner loop is exactly one AVX-512 vector operation with its running max and sum in
 * registers (runtime-length loops cost more in set-up than in work at bq = 16).
 */
static inline __attribute__((always_inline)) void softmax_body(
    float *restrict st, int64_t bqp, int64_t jn, int64_t L, int64_t first_masked_key,
    int64_t key_minus_q, int64_t hstride, attn_scratch *w) {
  enum { LN = SR_CPU_LANES };
  /* Key j is in the future of query i of a head iff i < j + key_minus_q (key position - first
   * query position); only keys from first_masked_key on can be, so only those rows are
   * touched. The heads of a merged row start every hstride lanes (the last may be shorter). */
  for (int64_t j = first_masked_key; j < jn; j++) {
    float *restrict sj = st + j * bqp;
    for (int64_t g0 = 0; g0 < L; g0 += hstride) {
      const int64_t span = L - g0 < hstride ? L - g0 : hstride;
      const int64_t t = j + key_minus_q < span ? j + key_minus_q : span;
      for (int64_t i = 0; i < t; i++) sj[g0 + i] = -INFINITY;
    }
  }
  for (int64_t g = 0; g < L; g += LN) {
    float *restrict m = w->m + g, *restrict l = w->l + g, *restrict alpha = w->alpha + g;
    float mx[LN], ref[LN], sum[LN];
#pragma omp simd
    for (int i = 0; i < LN; i++) mx[i] = m[i];
    for (int64_t j = 0; j < jn; j++) {
      const float *restrict sj = st + j * bqp + g;
#pragma omp simd
      for (int i = 0; i < LN; i++) mx[i] = sj[i] > mx[i] ? sj[i] : mx[i];
    }
#pragma omp simd
    for (int i = 0; i < LN; i++) {
      ref[i] = mx[i] == -INFINITY ? 0.0f : mx[i];
      alpha[i] = sr__cpu_exp2(m[i] - ref[i]); /* m = -inf (nothing seen yet) gives 0 */
      m[i] = mx[i];
      sum[i] = 0.0f;
    }
    for (int64_t j = 0; j < jn; j++) {
      float *restrict sj = st + j * bqp + g;
#pragma omp simd
      for (int i = 0; i < LN; i++) {
        const float p = sr__cpu_exp2(sj[i] - ref[i]);
        sj[i] = p;
        sum[i] += p;
      }
    }
#pragma omp simd
    for (int i = 0; i < LN; i++) l[i] = l[i] * alpha[i] + sum[i];
  }
}

/* The softmax compiled once per kernel path (as the gemms are, in cpu_gemm.c), so that a
 * build without -march=native still runs it on AVX2 / AVX-512 vectors; chosen with the path. */
typedef void (*softmax_fn)(float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           attn_scratch *);
static void softmax_portable(float *st, int64_t bqp, int64_t jn, int64_t L, int64_t fm,
                             int64_t kmq, int64_t hs, attn_scratch *w) {
  softmax_body(st, bqp, jn, L, fm, kmq, hs, w);
}
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static void softmax_avx2(float *st, int64_t bqp, int64_t jn,
                                                             int64_t L, int64_t fm, int64_t kmq,
                                                             int64_t hs, attn_scratch *w) {
  softmax_body(st, bqp, jn, L, fm, kmq, hs, w);
}
__attribute__((target("avx512f"))) static void softmax_avx512(float *st, int64_t bqp, int64_t jn,
                                                              int64_t L, int64_t fm, int64_t kmq,
                                                              int64_t hs, attn_scratch *w) {
  softmax_body(st, bqp, jn, L, fm, kmq, hs, w);
}
#endif
static softmax_fn softmax_for_path(void) {
  const char *p = sr_cpu_kernel_path();
#if defined(__x86_64__) || defined(__i386__)
  if (strcmp(p, "avx512") == 0) return softmax_avx512;
  if (strcmp(p, "avx2") == 0) return softmax_avx2;
#endif
  (void)p;
  return softmax_portable;
}

/* Ask for the K and V block of a later entry while this one computes: sparse rows jump
 * between slots, which the hardware prefetchers cannot predict, and a 16-row block is too
 * short for them to ramp up. Prefetches never fault, so any slot number is safe here. */
static inline __attribute__((always_inline)) void prefetch_block(const float *k, const float *v,
                                                                  size_t off, size_t bytes) {
  const char *pk = (const char *)(k + off), *pv = (const char *)(v + off);
  for (size_t x = 0; x < bytes; x += 64) {
    __builtin_prefetch(pk + x);
    __builtin_prefetch(pv + x);
  }
}
static inline __attribute__((always_inline)) void prefetch_block_l2(const float *k, const float *v,
                                                                     size_t off, size_t bytes) {
  const char *pk = (const char *)(k + off), *pv = (const char *)(v + off);
  for (size_t x = 0; x < bytes; x += 64) {
    __builtin_prefetch(pk + x, 0, 2);
    __builtin_prefetch(pv + x, 0, 2);
  }
}

/* Prefetches the Q rows of (q-head h, q-block mb). Both prefetch helpers are always_inline:
 * GCC judges a function that only prefetches to be const and deletes calls to it. */
static inline __attribute__((always_inline)) void prefetch_q(const sr_attn_args *a, int64_t mb,
                                                             int h) {
  const int64_t i0 = mb * a->bq, qrows = a->nq - i0 < a->bq ? a->nq - i0 : a->bq;
  if (qrows <= 0) return;
  const char *q = (const char *)((const float *)a->q + ((size_t)h * (size_t)a->nq + (size_t)i0) * (size_t)a->d);
  const size_t bytes = (size_t)qrows * (size_t)a->d * sizeof(float);
  for (size_t x = 0; x < bytes; x += 64) __builtin_prefetch(q + x);
}

/*
 * One CSR row, or nh merged ones: q-heads h0 .. h0+nh-1 (identical entry lists), local q-block
 * mb. Lanes: head g's queries at g*hs .. g*hs + qrows - 1 (hs = bqp); ld = nh*bqp is the lane
 * stride of qt, st and O^T; the gemms run over LL = (nh-1)*hs + L lanes.
 * The output accumulator has two forms. When d is a multiple of 16 (every model shape),
 * O is row-major [lanes][d] and P.V runs with the head dim along the lanes: V rows are then
 * contiguous lane vectors (4 loads + 6 broadcasts per 24 FMAs even for bq = 16), the rescale
 * is per row, and the result needs no transpose. Otherwise O^T [d][ld] keeps the queries
 * along the lanes (V read as broadcasts), and is transposed back at the end.
 */
static void attn_row(const sr_attn_args *a, int h0, int nh, int64_t mb, int64_t bqp,
                     float qscale, softmax_fn softmax_block, attn_scratch *w) {
  const int64_t d = a->d, bk = a->bk, i0 = mb * a->bq;
  const int64_t qrows = a->nq - i0 < a->bq ? a->nq - i0 : a->bq;
  if (qrows <= 0) return;
  const int64_t L = sr__cpu_lanes_up(qrows), hs = bqp, ld = (int64_t)nh * bqp;
  const int64_t LL = (int64_t)(nh - 1) * hs + L;
  const int rowmajor = d % SR_CPU_LANES == 0;
  const size_t hq = (size_t)a->nq * (size_t)d; /* one head of q / out */

  const int64_t r = (int64_t)h0 * a->nqb + mb, e_end = a->row_ptr[r + 1];
  const size_t blk = (size_t)bk * (size_t)d;
  /* The first blocks of the row, which the loop's look-ahead never asks for: fetched while Q
   * is transposed. */
  for (int64_t e = a->row_ptr[r]; e < e_end && e < a->row_ptr[r] + SR_CPU_PREFETCH_AHEAD; e++)
    if (a->kpos[e] >= 0)
      prefetch_block((const float *)a->k, (const float *)a->v, (size_t)a->slot[e] * blk, blk * 4);

  /* Q^T, scaled; padded lanes zero. */
  for (int g = 0; g < nh; g++) {
    const float *q = (const float *)a->q + (size_t)(h0 + g) * hq + (size_t)i0 * (size_t)d;
    sr__cpu_transpose(q, qrows, d, d, w->qt + g * hs, ld, g == nh - 1 ? L : hs, qscale, NULL);
  }
  for (int64_t i = 0; i < LL; i++) {
    w->m[i] = -INFINITY;
    w->l[i] = 0.0f;
  }

  const int64_t qfirst = a->qpos[mb], qlast = qfirst + qrows - 1;
  int first = 1; /* the first computed block overwrites the accumulator instead of rescaling */
  for (int64_t e = a->row_ptr[r]; e < e_end; e++) {
    const int64_t kp = a->kpos[e];
    int64_t jn = bk, key_minus_q, first_masked;
    const float *kb, *vb;
    if (kp < 0) {
      /* A column chunk: gather its rows into a packed tile; every key is visible. */
      jn = -kp;
      const int32_t *rows = a->colrow + a->slot[e];
      for (int64_t j = 0; j < jn; j++) {
        memcpy(w->kc + j * d, (const float *)a->k + (size_t)rows[j] * (size_t)d,
               (size_t)d * sizeof(float));
        memcpy(w->vc + j * d, (const float *)a->v + (size_t)rows[j] * (size_t)d,
               (size_t)d * sizeof(float));
      }
      kb = w->kc, vb = w->vc;
      key_minus_q = -1; /* unused: nothing is masked */
      first_masked = jn;
    } else {
      if (a->kv_limit - kp < jn) jn = a->kv_limit - kp;
      if (qlast + 1 - kp < jn) jn = qlast + 1 - kp;
      if (jn <= 0) continue; /* entirely in the future or beyond the sequence end */
      kb = (const float *)a->k + (size_t)a->slot[e] * blk;
      vb = (const float *)a->v + (size_t)a->slot[e] * blk;
      if (e + 2 < e_end && a->kpos[e + 2] >= 0)
        prefetch_block_l2((const float *)a->k, (const float *)a->v, (size_t)a->slot[e + 2] * blk,
                          blk * 4);
      if (e + 1 < e_end && a->kpos[e + 1] >= 0)
        prefetch_block((const float *)a->k, (const float *)a->v, (size_t)a->slot[e + 1] * blk,
                       blk * 4);
      /* Keys with kp + j > qfirst are in the future of the first lanes. */
      key_minus_q = kp - qfirst;
      first_masked = key_minus_q >= 1 ? 0 : 1 - key_minus_q;
    }

    /* S^T[j][i] = sum_c K[j][c] * Qt[c][i]  (K read in place: row stride d). */
    sr__cpu_gemm_lanes(jn, LL, d, kb, d, 1, w->qt, ld, w->st, ld, NULL, NULL);
    softmax_block(w->st, ld, jn, LL, first_masked, key_minus_q, hs, w);
    if (rowmajor) /* O[i][c] = alpha[i] * O[i][c] + sum_j P^T[j][i] * V[j][c] */
      sr__cpu_gemm_lanes(LL - L + qrows, d, jn, w->st, 1, ld, vb, d, w->ot, d, NULL,
                         first ? NULL : w->alpha);
    else /* O^T[c][i] = alpha[i] * O^T[c][i] + sum_j V[j][c] * P^T[j][i] */
      sr__cpu_gemm_lanes(d, LL, jn, vb, 1, d, w->st, ld, w->ot, ld, first ? NULL : w->alpha,
                         NULL);
    first = 0;
  }
  if (first) memset(w->ot, 0, (size_t)(d * ld) * sizeof(float));

  /* Normalise by 1/l (0 for rows that saw nothing: their accumulator is exactly 0) into the
   * row-major output; lse in natural log. */
  for (int g = 0; g < nh; g++) {
    float *out = a->out + (size_t)(h0 + g) * hq + (size_t)i0 * (size_t)d;
    float *lse = a->lse + (size_t)(h0 + g) * (size_t)a->nq + (size_t)i0;
    const int64_t o = g * hs;
    float *inv = w->inv + o;
    for (int64_t i = 0; i < qrows; i++) {
      const int empty = w->m[o + i] == -INFINITY;
      inv[i] = empty ? 0.0f : 1.0f / w->l[o + i];
      lse[i] = empty ? -INFINITY
                     : (float)(((double)w->m[o + i] + log2((double)w->l[o + i])) *
                               0.69314718055994530942);
    }
    if (rowmajor) {
      for (int64_t i = 0; i < qrows; i++) {
        const float f = inv[i];
        const float *restrict oi = w->ot + (o + i) * d;
        float *restrict dst = out + i * d;
        for (int64_t c = 0; c < d; c++) dst[c] = oi[c] * f;
      }
    } else {
      sr__cpu_transpose(w->ot + o, d, qrows, ld, out, d, d, 1.0f, inv);
    }
  }
}

/* Rows r1 and r2 list the same entries (so they read the same K/V). */
static int rows_same(const sr_attn_args *a, int64_t r1, int64_t r2) {
  const int64_t b1 = a->row_ptr[r1], b2 = a->row_ptr[r2], n = a->row_ptr[r1 + 1] - b1;
  if (a->row_ptr[r2 + 1] - b2 != n) return 0;
  return n == 0 || (memcmp(a->kpos + b1, a->kpos + b2, (size_t)n * sizeof *a->kpos) == 0 &&
                    memcmp(a->slot + b1, a->slot + b2, (size_t)n * sizeof *a->slot) == 0);
}

/*
 * Which merged row head h belongs to at q-block mb: heads with identical rows form runs;
 * each run is cut into pieces of at most mmax heads from its first head. Returns the piece's
 * first head in *h0 and its size in *nh. Every head of a piece computes the same answer, so
 * the piece's first head does the work and the others skip.
 */
static void merge_piece(const sr_attn_args *a, int h, int64_t mb, int mmax, int *h0, int *nh) {
  *h0 = h, *nh = 1;
  if (mmax <= 1) return;
  int s = h; /* the run's first head */
  while (s > 0 && rows_same(a, (int64_t)(s - 1) * a->nqb + mb, (int64_t)s * a->nqb + mb)) s--;
  const int p = s + (h - s) / mmax * mmax;
  int n = 1;
  while (n < mmax && p + n < a->q_heads &&
         rows_same(a, (int64_t)p * a->nqb + mb, (int64_t)(p + n) * a->nqb + mb))
    n++;
  *h0 = p, *nh = n;
}

/* The pools' extent, when the caller gives it (kv_rows): every listed tile and column row must
 * lie inside it, as the CUDA backend's TMA maps need. Checked here too, so that runs on CPU
 * ranks (every exchange mode, any rank count) test the value the runtime passes. */
static sr_status check_extent(const sr_attn_args *a) {
  if (a->kv_rows <= 0) return SR_OK;
  const int64_t nnz = a->row_ptr[(int64_t)a->q_heads * a->nqb];
  for (int64_t e = 0; e < nnz; e++) {
    if (a->kpos[e] >= 0) {
      if (((int64_t)a->slot[e] + 1) * a->bk > a->kv_rows)
        return sr__seterr(SR_ERR_SHAPE, "attn_fwd: entry %lld: slot %d ends past the pools' "
                          "%lld rows", (long long)e, a->slot[e], (long long)a->kv_rows);
      continue;
    }
    for (int64_t c = 0; c < -a->kpos[e]; c++)
      if (a->colrow[a->slot[e] + c] >= a->kv_rows)
        return sr__seterr(SR_ERR_SHAPE, "attn_fwd: entry %lld: column row %d past the pools' "
                          "%lld rows", (long long)e, a->colrow[a->slot[e] + c],
                          (long long)a->kv_rows);
  }
  return SR_OK;
}

sr_status sr__cpu_attn_fwd(const sr_attn_args *a) {
  SR_TRY(sr__attn_args_check(a));
  SR_TRY(check_extent(a));
  if (a->nq == 0 || a->nqb == 0) return SR_OK;
  const int64_t rows = (int64_t)a->q_heads * a->nqb;
  const int64_t bqp = sr__cpu_lanes_up(a->bq);
  const int mmax = bqp >= SR_CPU_MERGE_LANES ? 1 : (int)(SR_CPU_MERGE_LANES / bqp);
  const float qscale = a->scale * 1.44269504088896340736f; /* log2(e) */
  const softmax_fn softmax = softmax_for_path();
  int nt = sr__cpu_threads();
  if ((int64_t)nt > rows) nt = (int)rows;
  int nomem = 0;

#pragma omp parallel num_threads(nt)
  {
    attn_scratch w = {0};
    const int ok = attn_scratch_alloc(&w, a->d, a->bk, bqp * mmax) == SR_OK;
    if (!ok) {
#pragma omp atomic write
      nomem = 1;
    }
    /* Every thread must reach the work-sharing loop; a thread without scratch skips rows,
     * and the call reports SR_ERR_NOMEM afterwards (outputs are then unspecified). */
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < rows; t++) {
      if (!ok) continue;
      /* Later q-blocks have more causal work: hand them out first. */
      const int64_t mb = a->nqb - 1 - t / a->q_heads;
      const int h = (int)(t % a->q_heads);
      /* The Q block of the row this thread most likely takes next (rows go out round-robin
       * while they cost about the same): it comes from memory, and at a few blocks per row
       * (high sparsity) its load latency is otherwise a visible share of the row. */
      const int64_t tn = t + nt;
      if (tn < rows) prefetch_q(a, a->nqb - 1 - tn / a->q_heads, (int)(tn % a->q_heads));
      int h0, nh;
      merge_piece(a, h, mb, mmax, &h0, &nh);
      if (h0 == h) attn_row(a, h0, nh, mb, bqp, qscale, softmax, &w);
    }
    sr__free(w.base);
  }
  if (nomem)
    return sr__seterr(SR_ERR_NOMEM, "attn_fwd: out of memory for per-thread scratch (%lld B)",
                      (long long)(((size_t)(bqp * mmax) * (size_t)(2 * a->d + a->bk + 4) +
                                   2 * (size_t)a->bk * (size_t)a->d) * 4));
  return SR_OK;
}
