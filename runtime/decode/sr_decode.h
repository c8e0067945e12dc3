/*
 * sr_decode.h — decode on a sharded KV cache (docs/DESIGN.md "Decode", docs/METHODS.md
 * §2.4-2.6): after the prompt of every sequence sits in the cache where the plan put it, each
 * step appends one token per sequence and attends its query over the rank's part of the cache;
 * the ranks' partial (out, lse) are merged with the log-sum-exp rule. No K or V crosses the
 * network: only queries' selections (Quest's page candidates), SnapKV's importance at the end of
 * the prompt, and the partial outputs.
 *
 * Cache of a rank (one layer): segments of seg_rows rows, one per (sequence b, kv-head g),
 * s = b * kv_heads + g. Rows [0, n_local) are the rank's prompt rows in the plan's local order;
 * rows [n_local, seg_rows) hold the decode pages the rank owns: decode page j (tokens
 * n + 16j .. n + 16j + 15) belongs to rank j mod P, in its slot j / P (rows n_local + 16 (j/P)
 * ...). Local page i covers rows [16i, 16i + 16): prompt pages first, then decode slots, both in
 * ascending global page order.
 *
 * Methods (attention.method with attention.phase: decode):
 *   dense       every key of the cache
 *   quest       pages of 16 tokens, min/max key summaries, the top token_budget / 16 pages by
 *               sum_d max(q min, q max) chosen globally (exact top-k over every rank's
 *               candidates), plus the current page
 *   snapkv      eviction at the end of the prompt: last-W window, group mean, avg-pool 21,
 *               first 4 and last 128 forced, top-C per kv-head; decode tokens are all kept
 *   ada_snapkv  the same with max aggregation, a per-head floor max(C/5, 132) and the rest of
 *               C x kv_heads allocated by one global top-k across heads (and ranks)
 */
#ifndef SR_DECODE_H
#define SR_DECODE_H

#include "kernels.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_plan.h"
#include "sr_run.h"
#include "sr_synth.h"

#include <stdint.h>

/* Tokens per page (Quest's page, the cache's unit of placement). */
#define SR_PAGE 16
/* SnapKV / Ada-SnapKV constants (the paper's code): pooling kernel, forced sinks and recent. */
#define SR_SNAP_POOL 21
#define SR_SNAP_SINKS 4
#define SR_SNAP_LOCAL 128

/* What the run gives the decode loop. */
typedef struct sr_decode_io {
  void *ctx;
  /* Collective. The prompt of sequence b: K then V, [2][kv_heads][n_local][d] backend storage
   * on this rank, valid until the next call; when cfg->prefill is a method, its prefill
   * attention is computed (and verified) first and *prefill_s is its time. */
  sr_status (*prompt)(void *ctx, int layer, int b, const void **kv, double *prefill_s);
  /* Local. Rows [pos0, pos0 + count) of sequence b (q: head = q-head; k, v: kv-head) as the
   * backend stores them (bf16-rounded on a bf16 backend), host floats [count][d]. Positions
   * >= seq_len are the decode tokens. */
  sr_status (*rows)(void *ctx, int layer, int b, char which, int head, int64_t pos0,
                    int64_t count, float *out);
  /* Local. The needles of (sequence b, kv-head) (synthetic input; NULL or 0 otherwise): a decode
   * query of a head with needles replays the question of needle t mod count (its first query
   * row), so that the quality check can ask whether the needle's keys were attended. */
  int (*needles)(void *ctx, int layer, int b, int kv_head, sr_needle *out, int max);
} sr_decode_io;

/* One decoded layer. Rank 0 holds the arrays; every rank holds the metrics in r. */
typedef struct sr_decode_out {
  int64_t batch, steps;
  float *out;         /* [q_heads][batch * steps][d]: row b * steps + t                      */
  float *lse;         /* [q_heads][batch * steps]                                            */
  /* Selection CSR over rows h * batch + b (NULL for dense): quest: per step, the global page
   * ids attended (ascending, the current page included), steps concatenated; snapkv and
   * ada_snapkv: the prompt positions kept for h's kv-head (ascending). */
  int64_t *sel_ptr;   /* [q_heads * batch + 1] */
  int32_t *sel_idx;
  int64_t sel_nnz;
} sr_decode_out;

void sr_decode_out_free(sr_decode_out *o);

/* The budgets of the paper's formulas (docs/METHODS.md §3): quest's token budget (a multiple
 * of 16) and the SnapKV capacity per kv-head, from the explicit keys or from sparsity. */
int64_t sr_decode_quest_budget(const sr_config *cfg);
int64_t sr_decode_capacity(const sr_config *cfg);

/* Collective. Prompt, preparation and cfg->decode_steps steps of cfg->decode_batch sequences
 * of one layer; fills r (times max over ranks, counters summed, quality when verify.rows != 0)
 * and, on rank 0, *o. */
sr_status sr_decode_layer(const sr_config *cfg, const sr_plan *p, const sr_backend *be,
                          MPI_Comm comm, const sr_decode_io *io, int layer, sr_decode_out *o,
                          sr_layer_result *r);

/* ---- rules, exposed for tests (pure functions of their inputs) ---------------------------- */

/* SnapKV's choice for one kv-head: imp [n] (>= 0; pooled here with kernel SR_SNAP_POOL, zero
 * padding counted), first SR_SNAP_SINKS and last SR_SNAP_LOCAL forced; the top min(C, n) by
 * pooled value (ties: lower position) -> keep[] ascending positions; returns the count. */
int64_t sr_snapkv_choose(const int64_t *imp, int64_t n, int64_t C, int32_t *keep);
/* Ada-SnapKV's choice for all kv-heads: imp [H][n] (floats >= 0) pooled and forced as above;
 * floor m = max(C / 5, 132) per head, then the best H*C - H*m of the rest over all heads (ties:
 * lower head, then lower position). keep [H][n] scratch: keep[g*n ...] ascending positions,
 * cnt[g] their count. */
sr_status sr_ada_choose(const float *imp, int H, int64_t n, int64_t C, int32_t *keep,
                        int64_t *cnt);
/* Global top-k of candidates (score, id): the k best by score, ties lower id, written ascending
 * by rank into ids; returns how many (<= k, fewer when the candidates run out). -INFINITY
 * candidates are never chosen. */
int64_t sr_decode_topk_merge(const float *score, const int32_t *id, int64_t ncand, int64_t k,
                             int32_t *ids);

#endif
