/*
 * sr_verify.h — exact dense causal attention, in float64, for sampled query rows, computed
 * independently of the sparse path, and the quality measures derived from it.
 *
 * The reference never touches the sparse path's buffers: it regenerates (or re-reads) q, k
 * and v through a row function, streams keys 0..pos in chunks (K/V are never held whole, and
 * never in double beyond one chunk), and compares the result with what the run produced.
 *
 * Sampling (the same set of positions whatever the rank count):
 *   verify_rows == -1  every position of every q-head;
 *   verify_rows == 0   nothing (sr_verify_layer returns at once);
 *   verify_rows == R   R positions per (layer, q-head): one per stratum of R equal strata of
 *                      [0, N), drawn by hash from (seed, layer, q-head); plus, for synthetic
 *                      input, every position of every needle's query span
 *                      [qpos, qpos + span) of the head's kv group.
 * Each rank checks the sampled positions it owns, so the per-head sums of all ranks, reduced,
 * equal those of a one-rank run.
 *
 * Measures, per q-head (sums, so layers and ranks add up):
 *   err2      sum over checked rows of ||out - ref||^2      (rel. error = sqrt(err2 / ref2))
 *   ref2      sum over checked rows of ||ref||^2
 *   recall    sum over rows of the reference softmax mass on the keys inside the blocks the
 *             row's selection lists (1 for a complete causal selection)
 *   needles / needle_hits   needle rows checked (one per (row, needle) with the row in the
 *             needle's query span) / those whose selection row holds the key block of the
 *             span key the reference weights most for that row (j* = argmax over
 *             [kpos, kpos + span) of q.k_j, the first of equals; block j* / bk), synthetic
 *             input only; with span 1 that is the block kpos / bk of the needle key
 *   needle_mass  sum over needle rows of the reference attention weight on the whole key span
 *   lse_maxerr   max over rows of |lse - ref_lse| (+inf if a value was not finite)
 */
#ifndef SR_VERIFY_H
#define SR_VERIFY_H

#include "sr_config.h"
#include "sr_plan.h"
#include "sr_select.h"

#include <mpi.h>
#include <stdint.h>

/* Rows [pos0, pos0 + count) of q ('q', head = q-head), k or v ('k' / 'v', head = kv-head) of
 * one layer at global positions, written to out[count][d]. Called from one thread at a time. */
typedef sr_status (*sr_row_fn)(void *ctx, int layer, char which, int head, int64_t pos0,
                               int64_t count, float *out);

/* The row function of synthetic input: ctx is a `const sr_config *` (sr_synth_rows). */
sr_status sr_verify_synth_rows(void *ctx, int layer, char which, int head, int64_t pos0,
                               int64_t count, float *out);

typedef struct sr_quality {
  int q_heads;
  double *err2, *ref2;        /* [q_heads] */
  double *recall;             /* [q_heads] sum of per-row selected mass            */
  double *needle_mass;        /* [q_heads] sum of reference weight on needle spans */
  int64_t *rows;              /* [q_heads] rows compared (err2, ref2, lse)         */
  int64_t *recall_rows;       /* [q_heads] rows with a selection (recall)          */
  int64_t *needles;           /* [q_heads] needle rows checked                      */
  int64_t *needle_hits;       /* [q_heads]                                          */
  double lse_maxerr;
} sr_quality;

/* Zeroed accumulators for q_heads heads (owned by *q; free with sr_quality_free). */
sr_status sr_quality_init(sr_quality *q, int q_heads);
void sr_quality_free(sr_quality *q);
/* Sums every field (max for lse_maxerr) over `comm` onto every rank (MPI_Allreduce, in
 * place). Call once, after the last layer: a second call would count the sums again. */
sr_status sr_quality_reduce(sr_quality *q, MPI_Comm comm);

/* The sampled positions of (layer, q_head), ascending and distinct (see the file comment).
 * *pos is malloc'd (caller frees with free()); *count may be 0 (then *pos is NULL). */
sr_status sr_verify_sample(const sr_config *cfg, int layer, int q_head, int64_t **pos,
                           int64_t *count);

/* Checks this rank's sampled rows of one layer and adds to *acc.
 *   out_local [q_heads][n_local][d], lse_local [q_heads][n_local] (NULL: lse not checked),
 *   local row order as in sr_plan.h;
 *   sel: the selection the rows were computed with (NULL: no recall, no needle hits).
 * Failures of `rows` are returned unchanged. */
sr_status sr_verify_layer(const sr_config *cfg, const sr_plan *p, int layer, sr_row_fn rows,
                          void *ctx, const float *out_local, const float *lse_local,
                          const sr_selection *sel, sr_quality *acc);

/* Relative error of one head, sqrt(err2 / ref2) (NAN if no row was checked). */
double sr_quality_rel_err(const sr_quality *q, int head);

/* The relative error a head may show before the run fails (verify.max_relerr): the configured
 * value when > 0; none (0) when it is 0; for -1 (auto) the tolerance of the storage type for
 * methods that claim exactness (dense: SR_VERIFY_TOL_FP32 for 4-byte, SR_VERIFY_TOL_BF16 for
 * 2-byte storage) and none for sparse methods, whose error is their approximation. */
#define SR_VERIFY_TOL_FP32 1e-4
#define SR_VERIFY_TOL_BF16 1e-2
double sr_verify_limit(const sr_config *cfg, size_t elem_bytes);

typedef struct sr_quality_summary {
  int64_t rows;              /* rows checked, all heads                          */
  double rel_err;            /* sqrt(sum err2 / sum ref2), all heads             */
  double rel_err_max;        /* max over heads of sr_quality_rel_err             */
  double lse_maxerr;
  double recall;             /* mean selected mass per row (NAN if no selection) */
  int64_t needles, needle_hits;
  double needle_hit_rate;    /* hits / needles (NAN if no needle row)            */
  double needle_mass;        /* mean reference weight on the key span (NAN)      */
} sr_quality_summary;

void sr_quality_summarize(const sr_quality *q, sr_quality_summary *s);

#endif
