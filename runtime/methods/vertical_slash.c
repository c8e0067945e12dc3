/*
 * vertical_slash.c — Vertical-Slash (docs/METHODS.md §2.1): the same V verticals and S slashes
 * budget for every q-head, chosen from the global last-W estimate with the probabilities
 * rounded to bf16 (as the paper's code); forced: keys 0..3 and offsets 0..63. Slashes become
 * bq x bk key-block tiles, verticals outside them gathered key columns.
 */
#include "sr_vs.h"
#include "sr_internal.h"

#include <stdlib.h>

sr_status sr__vs_patterns(const sr_method_in *in, int round_bf16, double alpha,
                          int64_t min_budget, int64_t V, int64_t S, sr_vs_pattern **out) {
  sr_vs_est est;
  double tp = sr__now();
  SR_TRY(sr_vs_estimate(in, in->cfg->last_q, round_bf16, &est));
  sr__prof("summarise: estimate", tp);
  tp = sr__now();
  const int H = in->p->q_heads;
  const int64_t n = in->p->n;
  sr_vs_pattern *pt = calloc(1, sizeof *pt);
  sr_status st = pt ? SR_OK : SR_ERR_NOMEM;
  if (pt) {
    pt->q_heads = H;
    pt->v = calloc((size_t)H, sizeof *pt->v);
    pt->s = calloc((size_t)H, sizeof *pt->s);
    pt->nv = calloc((size_t)H, sizeof *pt->nv);
    pt->ns = calloc((size_t)H, sizeof *pt->ns);
    if (!pt->v || !pt->s || !pt->nv || !pt->ns) st = SR_ERR_NOMEM;
  }
  /* Every rank picks every head (identical inputs, identical result): no communication. */
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; h++) {
    if (st != SR_OK) continue;
    const int64_t *vh = est.vert + (size_t)h * n, *sh = est.slash + (size_t)h * n;
    int64_t Vh = V, Sh = S;
    if (alpha >= 0) { /* FlexPrefill: coverage of the window-mean distribution */
      const double total = (double)est.W * 4294967296.0;
      const int64_t cv = sr_flex_cover(vh, n, total, alpha), cs = sr_flex_cover(sh, n, total, alpha);
      Vh = cv > min_budget ? cv : min_budget;
      Sh = cs > min_budget ? cs : min_budget;
    }
    Vh = Vh < n ? Vh : n;
    Sh = Sh < n ? Sh : n;
    int32_t *v = malloc((size_t)(Vh > 0 ? Vh : 1) * sizeof *v);
    int32_t *s = malloc((size_t)(Sh > 0 ? Sh : 1) * sizeof *s);
    sr_status hs = v && s ? sr_vs_pick(vh, sh, n, Vh, Sh, v, &pt->nv[h], s, &pt->ns[h])
                          : SR_ERR_NOMEM;
    pt->v[h] = v;
    pt->s[h] = s;
    if (hs != SR_OK) {
#pragma omp critical
      st = hs;
    }
  }
  sr_vs_est_free(&est);
  sr__prof("summarise: pick", tp);
  if (st != SR_OK) {
    if (pt) sr_vs_pattern_free(pt);
    free(pt);
    st = sr__seterr(SR_ERR_NOMEM, "out of memory picking verticals and slashes");
  }
  st = sr_comm_agree(in->comm, st);
  if (st == SR_OK) *out = pt;
  return st;
}

void sr__vs_free_state(void *state) {
  if (!state) return;
  sr_vs_pattern_free(state);
  free(state);
}

sr_status sr__vs_select(const sr_method_in *in, void *state, sr_selection *sel) {
  return sr_vs_select(in->p, state, sel);
}

static sr_status vs_summarise(const sr_method_in *in, void **state) {
  const sr_config *c = in->cfg;
  const int64_t V = c->verticals > 0 ? c->verticals : sr_vs_budget(in->p->n, c->sparsity);
  const int64_t S = c->slashes > 0 ? c->slashes : V;
  return sr__vs_patterns(in, 1, -1.0, 0, V, S, (sr_vs_pattern **)state);
}

const sr_method_ops sr_method_vertical_slash = {
    .id = SR_METHOD_VERTICAL_SLASH,
    .name = "vertical_slash",
    .phase = "prefill",
    .summarises = "softmax of the last W queries over all keys (global max and sum), summed "
                  "per key column and per diagonal, reduced over ranks",
    .selects = "bq x bk tiles under the top-S diagonals + top-V key columns outside them",
    .formula = "1 - (tiles bq bk + columns bq) / (q_heads N(N+1)/2)",
    .summarise = vs_summarise,
    .select = sr__vs_select,
    .free_state = sr__vs_free_state,
    .sparsity_paper = sr_vs_sparsity,
};
