/*
 * sr_plan.h — the geometry of a sharded run: which rank owns which tokens and blocks.
 *
 * The sequence [0, N) is cut into `nchunks` equal chunks (2P for zigzag, P for contiguous).
 * Zigzag: rank r owns chunks r and 2P-1-r, so causal work is balanced. A rank's local rows are
 * its chunks concatenated in ascending position order; every chunk holds a whole number of
 * q-blocks and k-blocks (checked here, with a message naming N, P and the block sizes).
 * The plan is pure arithmetic: every rank computes the same plan for every other rank.
 */
#ifndef SR_PLAN_H
#define SR_PLAN_H

#include "sr_config.h"

#include <stdint.h>

#define SR_MAX_CHUNKS_PER_RANK 2

typedef struct sr_plan {
  int nranks, rank;
  int64_t n;                 /* seq_len                                   */
  int bq, bk;                /* block sizes                               */
  int q_heads, kv_heads, d, group; /* group = q_heads / kv_heads           */
  sr_shard_scheme shard;
  int nchunks;               /* 2P (zigzag) or P (contiguous)             */
  int64_t chunk_tokens;      /* N / nchunks                               */
  int chunks_per_rank;       /* 2 or 1                                    */
  int64_t n_local;           /* tokens per rank = chunks_per_rank * chunk */
  int64_t nqb_global, nkb_global; /* N / bq, N / bk                       */
  int64_t nqb_local, nkb_local;   /* per rank                             */
} sr_plan;

/* Builds the plan; SR_ERR_SHAPE with a one-line message if N does not split into whole blocks
 * per chunk, if there are more ranks than chunks allow, if heads do not divide, or if a
 * 32-bit index would overflow: kv_heads x nkb_global (slot numbers, key-block ids, MPI request
 * counts), q_heads x nqb_global (CSR rows, MPI row counts) and, for block_sparse,
 * kv_heads x nkb_local x head_dim (the summaries' MPI count) must each be <= INT32_MAX
 * (the message names seq_len, the block sizes and the heads and says "use larger blocks"). */
sr_status sr_plan_init(sr_plan *p, const sr_config *cfg, int nranks, int rank);

/* Chunk index owned by `rank` as its c-th chunk (c < chunks_per_rank), ascending position. */
int sr_plan_chunk_of(const sr_plan *p, int rank, int c);
/* Rank owning global token position `pos`. */
int sr_plan_owner_of_pos(const sr_plan *p, int64_t pos);
/* Global position of local row `i` of `rank`. */
int64_t sr_plan_global_pos(const sr_plan *p, int rank, int64_t i);
/* Local row of global position `pos` on its owner. */
int64_t sr_plan_local_row(const sr_plan *p, int64_t pos);
/* Owner and local block index of global key block j. */
int sr_plan_kblock_owner(const sr_plan *p, int64_t j, int64_t *local_block);
/* Global index of local q-block m / k-block b of `rank`. */
int64_t sr_plan_qblock_global(const sr_plan *p, int rank, int64_t m);
int64_t sr_plan_kblock_global(const sr_plan *p, int rank, int64_t b);
/* The rank's rows as runs of consecutive global positions: starts[c], count = chunk_tokens.
 * Returns the number of runs (chunks_per_rank). */
int sr_plan_runs(const sr_plan *p, int rank, int64_t starts[SR_MAX_CHUNKS_PER_RANK]);

#endif
