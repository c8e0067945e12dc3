/*
 * sr_method.h — the method table: every attention method sparsering runs is one entry (name,
 * phase, what it summarises, how it selects, the paper's sparsity formula), one file per
 * method in runtime/methods/. The run (sr_run.c) calls summarise, then select, through the
 * entry and never branches on the method. docs/METHODS.md describes each rule.
 *
 *   dense            every causal block
 *   block_sparse     mean-pooled q-block . key-block scores, top-K blocks (§2.3)
 *   vertical_slash   global last-W estimate, top-V key columns + top-S diagonals (§2.1)
 *   flexprefill      the same estimate, coverage alpha per q-head with min_budget (§2.2)
 */
#ifndef SR_METHOD_H
#define SR_METHOD_H

#include "kernels.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_plan.h"
#include "sr_select.h"

/* What a method sees of one layer on this rank. */
typedef struct sr_method_in {
  const sr_config *cfg;
  const sr_plan *p;
  const sr_backend *be;
  MPI_Comm comm;
  const void *q;  /* [q_heads][n_local][d] backend storage */
  const void *k;  /* [kv_heads][n_local][d] backend storage */
} sr_method_in;

typedef struct sr_method_ops {
  sr_method id;
  const char *name;       /* the config name (attention.method)                       */
  const char *phase;      /* "prefill"                                                */
  const char *summarises; /* what the collective summary holds                        */
  const char *selects;    /* what a selection row lists                               */
  const char *formula;    /* the paper's sparsity formula, as printed in the report   */
  /* Collective (every rank calls it; failures agreed inside): whatever the selection needs
   * from other ranks. *state belongs to the method (free_state). NULL: nothing to do. */
  sr_status (*summarise)(const sr_method_in *in, void **state);
  /* Local: the selection of this rank's q-blocks (sr_select.h). */
  sr_status (*select)(const sr_method_in *in, void *state, sr_selection *sel);
  void (*free_state)(void *state);
  /* The paper's sparsity of the layer, from the selection of this rank and the sum of
   * sel->paper_pairs over all ranks. */
  double (*sparsity_paper)(const sr_plan *p, const sr_selection *sel, double paper_pairs_all);
} sr_method_ops;

/* The entry of a method (never NULL for a valid sr_method). */
const sr_method_ops *sr_method_get(sr_method m);

/* The entries, one per file. */
extern const sr_method_ops sr_method_dense, sr_method_block_sparse, sr_method_vertical_slash,
    sr_method_flexprefill;

#endif
