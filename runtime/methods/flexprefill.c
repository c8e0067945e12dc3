/*
 * flexprefill.c — FlexPrefill as the paper runs it (docs/METHODS.md §2.2, tau = 0, so no
 * query-aware fallback): the same global estimate as Vertical-Slash in fp32, then per q-head
 * V = max(min_budget, cover(verticals, alpha)) and S = max(min_budget, cover(slashes, alpha)),
 * cover counting the largest entries of the window-mean distribution whose sum stays within
 * alpha. alpha = 0 is Vertical-Slash with V = S = min_budget. Same tiles and columns.
 */
#include "sr_vs.h"
#include "sr_internal.h"

static sr_status flex_summarise(const sr_method_in *in, void **state) {
  const sr_config *c = in->cfg;
  double alpha = c->alpha;
  int64_t mb = c->min_budget;
  if (alpha < 0 || mb == 0) {
    double ta;
    int64_t tm;
    sr_flex_params(in->p->n, c->sparsity, &ta, &tm);
    if (alpha < 0) alpha = ta;
    if (mb == 0) mb = tm;
  }
  return sr__vs_patterns(in, 0, alpha, mb, 0, 0, (sr_vs_pattern **)state);
}

const sr_method_ops sr_method_flexprefill = {
    .id = SR_METHOD_FLEXPREFILL,
    .name = "flexprefill",
    .phase = "prefill",
    .summarises = "as vertical_slash (fp32 probabilities), normalised to window means",
    .selects = "per q-head coverage budgets of tiles and columns, at least min_budget each",
    .formula = "1 - (tiles bq bk + columns bq) / (q_heads N(N+1)/2)",
    .summarise = flex_summarise,
    .select = sr__vs_select,
    .free_state = sr__vs_free_state,
    .sparsity_paper = sr_vs_sparsity,
};
