/*
 * sr_vs.h — what Vertical-Slash and FlexPrefill share (docs/METHODS.md §2.1-2.2): the global
 * last-W estimate, the pick of verticals and slashes per q-head, and the conversion of a
 * q-head's pattern into key-block tiles and key columns per q-block.
 *
 * The estimate is collective and exact in its reductions: every sum is fixed point (units of
 * 2^-SR_EST_FIX_BITS, kernels.h), so the vertical and slash sums, and with them the
 * selection, are bit-identical for any rank count and either shard scheme.
 */
#ifndef SR_VS_H
#define SR_VS_H

#include "sr_method.h"

#include <stdint.h>

/* Per q-head sums over the whole sequence, identical on every rank. */
typedef struct sr_vs_est {
  int q_heads, W;  /* W actually used: min(last_q, n) */
  int64_t n;
  int64_t *vert;   /* [q_heads][n]: sum over the window of A[i][key], by key position   */
  int64_t *slash;  /* [q_heads][n]: sum over the window of A along offset o = query - key */
} sr_vs_est;

/* Collective. Broadcasts the last W queries, scores them on every rank against its keys,
 * normalises the causal softmax globally (row max and row sum all-reduced) and reduces the
 * vertical and slash sums over ranks. round_bf16: the probabilities are rounded to bf16
 * before summing (Vertical-Slash, as the paper's code); FlexPrefill keeps fp32. */
sr_status sr_vs_estimate(const sr_method_in *in, int W, int round_bf16, sr_vs_est *est);
void sr_vs_est_free(sr_vs_est *est);

/* One q-head's pattern: verticals ascending, slash offsets descending (keys ascending). */
typedef struct sr_vs_pattern {
  int q_heads;
  int32_t **v, **s;
  int64_t *nv, *ns;
} sr_vs_pattern;
void sr_vs_pattern_free(sr_vs_pattern *pt);

/* The k largest of x[0..n) (ties: lower index), in descending order of value. k <= n. */
void sr_vs_topk(const int64_t *x, int64_t n, int64_t k, int32_t *idx);
/* FlexPrefill's cover(x, alpha) over x normalised by `total`: the number of largest entries
 * whose running sum stays <= alpha, plus one, at most n. alpha = 0 gives 1. */
int64_t sr_flex_cover(const int64_t *x, int64_t n, double total, double alpha);
/* Forces keys 0..3 and offsets 0..63 (to +inf) and keeps the top V verticals (ascending) and
 * top S slash offsets (descending); V, S are clipped to n. vert and slash are not changed. */
sr_status sr_vs_pick(const int64_t *vert, const int64_t *slash, int64_t n, int64_t V, int64_t S,
                     int32_t *v, int64_t *nv, int32_t *s, int64_t *ns);

/* Index conversion of one q-block [qs, qs + bq) (docs/METHODS.md §2.1 "index conversion"):
 * each slash offset o < qs + bq covers the keys [max(qs - o, 0), qs + bq - 1 - o]; the key
 * blocks (size bk) those ranges touch are the tiles, ascending and unique. A vertical is kept
 * as a column iff it lies before qs and in no tile. s: offsets in descending order; v:
 * ascending. tiles needs room for min(ns * (floor((bq - 1) / bk) + 2), blocks) ids (a band of bq
 * keys touches up to that many blocks), cols for nv. */
void sr_vs_convert(int64_t qs, int bq, int bk, const int32_t *s, int64_t ns, const int32_t *v,
                   int64_t nv, int32_t *tiles, int64_t *ntiles, int32_t *cols, int64_t *ncols);

/* This rank's selection from the per-head patterns (tiles in col, columns in vcol). */
sr_status sr_vs_select(const sr_plan *p, const sr_vs_pattern *pt, sr_selection *sel);

/* The paper's VS sparsity: 1 - (tiles bq bk + columns bq) / (q_heads n (n+1) / 2). */
double sr_vs_sparsity(const sr_plan *p, const sr_selection *sel, double paper_pairs_all);

/* The table entries' shared parts (vertical_slash.c): estimate + per-head pick with fixed
 * budgets V, S (alpha < 0) or FlexPrefill's coverage (alpha >= 0, floor min_budget), as the
 * method's state; its release; the selection from it. */
sr_status sr__vs_patterns(const sr_method_in *in, int round_bf16, double alpha,
                          int64_t min_budget, int64_t V, int64_t S, sr_vs_pattern **out);
void sr__vs_free_state(void *state);
sr_status sr__vs_select(const sr_method_in *in, void *state, sr_selection *sel);

/* Budgets from a target sparsity by the paper's Table 3 (docs/METHODS.md §3). */
int64_t sr_vs_budget(int64_t n, double sparsity);
void sr_flex_params(int64_t n, double sparsity, double *alpha, int64_t *min_budget);

#endif
