/*
 * sr_plan.c — zigzag / contiguous sharding arithmetic.
 *
 * Invariant: chunk_tokens is a whole number of q-blocks and of k-blocks, so every block lives
 * on exactly one rank and local block m of a rank covers local rows [m*b, (m+1)*b).
 */
#include "sr_plan.h"
#include "sr_internal.h"

#include <stdint.h>

/* Whether a * b exceeds INT32_MAX (a > 0, b >= 0; no overflow in the test itself). */
static int over_int32(int64_t a, int64_t b) { return a > 0 && b > INT32_MAX / a; }

sr_status sr_plan_init(sr_plan *p, const sr_config *cfg, int nranks, int rank) {
  *p = (sr_plan){0};
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return sr__seterr(SR_ERR_INTERNAL, "bad rank %d of %d", rank, nranks);
  if (cfg->kv_heads < 1 || cfg->q_heads % cfg->kv_heads != 0)
    return sr__seterr(SR_ERR_SHAPE, "model.kv_heads (%d) must divide model.q_heads (%d)",
                      cfg->kv_heads, cfg->q_heads);
  p->nranks = nranks;
  p->rank = rank;
  p->n = cfg->seq_len;
  p->bq = cfg->block_q;
  p->bk = cfg->block_k;
  p->q_heads = cfg->q_heads;
  p->kv_heads = cfg->kv_heads;
  p->d = cfg->head_dim;
  p->group = cfg->q_heads / cfg->kv_heads;
  p->shard = cfg->shard;
  p->chunks_per_rank = cfg->shard == SR_SHARD_ZIGZAG ? 2 : 1;
  p->nchunks = nranks * p->chunks_per_rank;
  /* The unit seq_len must be a multiple of: nchunks chunks of whole q- and k-blocks. */
  int64_t g = p->bq, r = p->bk;
  while (r) {
    int64_t t = g % r;
    g = r;
    r = t;
  }
  const int64_t unit = (int64_t)p->nchunks * (p->bq / g * (int64_t)p->bk);
  if (p->n % p->nchunks != 0)
    return sr__seterr(SR_ERR_SHAPE,
                      "seq_len %lld does not split into %d equal %s chunks for %d ranks "
                      "(use a multiple of %lld = %d x lcm(block_q, block_k))",
                      (long long)p->n, p->nchunks, sr_shard_name(p->shard), nranks,
                      (long long)unit, p->nchunks);
  p->chunk_tokens = p->n / p->nchunks;
  if (p->chunk_tokens % p->bq != 0 || p->chunk_tokens % p->bk != 0)
    return sr__seterr(SR_ERR_SHAPE,
                      "seq_len %lld on %d ranks gives %s chunks of %lld tokens, not a whole "
                      "number of blocks (block_q %d, block_k %d); use a multiple of %lld = %d x "
                      "lcm(block_q, block_k)",
                      (long long)p->n, nranks, sr_shard_name(p->shard),
                      (long long)p->chunk_tokens, p->bq, p->bk, (long long)unit, p->nchunks);
  p->n_local = p->chunk_tokens * p->chunks_per_rank;
  p->nqb_global = p->n / p->bq;
  p->nkb_global = p->n / p->bk;
  p->nqb_local = p->n_local / p->bq;
  p->nkb_local = p->n_local / p->bk;
  /* 32-bit bounds. Everything downstream stores or passes these as int32/int, and the checks
   * here are what keeps them in range (comments at each use point back here):
   *   kv_heads x nkb_global   slot numbers and step-buffer slots (int32 slot_of, send_slots,
   *                           sr_attn_args.slot), key-block ids in a selection (int32 col),
   *                           request counts and displacements passed to MPI_Alltoallv (int);
   *   q_heads x nqb_global    CSR rows of a selection and of the attention lists, and with it
   *                           nqb (int in sr_attn_args) and per-rank row counts passed to
   *                           MPI_Gather/Allgather (int);
   *   kv_heads x nkb_local x head_dim   (block_sparse) key-block summary floats per rank, the
   *                           MPI_Allgather count in sr_summaries_gather (int).
   * A larger block shrinks all three. */
  const char *what = NULL, *also = "";
  int64_t a = 0, b = 0;
  if (over_int32(p->kv_heads, p->nkb_global))
    what = "kv_heads x key blocks (slot numbers)", a = p->kv_heads, b = p->nkb_global;
  else if (over_int32(p->q_heads, p->nqb_global))
    what = "q_heads x q-blocks (CSR rows)", a = p->q_heads, b = p->nqb_global;
  else if (cfg->method == SR_METHOD_BLOCK_SPARSE &&
           (over_int32(p->kv_heads, p->nkb_local) ||
            over_int32((int64_t)p->kv_heads * p->nkb_local, p->d)))
    what = "kv_heads x local key blocks x head_dim (summary floats per rank)",
    a = (int64_t)p->kv_heads * p->nkb_local, b = p->d, also = " (or more ranks)";
  else if ((cfg->method == SR_METHOD_VERTICAL_SLASH || cfg->method == SR_METHOD_FLEXPREFILL) &&
           (over_int32(p->kv_heads, p->n_local) || over_int32(p->q_heads, p->n)))
    what = "q_heads x tokens (key-column ids and the estimate's sums)", a = p->q_heads,
    b = p->n, also = " (vertical_slash and flexprefill index key columns with 32 bits)";
  if (what) {
    const double count = (double)a * (double)b;
    *p = (sr_plan){0};
    return sr__seterr(SR_ERR_SHAPE,
                      "seq_len %lld with block_q %d, block_k %d, %d q-heads and %d kv-heads on "
                      "%d rank%s: %s = %.0f exceeds the 32-bit limit %d; use larger blocks%s",
                      (long long)cfg->seq_len, cfg->block_q, cfg->block_k, cfg->q_heads,
                      cfg->kv_heads, nranks, nranks == 1 ? "" : "s", what, count,
                      (int)INT32_MAX, also);
  }
  return SR_OK;
}

int sr_plan_chunk_of(const sr_plan *p, int rank, int c) {
  if (p->shard == SR_SHARD_CONTIGUOUS) return rank;
  return c == 0 ? rank : 2 * p->nranks - 1 - rank;
}

/* Rank and slot (0 or 1 among the rank's chunks) of chunk `chunk`. */
static int chunk_owner(const sr_plan *p, int chunk, int *c) {
  if (p->shard == SR_SHARD_CONTIGUOUS) {
    *c = 0;
    return chunk;
  }
  if (chunk < p->nranks) {
    *c = 0;
    return chunk;
  }
  *c = 1;
  return 2 * p->nranks - 1 - chunk;
}

int sr_plan_owner_of_pos(const sr_plan *p, int64_t pos) {
  int c;
  return chunk_owner(p, (int)(pos / p->chunk_tokens), &c);
}

int64_t sr_plan_global_pos(const sr_plan *p, int rank, int64_t i) {
  int c = (int)(i / p->chunk_tokens);
  return (int64_t)sr_plan_chunk_of(p, rank, c) * p->chunk_tokens + i % p->chunk_tokens;
}

int64_t sr_plan_local_row(const sr_plan *p, int64_t pos) {
  int c;
  chunk_owner(p, (int)(pos / p->chunk_tokens), &c);
  return (int64_t)c * p->chunk_tokens + pos % p->chunk_tokens;
}

int sr_plan_kblock_owner(const sr_plan *p, int64_t j, int64_t *local_block) {
  int64_t pos = j * p->bk;
  if (local_block) *local_block = sr_plan_local_row(p, pos) / p->bk;
  return sr_plan_owner_of_pos(p, pos);
}

int64_t sr_plan_qblock_global(const sr_plan *p, int rank, int64_t m) {
  return sr_plan_global_pos(p, rank, m * p->bq) / p->bq;
}

int64_t sr_plan_kblock_global(const sr_plan *p, int rank, int64_t b) {
  return sr_plan_global_pos(p, rank, b * p->bk) / p->bk;
}

int sr_plan_runs(const sr_plan *p, int rank, int64_t starts[SR_MAX_CHUNKS_PER_RANK]) {
  int n = p->chunks_per_rank;
  for (int c = 0; c < n; c++) starts[c] = (int64_t)sr_plan_chunk_of(p, rank, c) * p->chunk_tokens;
  return n;
}
