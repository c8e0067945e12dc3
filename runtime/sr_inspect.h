/*
 * sr_inspect.h — how concentrated attention is: the top-k attention-mass curve of any input.
 *
 * For sampled query rows of every q-head, the exact causal softmax over all keys 0..pos is
 * computed in float64 from rows delivered by a row function (sr_row_fn: synthetic input through
 * sr_verify_synth_rows, an HDF5 dump of real activations through sr_h5_read_head_rows), and
 * for each fraction f of the row's causal keys (k = ceil(f (pos + 1))) the share of the row's
 * attention carried by its k heaviest keys is recorded. Alongside: the mass on the first
 * `sinks` + last `recent` keys (the KV cache of a streaming head in DuoAttention: 64 + 256),
 * the mass on the first 4 keys (attention sinks), and the fraction of keys weighing at least
 * 1% of the row's largest weight (1 - that is H2O's sparsity measure).
 *
 * Sampling (the same whatever the rank count): `rows` positions per (layer, q-head), one in
 * each of `rows` equal strata of [from N, N), hashed from (seed, layer, q-head). Rows are split
 * over ranks round-robin; the sums of all ranks (sr_inspect_reduce) equal a one-rank run's.
 * Memory: the logits of a batch of rows (at most ~256 MB) plus one chunk of keys.
 */
#ifndef SR_INSPECT_H
#define SR_INSPECT_H

#include "sr_config.h"
#include "sr_verify.h"

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#define SR_INSPECT_MAX_K 16

typedef struct sr_inspect_opts {
  int64_t rows;                 /* sampled rows per q-head (default 16)                    */
  double from;                  /* rows are drawn from [from N, N) (default 0.5)           */
  int nk;                       /* fractions of causal keys (default 6)                    */
  double k[SR_INSPECT_MAX_K];   /* default 0.001 0.005 0.01 0.03125 0.05 0.1               */
  int64_t sinks, recent;        /* the streaming window: first 64 + last 256 keys          */
} sr_inspect_opts;

void sr_inspect_opts_default(sr_inspect_opts *o);

/* Sums over rows (and layers, ranks), per q-head. */
typedef struct sr_inspect_curve {
  int q_heads, nk;
  double k[SR_INSPECT_MAX_K];
  double *mass;    /* [q_heads][nk] top-k mass                                        */
  double *window;  /* [q_heads] mass on the first `sinks` and last `recent` keys      */
  double *sink4;   /* [q_heads] mass on keys 0..3                                      */
  double *above;   /* [q_heads] fraction of keys with weight >= 1% of the row's largest */
  int64_t *rows;   /* [q_heads] rows measured                                          */
  int *type;       /* [q_heads] sr_head_type of the head's kv-head; -1 unknown (HDF5)  */
} sr_inspect_curve;

sr_status sr_inspect_init(sr_inspect_curve *c, int q_heads, const sr_inspect_opts *o);
void sr_inspect_free(sr_inspect_curve *c);

/* The sampled positions of (layer, q_head), ascending and distinct; *pos malloc'd (may be NULL
 * with *n = 0). */
sr_status sr_inspect_sample(const sr_config *cfg, int layer, int q_head, const sr_inspect_opts *o,
                            int64_t **pos, int64_t *n);

/* Measures this rank's share (row r of a kv group goes to rank r mod nranks) of the sampled rows
 * of one layer and adds to *acc (head types too: from the synthetic generator when
 * cfg->input_source is synthetic, else -1). Failures of `rows` are returned unchanged. */
sr_status sr_inspect_layer(const sr_config *cfg, int layer, sr_row_fn rows, void *ctx,
                           const sr_inspect_opts *o, int rank, int nranks, sr_inspect_curve *acc);

/* Sums every field over `comm` (MPI_Allreduce, in place); call once. */
sr_status sr_inspect_reduce(sr_inspect_curve *c, MPI_Comm comm);

/* Mean over the measured rows of the heads of one type (type -1: every head) of the top-k mass
 * at fraction index ki (ki = -1: window mass, -2: first-4 mass, -3: fraction above 1% of the
 * max). NAN if no row. *rows (may be NULL) gets the row count. */
double sr_inspect_mean(const sr_inspect_curve *c, int type, int ki, int64_t *rows);

/* A calibration goal of the synthetic generator (docs/SYNTHETIC.md, "Targets"). */
typedef enum {
  SR_GOAL_MASS = 0,   /* top-k mass at fraction f                       */
  SR_GOAL_WINDOW = 1, /* mass on the first `sinks` + last `recent` keys  */
  SR_GOAL_SINK4 = 2,  /* mass on keys 0..3                              */
  SR_GOAL_ABOVE = 3,  /* fraction of keys >= 1% of the row's largest    */
} sr_goal_measure;
typedef struct sr_inspect_goal {
  double value, tol; /* two-sided: |measured - value| <= tol                  */
  int sense;         /* 0 two-sided, +1 measured >= value, -1 measured <= value */
  const char *source; /* where the number comes from (a short citation)       */
} sr_inspect_goal;
/* The goal for heads of one type (sr_head_type; -1: all heads, defined only when the realised
 * kv-head counts of cfg are in the default ratio 1 sink : 1 local : 2 retrieval) and one measure
 * (f: the fraction, for SR_GOAL_MASS), for rows with at least min_keys causal keys. Streaming
 * heads (sink, local) have top-k goals only where ceil(f min_keys) >= 320 (their 64 + 256-token
 * cache fits). False if there is none. */
bool sr_inspect_goal_of(const sr_config *cfg, int type, sr_goal_measure m, double f,
                        int64_t min_keys, sr_inspect_goal *g);
/* Whether a measured value meets a goal. */
bool sr_inspect_goal_met(const sr_inspect_goal *g, double measured);

/* `sparsering inspect`: getopt_long over argv[1..] (argv[0] is the command name); initialises
 * and finalises MPI itself. Returns the process exit code. */
int sr_inspect_main(int argc, char **argv);

#endif
