/*
 * sr_exchange.c — request lists and the overlapped ring (see sr_exchange.h).
 *
 * Failure handling: a local failure inside the ring (an allocation, a callback error) must not
 * leave a peer waiting for a message forever. Buffers are allocated before the first step and
 * agreed on; after that, a rank whose callback fails keeps posting and completing every step
 * (sending what it owes) and only reports the error after the last step, where the caller
 * agrees on the status.
 */
#include "sr_exchange.h"
#include "sr_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>

void sr_xplan_free(sr_xplan *x) {
  sr__free(x->req_off);
  sr__free(x->req_ids);
  sr__free(x->send_off);
  sr__free(x->send_ids);
  sr__free(x->slot_of);
  sr__free(x->owner);
  sr__free(x->send_slots);
  sr__free(x->creq_off);
  sr__free(x->creq_ids);
  sr__free(x->csend_off);
  sr__free(x->csend_ids);
  sr__free(x->csend_rows);
  *x = (sr_xplan){0};
}

size_t sr_xplan_half_elems(const sr_xplan *x, int src) {
  size_t nb = (size_t)(x->req_off[src + 1] - x->req_off[src]);
  size_t nc = x->creq_off ? (size_t)(x->creq_off[src + 1] - x->creq_off[src]) : 0;
  return nb * x->item_elems + nc * (size_t)x->d;
}

/* Collective (selected mode with columns): the columns this rank needs that no fetched block
 * brings, their request lists (Alltoall counts, Alltoallv ids) and the rows to send. `need`
 * marks the fetched (kv-head, block) ids. */
static sr_status build_columns(sr_xplan *x, const sr_plan *p, const sr_selection *sel,
                               const uint8_t *need, MPI_Comm comm) {
  const int P = p->nranks, me = p->rank;
  const int64_t n = p->n, ncid = (int64_t)p->kv_heads * n;
  sr_status st = SR_OK;
  uint8_t *cneed = sr__calloc((size_t)ncid, 1);
  int *cs = sr__calloc((size_t)P, sizeof(int)), *cr = sr__calloc((size_t)P, sizeof(int));
  int *ds = sr__calloc((size_t)P, sizeof(int)), *dr = sr__calloc((size_t)P, sizeof(int));
  x->creq_off = sr__calloc((size_t)P + 1, sizeof(int64_t));
  x->csend_off = sr__calloc((size_t)P + 1, sizeof(int64_t));
  if (!cneed || !cs || !cr || !ds || !dr || !x->creq_off || !x->csend_off)
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the column requests");
  int64_t nreq = 0;
  const int32_t *bown = x->owner; /* block owners (sr_xplan_build) */
  if (st == SR_OK) {
    /* One kv-head per task: its q-heads write only its part of cneed. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int kvh = 0; kvh < p->kv_heads; kvh++)
      for (int h = kvh * p->group; h < (kvh + 1) * p->group; h++)
        for (int64_t m = 0; m < sel->nqb; m++) {
          const int64_t r = h * sel->nqb + m;
          for (int64_t e = sel->vrow_ptr[r]; e < sel->vrow_ptr[r + 1]; e++) {
            const int64_t pos = sel->vcol[e], b = pos / p->bk;
            if (bown[b] == me) continue;
            if (need[kvh * p->nkb_global + b]) continue; /* comes with its block */
            cneed[kvh * n + pos] = 1;
          }
        }
    for (int64_t id = 0; id < ncid; id++)
      if (cneed[id]) {
        x->creq_off[bown[(id % n) / p->bk] + 1]++;
        nreq++;
      }
    for (int o = 0; o < P; o++) x->creq_off[o + 1] += x->creq_off[o];
    x->creq_ids = sr__alloc((size_t)(nreq > 0 ? nreq : 1) * sizeof(int64_t));
    if (!x->creq_ids) st = sr__seterr(SR_ERR_NOMEM, "out of memory for the column requests");
  }
  if (st == SR_OK) {
    int64_t fill[P];
    for (int o = 0; o < P; o++) fill[o] = x->creq_off[o];
    for (int64_t id = 0; id < ncid; id++)
      if (cneed[id]) x->creq_ids[fill[bown[(id % n) / p->bk]]++] = id;
    for (int o = 0; o < P; o++) {
      const int64_t c = x->creq_off[o + 1] - x->creq_off[o];
      if (c > INT_MAX || x->creq_off[o] > INT_MAX) {
        st = sr__seterr(SR_ERR_SHAPE, "column request list of %lld entries is too long",
                        (long long)c);
        break;
      }
      cs[o] = (int)c;
      ds[o] = (int)x->creq_off[o];
    }
  }
  sr__free(cneed);
  st = sr_comm_agree(comm, st);
  if (st == SR_OK)
    st = sr_comm_agree(comm, sr__mpi_check(MPI_Alltoall(cs, 1, MPI_INT, cr, 1, MPI_INT, comm),
                                           "MPI_Alltoall(column counts)", __FILE__, __LINE__));
  int64_t total = 0;
  if (st == SR_OK) {
    for (int o = 0; o < P; o++) {
      if (total > INT_MAX) break;
      dr[o] = (int)total;
      x->csend_off[o] = total;
      total += cr[o];
    }
    x->csend_off[P] = total;
    if (total > INT_MAX) st = sr__seterr(SR_ERR_SHAPE, "too many key columns requested");
    x->csend_ids = sr__alloc((size_t)(total > 0 ? total : 1) * sizeof(int64_t));
    x->csend_rows = sr__alloc((size_t)(total > 0 ? total : 1) * sizeof(int32_t));
    if (st == SR_OK && (!x->csend_ids || !x->csend_rows))
      st = sr__seterr(SR_ERR_NOMEM, "out of memory for the column requests");
  }
  st = sr_comm_agree(comm, st);
  if (st == SR_OK)
    st = sr_comm_agree(comm, sr__mpi_check(MPI_Alltoallv(x->creq_ids, cs, ds, MPI_INT64_T,
                                                         x->csend_ids, cr, dr, MPI_INT64_T, comm),
                                           "MPI_Alltoallv(column ids)", __FILE__, __LINE__));
  for (int64_t i = 0; st == SR_OK && i < total; i++) {
    const int64_t id = x->csend_ids[i], h = id / n, pos = id % n;
    if (h >= p->kv_heads || sr_plan_owner_of_pos(p, pos) != me) {
      st = sr__seterr(SR_ERR_INTERNAL, "rank %d was asked for column %lld it does not own", me,
                      (long long)id);
      break;
    }
    /* < kv_heads x n_local <= INT32_MAX (sr_plan_init for methods with columns). */
    x->csend_rows[i] = (int32_t)(h * p->n_local + sr_plan_local_row(p, pos));
  }
  sr__free(cs);
  sr__free(cr);
  sr__free(ds);
  sr__free(dr);
  return st;
}

sr_status sr_xplan_build(sr_xplan *x, const sr_plan *p, const sr_selection *sel,
                         sr_exchange_mode mode, MPI_Comm comm) {
  *x = (sr_xplan){0};
  const int P = p->nranks, me = p->rank;
  x->nranks = P;
  x->rank = me;
  x->mode = mode;
  x->kv_heads = p->kv_heads;
  x->nkb_global = p->nkb_global;
  x->nkb_local = p->nkb_local;
  x->item_elems = (size_t)p->bk * (size_t)p->d;
  x->n = p->n;
  x->d = p->d;
  const int64_t nids = (int64_t)p->kv_heads * p->nkb_global;
  /* Every int32 slot and every int count or displacement below is at most nids, which
   * sr_plan_init bounds by INT32_MAX ("kv_heads x key blocks"). Identical on every rank (the
   * plan is), so failing here returns on all ranks alike, before any collective. */
  SR_ASSERT(nids <= INT32_MAX);

  sr_status st = SR_OK;
  int *cnt_send = NULL, *cnt_recv = NULL, *dis_send = NULL, *dis_recv = NULL;
  uint8_t *need = NULL;
  x->slot_of = sr__alloc((size_t)nids * sizeof(int32_t));
  x->owner = sr__alloc((size_t)(p->nkb_global > 0 ? p->nkb_global : 1) * sizeof(int32_t));
  x->req_off = sr__calloc((size_t)P + 1, sizeof(int64_t));
  x->send_off = sr__calloc((size_t)P + 1, sizeof(int64_t));
  if (!x->slot_of || !x->owner || !x->req_off || !x->send_off) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the exchange plan");
    goto done;
  }
  /* Owners, looked up once (every walk below and the work lists use them), and the
   * own-layout slots: what the local shard and dense-ring buffers use. */
  for (int64_t j = 0; j < p->nkb_global; j++) {
    int64_t lb = 0;
    x->owner[j] = sr_plan_kblock_owner(p, j, &lb);
    /* < kv_heads x nkb_local <= nids <= INT32_MAX (sr_plan_init). */
    for (int h = 0; h < p->kv_heads; h++)
      x->slot_of[h * p->nkb_global + j] = (int32_t)(h * p->nkb_local + lb);
  }
  if (mode == SR_EXCHANGE_DENSE_RING) goto done;

  /* Union of remote blocks needed, per kv-head (a GQA group shares one fetch). */
  need = sr__calloc((size_t)nids, 1);
  if (!need) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the exchange plan");
    goto done;
  }
  /* One rank has no remote blocks. Otherwise one thread per kv-head (it alone writes that
   * head's part of need): the walk runs over every selected entry. */
  const int32_t *own = x->owner;
#pragma omp parallel for schedule(dynamic, 1) if (P > 1)
  for (int kvh = 0; kvh < (P > 1 ? p->kv_heads : 0); kvh++)
    for (int h = kvh * p->group; h < (kvh + 1) * p->group && h < sel->q_heads; h++)
      for (int64_t e = sel->row_ptr[h * sel->nqb]; e < sel->row_ptr[(h + 1) * sel->nqb]; e++) {
        const int64_t j = sel->col[e];
        if (own[j] != me) need[kvh * p->nkb_global + j] = 1;
      }
  /* Request lists grouped by owner, ascending id inside each owner. */
  int64_t nreq = 0;
  for (int64_t id = 0; id < nids; id++)
    if (need[id]) {
      x->req_off[x->owner[id % p->nkb_global] + 1]++;
      nreq++;
    }
  for (int o = 0; o < P; o++) x->req_off[o + 1] += x->req_off[o];
  x->req_ids = sr__alloc((size_t)(nreq > 0 ? nreq : 1) * sizeof(int64_t));
  cnt_send = sr__calloc((size_t)P, sizeof(int));
  cnt_recv = sr__calloc((size_t)P, sizeof(int));
  dis_send = sr__calloc((size_t)P, sizeof(int));
  dis_recv = sr__calloc((size_t)P, sizeof(int));
  if (!x->req_ids || !cnt_send || !cnt_recv || !dis_send || !dis_recv) {
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the exchange plan");
    goto done;
  }
  {
    int64_t fill[P];
    for (int o = 0; o < P; o++) fill[o] = x->req_off[o];
    for (int64_t id = 0; id < nids; id++)
      if (need[id]) {
        int o = x->owner[id % p->nkb_global];
        /* In the step buffer from owner o, items sit in request order. < nreq <= nids <=
         * INT32_MAX (sr_plan_init). */
        x->slot_of[id] = (int32_t)(fill[o] - x->req_off[o]);
        x->req_ids[fill[o]++] = id;
      }
  }
  for (int o = 0; o < P; o++) {
    int64_t c = x->req_off[o + 1] - x->req_off[o];
    if (c > INT_MAX) {
      st = sr__seterr(SR_ERR_SHAPE, "request list of %lld blocks is too long", (long long)c);
      goto done;
    }
    /* MPI counts and displacements are int: c and req_off[o] are at most nreq <= nids <=
     * INT32_MAX (sr_plan_init "kv_heads x key blocks"); the check above is a second guard. */
    cnt_send[o] = (int)c;
    dis_send[o] = (int)x->req_off[o];
  }
done:
  /* Every rank must reach the collectives below or none: agree first. */
  st = sr_comm_agree(comm, st);
  if (st == SR_OK && mode == SR_EXCHANGE_SELECTED) {
    int rc = MPI_Alltoall(cnt_send, 1, MPI_INT, cnt_recv, 1, MPI_INT, comm);
    st = sr__mpi_check(rc, "MPI_Alltoall(request counts)", __FILE__, __LINE__);
    int64_t total = 0;
    if (st == SR_OK) {
      for (int o = 0; o < P; o++) {
        /* total counts distinct blocks of mine asked for by the other ranks, at most
         * (P-1) x kv_heads x nkb_local < nids <= INT32_MAX (sr_plan_init). */
        dis_recv[o] = (int)total;
        x->send_off[o] = total;
        total += cnt_recv[o];
      }
      x->send_off[P] = total;
      x->send_ids = sr__alloc((size_t)(total > 0 ? total : 1) * sizeof(int64_t));
      if (!x->send_ids) st = sr__seterr(SR_ERR_NOMEM, "out of memory for request lists");
    }
    st = sr_comm_agree(comm, st);
    if (st == SR_OK) {
      rc = MPI_Alltoallv(x->req_ids, cnt_send, dis_send, MPI_INT64_T, x->send_ids, cnt_recv,
                         dis_recv, MPI_INT64_T, comm);
      st = sr__mpi_check(rc, "MPI_Alltoallv(request ids)", __FILE__, __LINE__);
    }
    /* Local slot of every block requested from me: what the packing gathers. */
    if (st == SR_OK) {
      x->send_slots = sr__alloc((size_t)(total > 0 ? total : 1) * sizeof(int32_t));
      if (!x->send_slots) st = sr__seterr(SR_ERR_NOMEM, "out of memory for request lists");
      for (int64_t i = 0; st == SR_OK && i < total; i++) {
        int64_t id = x->send_ids[i], h = id / p->nkb_global, lb = 0;
        if (h >= p->kv_heads || sr_plan_kblock_owner(p, id % p->nkb_global, &lb) != me) {
          st = sr__seterr(SR_ERR_INTERNAL, "rank %d was asked for block id %lld it does not own",
                          me, (long long)id);
          break;
        }
        x->send_slots[i] = (int32_t)(h * p->nkb_local + lb); /* < nids (sr_plan_init) */
      }
    }
    /* Every rank has the same method, so either all build column lists or none (one rank:
     * every column is local, there is nothing to request). */
    if (sel->vrow_ptr && P > 1) {
      st = sr_comm_agree(comm, st);
      if (st == SR_OK) st = build_columns(x, p, sel, need, comm);
    }
  }
  sr__free(need);
  sr__free(cnt_send);
  sr__free(cnt_recv);
  sr__free(dis_send);
  sr__free(dis_recv);
  if (st != SR_OK) sr_xplan_free(x);
  return st;
}

sr_status sr_ring_run(sr_xplan *x, const sr_plan *p, const sr_backend *be, sr_transport *t,
                      const void *kv_local, sr_step_fn fn, void *ctx, sr_ring_times *times,
                      double progress_every_s) {
  const int P = x->nranks, me = x->rank;
  const size_t it = x->item_elems, eb = be->elem_bytes;
  const size_t shard_elems = (size_t)x->kv_heads * (size_t)x->nkb_local * it;
  const bool dense = x->mode == SR_EXCHANGE_DENSE_RING;
  sr_ring_times tm = {0};
  sr_status st = SR_OK, cb = SR_OK;
  char *recv[2] = {NULL, NULL}, *send[2] = {NULL, NULL};

  /* Buffer sizes: dense ring moves whole shards (K then V); selected moves the largest list. */
  size_t recv_bytes = 0, send_bytes = 0;
  if (dense) {
    recv_bytes = 2 * shard_elems * eb;
  } else {
    for (int o = 0; o < P; o++) {
      size_t r = sr_xplan_half_elems(x, o) * 2 * eb;
      size_t s = ((size_t)(x->send_off[o + 1] - x->send_off[o]) * it +
                  (x->csend_off ? (size_t)(x->csend_off[o + 1] - x->csend_off[o]) * x->d : 0)) *
                 2 * eb;
      if (r > recv_bytes) recv_bytes = r;
      if (s > send_bytes) send_bytes = s;
    }
  }
  for (int b = 0; P > 1 && b < 2 && st == SR_OK; b++) {
    if (recv_bytes) st = be->alloc(recv_bytes, (void **)&recv[b]);
    if (st == SR_OK && send_bytes) st = be->alloc(send_bytes, (void **)&send[b]);
  }
  st = sr_comm_agree(t->world->comm, st);
  if (st != SR_OK) goto out;

  /* Posts ring step s (1..P-1) into buffer parity s&1. Selected: gather the blocks (s+r)
   * asked for into a send buffer, one hop. Dense: forward the shard held (own at s = 1). */
#define RING_POST(s)                                                                               \
  do {                                                                                             \
    double t0_ = sr__now();                                                                        \
    if (dense) {                                                                                   \
      const void *sb_ = (s) == 1 ? kv_local : (const void *)recv[((s) - 1) & 1];                   \
      st = t->step_post(t, (s), sb_, 2 * shard_elems * eb, (me + 1) % P, recv[(s) & 1],            \
                        2 * shard_elems * eb, (me - 1 + P) % P);                                   \
      if (st == SR_OK) {                                                                           \
        x->bytes_sent += 2 * shard_elems * eb;                                                     \
        x->bytes_recv += 2 * shard_elems * eb;                                                     \
        x->items_recv += (uint64_t)x->kv_heads * (uint64_t)x->nkb_local;                           \
      }                                                                                            \
    } else {                                                                                       \
      int dst_ = (me + (s)) % P, src_ = (me - (s) + P) % P;                                        \
      int64_t ns_ = x->send_off[dst_ + 1] - x->send_off[dst_];                                     \
      int64_t nr_ = x->req_off[src_ + 1] - x->req_off[src_];                                       \
      int64_t cs_ = x->csend_off ? x->csend_off[dst_ + 1] - x->csend_off[dst_] : 0;                \
      int64_t cr_ = x->creq_off ? x->creq_off[src_ + 1] - x->creq_off[src_] : 0;                   \
      size_t half_ = ((size_t)ns_ * it + (size_t)cs_ * x->d) * eb;                                 \
      size_t rhalf_ = sr_xplan_half_elems(x, src_) * eb;                                           \
      char *sb_ = send[(s) & 1];                                                                   \
      const int32_t *sl_ = x->send_slots + x->send_off[dst_];                                      \
      const char *vl_ = (const char *)kv_local + shard_elems * eb;                                 \
      /* [K blocks][K columns][V blocks][V columns] */                                             \
      if (ns_ > 0) st = be->gather(sb_, kv_local, sl_, ns_, it);                                   \
      if (st == SR_OK && cs_ > 0)                                                                  \
        st = be->gather(sb_ + (size_t)ns_ * it * eb, kv_local,                                     \
                        x->csend_rows + x->csend_off[dst_], cs_, (size_t)x->d);                    \
      if (st == SR_OK && ns_ > 0) st = be->gather(sb_ + half_, vl_, sl_, ns_, it);                 \
      if (st == SR_OK && cs_ > 0)                                                                  \
        st = be->gather(sb_ + half_ + (size_t)ns_ * it * eb, vl_,                                  \
                        x->csend_rows + x->csend_off[dst_], cs_, (size_t)x->d);                    \
      if (st == SR_OK)                                                                             \
        st = t->step_post(t, (s), sb_, 2 * half_, dst_, recv[(s) & 1], 2 * rhalf_, src_);          \
      if (st == SR_OK) {                                                                           \
        x->bytes_sent += (uint64_t)(2 * half_);                                                    \
        x->bytes_recv += (uint64_t)(2 * rhalf_);                                                   \
        x->items_recv += (uint64_t)nr_;                                                            \
        x->cols_recv += (uint64_t)cr_;                                                             \
      }                                                                                            \
    }                                                                                              \
    tm.exchange_s += sr__now() - t0_;                                                              \
  } while (0)

  if (P > 1) RING_POST(1);
  if (st != SR_OK) goto out; /* a failed post is an MPI failure: no peer can be served */
  double t0 = sr__now(), last_print = t0;
  cb = fn(ctx, 0, me, kv_local, (const char *)kv_local + shard_elems * eb);
  tm.compute_s += sr__now() - t0;
  for (int s = 1; s < P; s++) {
    double w0 = sr__now();
    st = t->step_wait(t, s);
    tm.exchange_s += sr__now() - w0;
    if (st != SR_OK) goto out;
    if (s + 1 < P) RING_POST(s + 1);
    if (st != SR_OK) goto out;
    /* Dense ring: the shard of rank (r - s) has arrived after s forwards. Selected: the
     * blocks this rank asked of rank (r - s), sent directly. */
    const int src = (me - s + P) % P;
    const char *kb = recv[s & 1];
    size_t half = dense ? shard_elems : sr_xplan_half_elems(x, src);
    /* Keep computing only while everything is fine; keep communicating regardless. */
    if (cb == SR_OK && half > 0) {
      double c0 = sr__now();
      cb = fn(ctx, s, src, kb, kb + half * eb);
      tm.compute_s += sr__now() - c0;
    }
    if (progress_every_s > 0 && me == 0 && sr__now() - last_print > progress_every_s) {
      last_print = sr__now();
      printf("#   ring step %d/%d done (%.1f s)\n", s, P - 1, last_print - t0);
      fflush(stdout);
    }
  }
  st = cb;
#undef RING_POST
out:;
  /* Nothing may still read or write the buffers when they are freed. The wait for the backend
   * to finish is the end of the compute (asynchronous backends return from fn at once). */
  double s0 = sr__now();
  if (be->sync() != SR_OK && st == SR_OK) st = sr__seterr(SR_ERR_BACKEND, "backend sync failed");
  tm.compute_s += sr__now() - s0;
  for (int b = 0; b < 2; b++) {
    be->free(recv[b]);
    be->free(send[b]);
  }
  if (times) {
    times->exchange_s += tm.exchange_s;
    times->compute_s += tm.compute_s;
  }
  return st;
}
