/*
 * sr_exchange.h — which KV blocks move between ranks, and the ring that moves them.
 *
 * Selected mode (the point of sparsering): every rank unions the remote (kv-head, key-block)
 * pairs its selection needs (q-heads of one GQA group share the fetch), sends each owner its
 * request list (MPI_Alltoall counts + MPI_Alltoallv ids), then P-1 ring-shift steps move
 * exactly those blocks: at step t rank r sends to (r+t) mod P what that rank asked of it and
 * receives from (r-t) mod P what it asked of that rank. Dense-ring mode passes whole KV shards
 * around the ring instead (classic ring attention): at step t rank r holds rank (r-t)'s shard.
 *
 * Step buffers are slot pools (kernels.h): K items then V items, each item bk*d floats (then
 * the requested key columns, see sr_xplan). Item
 * (kv-head h, global key block j) sits in its step buffer at slot slot_of[h*nkb_global + j];
 * for the rank's own blocks and in dense-ring mode that is h*nkb_local + local block.
 *
 * Overlap: the compute callback runs on the local shard while step 1 is in flight, and on the
 * buffer of step t while step t+1 is in flight (two receive and two send buffers).
 */
#ifndef SR_EXCHANGE_H
#define SR_EXCHANGE_H

#include "sr_comm.h"
#include "sr_config.h"
#include "sr_plan.h"
#include "sr_select.h"

#include <stdint.h>

typedef struct sr_xplan {
  int nranks, rank;
  sr_exchange_mode mode;
  int kv_heads;
  int64_t nkb_global, nkb_local;
  size_t item_elems;           /* bk * d: elements of one K (or V) block                     */
  /* selected mode: what I request from each owner, what each rank requests from me */
  int64_t *req_off;            /* [P+1] offsets into req_ids (ids grouped by owner)          */
  int64_t *req_ids;            /* id = kv_head * nkb_global + global key block, ascending    */
  int64_t *send_off;           /* [P+1] offsets into send_ids (grouped by requester)         */
  int64_t *send_ids;
  int32_t *slot_of;            /* [kv_heads * nkb_global]                                    */
  int32_t *owner;              /* [nkb_global] the rank holding each key block               */
  int32_t *send_slots;         /* [send_off[P]] local slot of each send_ids entry            */
  /* key columns (selections with columns, selected mode): a column whose key block is not
   * fetched anyway travels alone, as one row of d values in K and in V. A step buffer from
   * owner o is [K blocks][K columns][V blocks][V columns], the columns in creq order. */
  int64_t n;                   /* sequence length: column id = kv_head * n + position         */
  int d;
  int64_t *creq_off, *creq_ids;    /* [P+1], ascending ids grouped by owner                 */
  int64_t *csend_off, *csend_ids;  /* [P+1], grouped by requester                           */
  int32_t *csend_rows;             /* local pool row (kv_head * n_local + local row) of each */
  /* counters of this rank, accumulated over calls of sr_ring_run */
  uint64_t bytes_sent, bytes_recv, items_recv, cols_recv;
} sr_xplan;

/* Elements of one K (or V) half of the step buffer from `src` (selected mode). */
size_t sr_xplan_half_elems(const sr_xplan *x, int src);

/* Collective (exchanges request lists in selected mode). */
sr_status sr_xplan_build(sr_xplan *x, const sr_plan *p, const sr_selection *sel,
                         sr_exchange_mode mode, MPI_Comm comm);
void sr_xplan_free(sr_xplan *x);

/* Called once per source: src == own rank first (local shard), then each arriving step. k and v
 * are slot pools; `step` is 0 for local, t for ring step t. */
typedef sr_status (*sr_step_fn)(void *ctx, int step, int src, const void *k, const void *v);

typedef struct sr_ring_times {
  double exchange_s;  /* packing + waiting for messages (not hidden by compute) */
  double compute_s;   /* inside the callback */
} sr_ring_times;

/* Collective. kv_local: this rank's shard in backend memory, K [kv_heads][n_local][d] followed
 * by V of the same shape (storage type of `be`), so a dense-ring step sends it as one message.
 * Runs the P-1 steps overlapped with the callback. Every rank calls the callback P times at
 * most (a step with nothing is skipped in selected mode). Timings are host-side; on an
 * asynchronous backend they measure issue time unless the callback synchronises. Optional
 * progress: if progress_every_s > 0 rank 0 prints a line when a step ends more than that many
 * seconds after the previous line. */
sr_status sr_ring_run(sr_xplan *x, const sr_plan *p, const sr_backend *be, sr_transport *t,
                      const void *kv_local, sr_step_fn fn, void *ctx, sr_ring_times *times,
                      double progress_every_s);

#endif
