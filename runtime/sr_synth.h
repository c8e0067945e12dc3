/*
 * sr_synth.h — deterministic synthetic activations with structure a user can dial.
 *
 * Every value is a pure function of (seed, layer, head, position, dim): a rank generates its
 * own rows with no communication and the numbers do not depend on the rank count. Any rank can
 * also regenerate any other rank's rows (the verifier uses that to compute exact dense
 * attention independently of the sparse path).
 *
 * Structure (documented in docs/SYNTHETIC.md):
 *   - noise: i.i.d. Gaussian parts of q, k, v (counter-based RNG);
 *   - locality: a shared content vector rotated RoPE-style by position in q and k, so q_i.k_j
 *     is largest for small |i - j| (recency bias);
 *   - sinks: keys at positions < sink_tokens carry a component every query aligns with;
 *   - heavy hitters: a few key positions per kv-head (chosen by hash) carry a second shared
 *     direction every query aligns with (vertical lines in the attention map);
 *   - needles: per kv-head, planted (query span, key span) pairs far apart, sharing a random
 *     direction of their own: `needle_span` consecutive query positions and as many
 *     consecutive key positions, every query token of the span aligned with every key token
 *     of the span (a passkey sentence and the question about it); all q-heads of the group
 *     carry the query side. needle_span 1 gives single-token needles.
 *
 * Two profiles (input.synthetic.profile):
 *   - plain: every head has every feature at the configured strengths, the same for every
 *     query row (the generator as it was first written; bit for bit).
 *   - calibrated (the default): each kv-head of a layer is a sink, local or retrieval head
 *     (in the ratio sink_heads : local_heads : rest), with the features and strengths of its
 *     type; every strength grows with ln(causal keys of the query row), so that a feature
 *     keeps its share of a row's attention at any N; the noise of keys and queries is partly
 *     shared within clusters of cluster_tokens positions (content clusters), and local heads
 *     get slash lines. The per-type values and the published measurements they are fitted to
 *     are in docs/SYNTHETIC.md; sr_inspect measures the fit.
 */
#ifndef SR_SYNTH_H
#define SR_SYNTH_H

#include "sr_config.h"

#include <stdint.h>

/* A needle: query positions [qpos, qpos + span) and key positions [kpos, kpos + span), all
 * inside [0, N), with kpos + span <= qpos (every key of the span precedes every query of it). */
typedef struct sr_needle {
  int64_t qpos;  /* first query position */
  int64_t kpos;  /* first key position (far back) */
  int64_t span;  /* tokens on each side (sr_synth_needle_span: the same for every needle) */
} sr_needle;

/* Head types of the calibrated profile; every head of the plain profile is SR_HEAD_PLAIN. */
typedef enum sr_head_type {
  SR_HEAD_SINK = 0,      /* attention sinks and a short local window (A-shape, streaming) */
  SR_HEAD_LOCAL = 1,     /* local window, slash lines, vertical lines (vertical-slash)    */
  SR_HEAD_RETRIEVAL = 2, /* needles, verticals and a wide clustered tail (retrieval)      */
  SR_HEAD_PLAIN = 3,     /* plain profile: every feature at the configured strength       */
} sr_head_type;
#define SR_HEAD_TYPES 4

/* "sink", "local", "retrieval", "plain" ("?" out of range). */
const char *sr_head_type_name(sr_head_type t);

/* The type of (layer, kv_head). Calibrated: per layer, round(fraction * kv_heads) heads of each
 * type (largest remainders; ties to retrieval, then local), assigned to kv-heads in an order
 * hashed from (seed, layer). Depends only on (seed, layer, kv_head, kv_heads, the fractions). */
sr_head_type sr_synth_head_type(const sr_config *cfg, int layer, int kv_head);

/* The effective parameters of one kv-head (at the reference length, 16384 causal keys). */
typedef struct sr_synth_head {
  sr_head_type type;
  double sink, locality, heavy, needle, slash, noise; /* logits (nats) and noise std dev */
  int sink_tokens, heavy_hitters, needles, slashes;
  double cluster_share;
  int64_t cluster_tokens;
  double window;  /* 1: the locality strength grows with ln(key count) like the others; 0: fixed */
} sr_synth_head;
void sr_synth_head_params(const sr_config *cfg, int layer, int kv_head, sr_synth_head *out);

/* The reference causal key count of the calibrated strengths: a row with n causal keys gets
 * strength + ln(n / SR_SYNTH_REF_KEYS) (at least 0) for every feature. */
#define SR_SYNTH_REF_KEYS 16384

/* Writes rows [pos0, pos0 + count) of one head into out[count][d].
 * which: 'q' (head = q-head), 'k' or 'v' (head = kv-head). */
void sr_synth_rows(const sr_config *cfg, int layer, char which, int head, int64_t pos0,
                   int64_t count, float *out);

/* The span every needle of cfg has: input.synthetic.needle_span (0, possible only in configs
 * built in code, counts as 1), at most N / 2 so that both spans fit (1 if N < 2). */
int64_t sr_synth_needle_span(const sr_config *cfg);

/* Needles of (layer, kv_head): fills up to cfg->synth.needles entries, returns the count.
 * Positions depend only on (seed, layer, kv_head, seq_len, sink_tokens, needles, needle_span);
 * qpos is non-decreasing in the needle index. Calibrated profile: only retrieval heads have
 * needles (0 for the others). */
int sr_synth_needles(const sr_config *cfg, int layer, int kv_head, sr_needle *out, int max);

/* Heavy-hitter key positions of (layer, kv_head); returns the count. Calibrated profile: sink
 * heads have none. */
int sr_synth_heavy(const sr_config *cfg, int layer, int kv_head, int64_t *out, int max);

/* Slash offsets (query position minus key position at a slash line's centre) of (layer,
 * kv_head), ascending; returns the count (0 but for local heads of the calibrated profile). */
int sr_synth_slashes(const sr_config *cfg, int layer, int kv_head, int64_t *out, int max);

#endif
