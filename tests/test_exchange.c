/*
 * test_exchange.c — the selected-KV exchange and the ring, on 1..4 MPI ranks.
 *
 *  - bytes: in selected mode every rank receives exactly the remote (kv-head, key-block) pairs
 *    its selection lists (union over the q-heads of a GQA group) x 2*bk*d*4 bytes, recomputed
 *    here naively; bytes sent over all ranks equal bytes received; dense_ring moves (P-1)
 *    shards per rank and more than selected at sparsity >= 0.5.
 *  - content: every block a rank receives equals the owner's rows (regenerated here from the
 *    synthetic generator, which any rank can evaluate for any position).
 *  - output: the ring's out/lse equal a float64 reference of attention restricted to the
 *    selected blocks, for every row of every head (both exchange modes).
 */
#include "kernels.h"
#include "sr_attend.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_exchange.h"
#include "sr_plan.h"
#include "sr_select.h"
#include "sr_method.h"
#include "sr_synth.h"
#include "sr_test.h"

#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

static sr_world W;
static uint64_t g_seed;

static sr_method g_method = SR_METHOD_BLOCK_SPARSE;
static uint64_t g_cols_moved; /* key columns that travelled alone, all ranks, since reset */

static void make_config(sr_config *cfg, sr_shard_scheme shard, double sparsity) {
  sr_config_defaults(cfg);
  cfg->q_heads = 4;
  cfg->kv_heads = 2;
  cfg->head_dim = 32;
  cfg->seq_len = 1536; /* 2P chunks of whole 16-blocks for P = 1..4 */
  cfg->block_q = cfg->block_k = 16;
  cfg->shard = shard;
  cfg->method = g_method;
  cfg->sparsity = sparsity;
  cfg->last_q = 128;
  if (g_method == SR_METHOD_VERTICAL_SLASH) { /* explicit budgets: N = 1536 is below Table 3 */
    cfg->verticals = sparsity > 0.9 ? 16 : 96;
    cfg->slashes = sparsity > 0.9 ? 64 : 128;
  }
  cfg->top_chunks = 0;
  cfg->seed = g_seed;
}

typedef struct fixture {
  sr_config cfg;
  sr_plan p;
  float *q, *kv, *k, *v, *out, *lse;
  void *mstate;
  sr_selection sel;
} fixture;

static void load(const sr_config *cfg, const sr_plan *p, char which, float *dst) {
  int heads = which == 'q' ? p->q_heads : p->kv_heads;
  int64_t starts[2];
  int nr = sr_plan_runs(p, p->rank, starts);
  for (int h = 0; h < heads; h++)
    for (int c = 0; c < nr; c++)
      sr_synth_rows(cfg, 0, which, h, starts[c], p->chunk_tokens,
                    dst + ((size_t)h * p->n_local + (size_t)c * p->chunk_tokens) * p->d);
}

static void setup_fixture(fixture *f, sr_shard_scheme shard, double sparsity, sr_transport *t) {
  make_config(&f->cfg, shard, sparsity);
  assert_int_equal(sr_plan_init(&f->p, &f->cfg, W.nranks, W.rank), SR_OK);
  const sr_plan *p = &f->p;
  size_t qf = (size_t)p->q_heads * p->n_local * p->d, kf = (size_t)p->kv_heads * p->n_local * p->d;
  f->q = malloc(qf * 4);
  f->kv = malloc(2 * kf * 4); /* K then V: the shard layout sr_ring_run sends */
  f->k = f->kv;
  f->v = f->kv + kf;
  f->out = malloc(qf * 4);
  f->lse = malloc((size_t)p->q_heads * p->n_local * 4);
  load(&f->cfg, p, 'q', f->q);
  load(&f->cfg, p, 'k', f->k);
  load(&f->cfg, p, 'v', f->v);
  for (size_t i = 0; i < qf; i++) f->out[i] = NAN;
  for (size_t i = 0; i < (size_t)p->q_heads * p->n_local; i++) f->lse[i] = NAN;
  const sr_backend *be = sr_backend_cpu();
  /* Through the method table, as the run does. */
  const sr_method_ops *m = sr_method_get(f->cfg.method);
  sr_method_in in = {.cfg = &f->cfg, .p = p, .be = be, .comm = W.comm, .q = f->q, .k = f->k};
  f->mstate = NULL;
  if (m->summarise) assert_int_equal(m->summarise(&in, &f->mstate), SR_OK);
  assert_int_equal(m->select(&in, f->mstate, &f->sel), SR_OK);
  if (f->cfg.method == SR_METHOD_VERTICAL_SLASH) assert_non_null(f->sel.vrow_ptr);
}

static void free_fixture(fixture *f) {
  free(f->q);
  free(f->kv);
  free(f->out);
  free(f->lse);
  const sr_method_ops *m = sr_method_get(f->cfg.method);
  if (m->free_state) m->free_state(f->mstate);
  sr_selection_free(&f->sel);
  sr_config_free(&f->cfg);
}

/* Callback wrapper: checks the content of every received slot, then computes. */
typedef struct check_ctx {
  sr_attend *att;
  const sr_xplan *x;
  const fixture *f;
  int64_t slots_checked, cols_checked;
} check_ctx;

static sr_status checking_step(void *ctx, int step, int src, const void *kp, const void *vp) {
  const float *k = kp, *v = vp;
  check_ctx *c = ctx;
  const sr_plan *p = &c->f->p;
  if (step > 0) {
    /* Which items are in this buffer: selected -> my request list to src, in order;
     * dense_ring -> src's whole shard. */
    float *want = malloc((size_t)p->bk * p->d * 4);
    if (c->x->mode == SR_EXCHANGE_SELECTED) {
      for (int64_t i = c->x->req_off[src]; i < c->x->req_off[src + 1]; i++) {
        int64_t id = c->x->req_ids[i], h = id / p->nkb_global, j = id % p->nkb_global;
        int64_t slot = i - c->x->req_off[src];
        sr_synth_rows(&c->f->cfg, 0, 'k', (int)h, j * p->bk, p->bk, want);
        if (memcmp(want, k + slot * p->bk * p->d, (size_t)p->bk * p->d * 4) != 0) fail_msg("K slot differs");
        sr_synth_rows(&c->f->cfg, 0, 'v', (int)h, j * p->bk, p->bk, want);
        if (memcmp(want, v + slot * p->bk * p->d, (size_t)p->bk * p->d * 4) != 0) fail_msg("V slot differs");
        c->slots_checked++;
      }
      /* Requested key columns follow the blocks: [K blocks][K columns] and the same for V. */
      const int64_t nb = c->x->req_off[src + 1] - c->x->req_off[src];
      for (int64_t i = c->x->creq_off ? c->x->creq_off[src] : 0;
           c->x->creq_off && i < c->x->creq_off[src + 1]; i++) {
        int64_t id = c->x->creq_ids[i], h = id / p->n, pos = id % p->n;
        int64_t row = nb * p->bk + (i - c->x->creq_off[src]);
        sr_synth_rows(&c->f->cfg, 0, 'k', (int)h, pos, 1, want);
        if (memcmp(want, k + row * p->d, (size_t)p->d * 4) != 0) fail_msg("K column differs");
        sr_synth_rows(&c->f->cfg, 0, 'v', (int)h, pos, 1, want);
        if (memcmp(want, v + row * p->d, (size_t)p->d * 4) != 0) fail_msg("V column differs");
        c->cols_checked++;
      }
    } else {
      for (int h = 0; h < p->kv_heads; h++)
        for (int64_t b = 0; b < p->nkb_local; b++) {
          int64_t j = sr_plan_kblock_global(p, src, b), slot = h * p->nkb_local + b;
          sr_synth_rows(&c->f->cfg, 0, 'k', h, j * p->bk, p->bk, want);
          if (memcmp(want, k + slot * p->bk * p->d, (size_t)p->bk * p->d * 4) != 0) fail_msg("K shard differs");
          c->slots_checked++;
        }
    }
    free(want);
  }
  return sr_attend_step(c->att, step, src, k, v);
}

/* Float64 reference of attention over the selected blocks for every local row. */
static void check_output(const fixture *f) {
  const sr_plan *p = &f->p;
  double *kk = malloc((size_t)p->n * p->d * 8), *vv = malloc((size_t)p->n * p->d * 8);
  float *row = malloc((size_t)p->n * p->d * 4);
  int64_t *keys = malloc((size_t)p->n * sizeof *keys);
  double worst = 0, lse_worst = 0;
  for (int h = 0; h < p->q_heads; h++) {
    int kvh = h / p->group;
    sr_synth_rows(&f->cfg, 0, 'k', kvh, 0, p->n, row);
    for (int64_t i = 0; i < p->n * p->d; i++) kk[i] = row[i];
    sr_synth_rows(&f->cfg, 0, 'v', kvh, 0, p->n, row);
    for (int64_t i = 0; i < p->n * p->d; i++) vv[i] = row[i];
    double num = 0, den = 0;
    for (int64_t lr = 0; lr < p->n_local; lr++) {
      int64_t pos = sr_plan_global_pos(p, p->rank, lr), m = lr / p->bq, r = h * p->nqb_local + m;
      const float *qr = f->q + ((size_t)h * p->n_local + lr) * p->d;
      double mx = -INFINITY, l = 0, acc[256] = {0};
      /* The keys of the row: its blocks (causal part), then its key columns. */
      int64_t nkeys = 0;
      for (int64_t e = f->sel.row_ptr[r]; e < f->sel.row_ptr[r + 1]; e++)
        for (int64_t key = (int64_t)f->sel.col[e] * p->bk; key < (f->sel.col[e] + 1) * p->bk; key++)
          if (key <= pos) keys[nkeys++] = key;
      if (f->sel.vrow_ptr)
        for (int64_t e = f->sel.vrow_ptr[r]; e < f->sel.vrow_ptr[r + 1]; e++) {
          if (f->sel.vcol[e] > pos) fail_msg("column %d is after query %lld", f->sel.vcol[e], (long long)pos);
          keys[nkeys++] = f->sel.vcol[e];
        }
      for (int pass = 0; pass < 2; pass++)
        for (int64_t t = 0; t < nkeys; t++) {
          const int64_t key = keys[t];
          double s = 0;
          for (int d = 0; d < p->d; d++) s += (double)qr[d] * kk[key * p->d + d];
          s /= sqrt((double)p->d);
          if (pass == 0) { if (s > mx) mx = s; continue; }
          double w = exp(s - mx);
          l += w;
          for (int d = 0; d < p->d; d++) acc[d] += w * vv[key * p->d + d];
        }
      const float *o = f->out + ((size_t)h * p->n_local + lr) * p->d;
      for (int d = 0; d < p->d; d++) {
        double ref = acc[d] / l;
        num += (o[d] - ref) * (o[d] - ref);
        den += ref * ref;
      }
      double le = fabs((double)f->lse[(size_t)h * p->n_local + lr] - (mx + log(l)));
      if (!(le <= lse_worst)) lse_worst = le;
    }
    double e = sqrt(num / den);
    if (!(e <= worst)) worst = e;
  }
  free(kk);
  free(vv);
  free(row);
  free(keys);
  if (!(worst <= 1e-5) || !(lse_worst <= 1e-4))
    fail_msg("rank %d: rel err %.3e lse err %.3e vs restricted float64 reference", W.rank, worst, lse_worst);
}

static void run_mode(sr_shard_scheme shard, double sparsity, sr_exchange_mode mode,
                     uint64_t *bytes_recv_out, uint64_t *bytes_sent_out) {
  sr_transport *t = NULL;
  assert_int_equal(sr_transport_mpi_create(&W, &t), SR_OK);
  fixture f;
  (void)t;
  setup_fixture(&f, shard, sparsity, t);
  const sr_plan *p = &f.p;
  sr_xplan x;
  assert_int_equal(sr_xplan_build(&x, p, &f.sel, mode, W.comm), SR_OK);
  sr_attend att;
  assert_int_equal(sr_attend_init(&att, p, sr_backend_cpu(), f.q, &f.sel, &x, f.out, f.lse), SR_OK);
  check_ctx c = {.att = &att, .x = &x, .f = &f};
  sr_ring_times tm = {0};
  assert_int_equal(sr_ring_run(&x, p, sr_backend_cpu(), t, f.kv, checking_step, &c, &tm, 0), SR_OK);

  /* Naive recount of the remote pairs this rank needs. */
  uint8_t *need = calloc((size_t)p->kv_heads * p->nkb_global, 1);
  uint64_t pairs = 0;
  for (int h = 0; h < p->q_heads; h++)
    for (int64_t m = 0; m < p->nqb_local; m++) {
      int64_t r = h * p->nqb_local + m;
      for (int64_t e = f.sel.row_ptr[r]; e < f.sel.row_ptr[r + 1]; e++) {
        int64_t id = (h / p->group) * p->nkb_global + f.sel.col[e];
        if (sr_plan_kblock_owner(p, f.sel.col[e], NULL) != W.rank && !need[id]) {
          need[id] = 1;
          pairs++;
        }
      }
    }
  /* Columns: remote ones whose block is not fetched anyway, once per kv-head. */
  uint64_t cols = 0;
  if (f.sel.vrow_ptr && mode == SR_EXCHANGE_SELECTED) {
    uint8_t *cneed = calloc((size_t)p->kv_heads * p->n, 1);
    for (int h = 0; h < p->q_heads; h++)
      for (int64_t m = 0; m < p->nqb_local; m++) {
        int64_t r = h * p->nqb_local + m;
        for (int64_t e = f.sel.vrow_ptr[r]; e < f.sel.vrow_ptr[r + 1]; e++) {
          int64_t pos = f.sel.vcol[e], kvh = h / p->group;
          if (sr_plan_owner_of_pos(p, pos) == W.rank || need[kvh * p->nkb_global + pos / p->bk])
            continue;
          if (!cneed[kvh * p->n + pos]) {
            cneed[kvh * p->n + pos] = 1;
            cols++;
          }
        }
      }
    free(cneed);
  }
  free(need);
  uint64_t block_bytes = 2ull * p->bk * p->d * sizeof(float);
  uint64_t col_bytes = 2ull * p->d * sizeof(float);
  uint64_t shard_bytes = 2ull * p->kv_heads * p->n_local * p->d * sizeof(float);
  if (mode == SR_EXCHANGE_SELECTED) {
    assert_int_equal(x.bytes_recv, pairs * block_bytes + cols * col_bytes);
    assert_int_equal(c.slots_checked, (int64_t)pairs);
    assert_int_equal(c.cols_checked, (int64_t)cols);
    uint64_t all = 0;
    MPI_Allreduce(&cols, &all, 1, MPI_UINT64_T, MPI_SUM, W.comm);
    g_cols_moved += all;
  } else {
    assert_int_equal(x.bytes_recv, (uint64_t)(W.nranks - 1) * shard_bytes);
    assert_int_equal(x.bytes_sent, (uint64_t)(W.nranks - 1) * shard_bytes);
  }
  uint64_t sent = 0, recv = 0;
  MPI_Allreduce(&x.bytes_sent, &sent, 1, MPI_UINT64_T, MPI_SUM, W.comm);
  MPI_Allreduce(&x.bytes_recv, &recv, 1, MPI_UINT64_T, MPI_SUM, W.comm);
  assert_int_equal(sent, recv);
  check_output(&f);
  *bytes_recv_out = recv;
  *bytes_sent_out = sent;
  sr_attend_free(&att);
  sr_xplan_free(&x);
  free_fixture(&f);
  t->destroy(t);
}

/* Both exchange modes for method m at two sparsities and both shard schemes: the same output
 * (check_output in run_mode), exact byte counts, and selected < dense_ring on > 1 rank. */
static void compare_modes(sr_method m, const double sparsities[2]) {
  g_method = m;
  g_cols_moved = 0;
  for (int s = 0; s < 2; s++)
    for (int shard = 0; shard < 2; shard++) {
      uint64_t rs, ss, rd, sd;
      run_mode((sr_shard_scheme)shard, sparsities[s], SR_EXCHANGE_SELECTED, &rs, &ss);
      run_mode((sr_shard_scheme)shard, sparsities[s], SR_EXCHANGE_DENSE_RING, &rd, &sd);
      if (W.nranks > 1 && !(rs < rd))
        fail_msg("%s sparsity %.2f: selected moved %llu bytes, not fewer than dense_ring %llu",
                 sr_method_name(m), sparsities[s], (unsigned long long)rs, (unsigned long long)rd);
      if (W.nranks == 1) assert_int_equal(rs + rd, 0);
      if (W.rank == 0)
        fprintf(stderr, "# %s np %d shard %s sparsity %.2f: selected %llu bytes, dense_ring %llu "
                "(%.3fx)\n", sr_method_name(m), W.nranks, sr_shard_name((sr_shard_scheme)shard),
                sparsities[s], (unsigned long long)rs, (unsigned long long)rd,
                rd ? (double)rs / rd : 0.0);
    }
  /* Over the four selected runs some key column must have travelled alone, or the column
   * exchange was not exercised. */
  if (m == SR_METHOD_VERTICAL_SLASH && W.nranks > 1 && g_cols_moved == 0)
    fail_msg("no key column travelled: the column exchange is not exercised");
  g_method = SR_METHOD_BLOCK_SPARSE;
}

static void test_selected_vs_dense_ring(void **state) {
  (void)state;
  compare_modes(SR_METHOD_BLOCK_SPARSE, (const double[2]){0.5, 0.9});
}

/* Vertical-Slash: tiles and key columns through the same exchange (make_config turns the two
 * sparsities into V = S = 96 / 128 and 16 / 64). */
static void test_vertical_slash(void **state) {
  (void)state;
  compare_modes(SR_METHOD_VERTICAL_SLASH, (const double[2]){0.7, 0.95});
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  if (sr_world_init(&W, MPI_COMM_WORLD) != SR_OK) return 1;
  g_seed = sr_test_seed("test_exchange");
  MPI_Bcast(&g_seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  sr_cpu_set_threads(1);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_selected_vs_dense_ring),
                                     cmocka_unit_test(test_vertical_slash)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  sr_world_free(&W);
  MPI_Finalize();
  return any ? 1 : 0;
}
