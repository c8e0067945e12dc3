/*
 * sr_run.h — one whole run: input, summaries, selection, exchange + compute, verification,
 * output, metrics. Collective over the world communicator; every rank returns the same status.
 */
#ifndef SR_RUN_H
#define SR_RUN_H

#include "sr_comm.h"
#include "sr_config.h"

#include <stdint.h>
#include <stdio.h>

/* Phases of a layer. exchange and compute split the ring's time (on a GPU the host sees the
 * time to enqueue and the final wait, so only their sum is meaningful there); attention is that
 * sum taken on each rank before the max over ranks (the ring's wall time, the figure behind
 * GFLOP/s); download is the copy of out/lse to the host (GPU; a no-op copy on the CPU). */
enum { SR_PH_GENERATE, SR_PH_SUMMARISE, SR_PH_SELECT, SR_PH_EXCHANGE, SR_PH_COMPUTE,
       SR_PH_DOWNLOAD, SR_PH_VERIFY, SR_PH_WRITE, SR_PH_TOTAL, SR_PH_ATTENTION, SR_PH_COUNT };
extern const char *const sr_phase_names[SR_PH_COUNT];

typedef struct sr_layer_result {
  double t[SR_PH_COUNT];        /* seconds, max over ranks                                   */
  double t_min[SR_PH_COUNT];    /* seconds, min over ranks (0 for write; total before output) */
  double t_avg[SR_PH_COUNT];    /* seconds, mean over ranks (likewise; 0 in a resumed layer)  */
  uint64_t bytes_sent;          /* summed over ranks                                         */
  uint64_t bytes_recv_max;      /* the busiest rank                                          */
  uint64_t bytes_dense_ring;    /* what dense_ring moves for the same layer, summed          */
  uint64_t blocks_fetched;      /* remote (kv-head, block) items received, summed            */
  uint64_t pairs_computed;      /* visible (q, k) pairs computed, all heads, all ranks       */
  uint64_t pairs_causal;        /* q_heads * N(N+1)/2                                        */
  uint64_t nnz_blocks;          /* selected (q-head, q-block, k-block) entries               */
  uint64_t nnz_columns;         /* selected (q-head, q-block, key column) entries            */
  uint64_t columns_fetched;     /* key columns received as columns (not inside a block)      */
  double paper_pairs;           /* pairs the method's paper formula counts (VS: whole tiles) */
  double budget_v, budget_s;    /* verticals / slashes per q-head, mean (VS, FlexPrefill)    */
  int top_chunks;               /* Block-Sparse budget used (0 for dense)                   */
  double sparsity_paper;        /* docs/METHODS.md §3 formula for the method (0 for dense)        */
  double sparsity_measured;     /* 1 - pairs_computed / pairs_causal                         */
  double flops_effective;       /* 4 d pairs_causal (dense-equivalent)                       */
  double flops_sparse;          /* 4 d pairs_computed                                        */
  int dev_timed;                /* 1: the two device times below were measured               */
  double dev_lists_s, dev_kernel_s; /* device time (CUDA events) of the work-list builds and
                                       the attention kernels, max over ranks                   */
  /* quality (verify.rows != 0): per q-head then summarised */
  int verified;
  int64_t rows_checked;
  double relerr_max, relerr_mean, recall_mean, recall_min, lse_maxerr;
  int64_t needles, needle_hits;
  double *head_relerr, *head_recall; /* [q_heads], owned */
  /* decode (attention.phase: decode); the counters above then count (query, key) pairs of the
   * steps: pairs_causal = every key of the cache, pairs_computed = the keys attended */
  int decode;
  int64_t decode_steps, decode_batch;
  int64_t decode_budget;  /* quest: tokens per step; snapkv family: capacity per kv-head  */
  double prefill_s;       /* the prefill method's time before the steps (0: none)          */
  double step_s;          /* mean time per step (all sequences), max over ranks           */
  double kv_bytes_read;   /* K and V bytes the steps read (one read per GQA group)         */
} sr_layer_result;

typedef struct sr_run_result {
  int nranks, threads;
  const char *backend, *transport;
  int layers;
  sr_layer_result *layer; /* [layers], owned */
  double wall_s;
  char *rank_map;         /* "rank 0: host (threads 1)\n..." owned, rank 0 only */
  /* checkpoint (docs/CHECKPOINT.md) */
  char *ckpt_dir;         /* "<output.path>.partial.d" when checkpointing, owned              */
  int layers_resumed;     /* layers found done in the checkpoint (not recomputed)           */
  int stop_signal;        /* SIGTERM / SIGUSR1 that stopped the run at a layer boundary, or 0 */
  int stopped_at;         /* the first layer not computed when stopped                      */
  int layers_kept;        /* layers in the checkpoint left for --resume when stopped        */
  double ckpt_s;          /* seconds closing, snapshotting and recording layers             */
  double ckpt_hash_s;     /* seconds computing the layers' checksums                        */
  uint64_t ckpt_bytes;    /* bytes of snapshots, unit files and manifests written           */
  double resume_s;        /* seconds restoring and verifying the checkpoint                 */
  uint64_t resume_bytes;  /* bytes of completed layers re-verified                          */
} sr_run_result;

/* Runs cfg on the world. Results are complete on rank 0 (times and sums are reduced). A run
 * stopped by a signal (stop_signal != 0) returns SR_OK on every rank with its checkpoint kept;
 * the caller exits with SR_EXIT_INTERRUPTED. */
sr_status sr_run(const sr_config *cfg, const sr_world *w, sr_run_result *res);
void sr_run_result_free(sr_run_result *res);

/* Rank 0: prints the `#` header, per-layer rows and the summary (nccl-tests manner). */
void sr_report_print(const sr_config *cfg, const sr_run_result *res, FILE *f);
/* Rank 0: writes the same as JSON; SR_ERR_IO if the file cannot be written. */
sr_status sr_report_json(const sr_config *cfg, const sr_run_result *res, const char *path);
/* The same JSON as a malloc'd string (stored as an HDF5 attribute). */
char *sr_report_json_string(const sr_config *cfg, const sr_run_result *res, int layer);

#endif
