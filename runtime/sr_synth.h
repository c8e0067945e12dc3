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

/* Writes rows [pos0, pos0 + count) of one head into out[count][d].
 * which: 'q' (head = q-head), 'k' or 'v' (head = kv-head). */
void sr_synth_rows(const sr_config *cfg, int layer, char which, int head, int64_t pos0,
                   int64_t count, float *out);

/* The span every needle of cfg has: input.synthetic.needle_span (0, possible only in configs
 * built in code, counts as 1), at most N / 2 so that both spans fit (1 if N < 2). */
int64_t sr_synth_needle_span(const sr_config *cfg);

/* Needles of (layer, kv_head): fills up to cfg->synth.needles entries, returns the count.
 * Positions depend only on (seed, layer, kv_head, seq_len, sink_tokens, needles, needle_span);
 * qpos is non-decreasing in the needle index. */
int sr_synth_needles(const sr_config *cfg, int layer, int kv_head, sr_needle *out, int max);

/* Heavy-hitter key positions of (layer, kv_head); returns the count. */
int sr_synth_heavy(const sr_config *cfg, int layer, int kv_head, int64_t *out, int max);

#endif
