/*
 * sr_run.c — the pipeline of a run, layer by layer (docs/DESIGN.md "Data flow of one prefill layer"):
 *
 *   generate/read Q,K,V rows -> summarise (pool + all-gather key means) -> select (method) ->
 *   plan the exchange (request lists) -> ring: exchange overlapped with compute -> verify ->
 *   write (collective HDF5) -> metrics -> checkpoint.
 *
 * Collective discipline: every phase that can fail on a subset of ranks ends in
 * sr_comm_agree() (directly or inside the callee) before the next collective, so a failure
 * anywhere makes every rank leave together with the same status and message.
 *
 * Durability (sr_ckpt.h, docs/CHECKPOINT.md): with output.checkpoint a layer is a unit. Its
 * datasets, metrics and checksum are written, the file is flushed and closed, and only then is
 * the layer recorded as done. A resumed run starts at the first layer not done; the layers
 * before are not recomputed (their metrics come from the checkpoint). Between layers every rank
 * learns whether any rank received SIGTERM / SIGUSR1 (one MPI_Allreduce), and all stop there
 * together, the checkpoint intact.
 */
#include "sr_run.h"

#include "kernels.h"
#include "sr_attend.h"
#include "sr_ckpt.h"
#include "sr_decode.h"
#include "sr_exchange.h"
#include "sr_h5.h"
#include "sr_internal.h"
#include "sr_plan.h"
#include "sr_select.h"
#include "sr_method.h"
#include "sr_synth.h"
#include "sr_verify.h"

#include <cjson/cJSON.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const sr_phase_names[SR_PH_COUNT] = {
    "generate", "summarise", "select", "exchange", "compute",
    "download", "verify",    "write",  "total",    "attention"};

/* Where rows come from, for generation and for the verifier. */
typedef struct row_source {
  const sr_config *cfg;
  sr_h5_in *h5;
  bool bf16; /* the backend stores q, k, v as bf16: the verifier sees them as stored */
} row_source;

/* fp32 -> bf16 -> fp32 with round-to-nearest-even, as the CUDA backend stores values (NaN and
 * infinities pass unchanged). */
static float round_bf16(float x) {
  if (!isfinite(x)) return x;
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

static sr_status rows_fn(void *ctx, int layer, char which, int head, int64_t pos0, int64_t count,
                         float *out) {
  row_source *rs = ctx;
  if (rs->h5) SR_TRY(sr_h5_read_head_rows(rs->h5, layer, which, head, pos0, count, out));
  else sr_synth_rows(rs->cfg, layer, which, head, pos0, count, out);
  /* The reference is exact attention of the inputs as the backend holds them: on a bf16
   * backend the storage rounding (a logit error of ~|q||k| 2^-9, input-dependent) is the user's
   * choice of precision, not an error of the computation that the gate judges. */
  if (rs->bf16)
    for (size_t i = 0; i < (size_t)count * (size_t)rs->cfg->head_dim; i++) out[i] = round_bf16(out[i]);
  return SR_OK;
}

/* Fills this rank's [heads][n_local][d] rows of q, k or v into backend storage `dst`, through
 * the host staging buffer. Synthetic: generated in place, no communication. HDF5: one
 * collective hyperslab read. */
/* Values at or above this magnitude are refused with the non-finite ones: with |q|, |k| below
 * 2^59 every q.k of a head dim <= 256 stays below 2^126, finite in float32 (and in bf16). */
#define SR_INPUT_MAX_ABS 576460752303423488.0f /* 2^59 */

/* The first (lowest index) element of stage [heads][n_local][d] that is NaN, infinite or too
 * large, or -1. One pass, on the rank's threads. */
static int64_t first_bad_value(const float *stage, size_t n) {
  int64_t first = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : first)
  for (int64_t i = 0; i < (int64_t)n; i++)
    if (!(fabsf(stage[i]) < SR_INPUT_MAX_ABS) && i < first) first = i;
  return first == INT64_MAX ? -1 : first;
}

/* Fills this rank's [heads][n_local][d] rows of q, k or v into backend storage `dst`, through
 * the host staging buffer. Synthetic: generated in place, no communication. HDF5: one
 * collective hyperslab read. Non-finite (or overflowing) values are refused unless
 * input.allow_nonfinite: they would otherwise turn into zero rows or NaN without a word. */
static sr_status load_rows(row_source *rs, const sr_plan *p, const sr_backend *be, int layer,
                           char which, float *stage, void *dst) {
  int heads = which == 'q' ? p->q_heads : p->kv_heads;
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  int nruns = sr_plan_runs(p, p->rank, starts);
  const size_t n = (size_t)heads * (size_t)p->n_local * (size_t)p->d;
  if (rs->h5)
    SR_TRY(sr_h5_read_rows(rs->h5, layer, which, heads, starts, nruns, p->chunk_tokens, stage));
  else
    for (int h = 0; h < heads; h++)
      for (int c = 0; c < nruns; c++)
        sr_synth_rows(rs->cfg, layer, which, h, starts[c], p->chunk_tokens,
                      stage + ((size_t)h * p->n_local + (size_t)c * p->chunk_tokens) * p->d);
  if (!rs->cfg->allow_nonfinite) {
    const int64_t bad = first_bad_value(stage, n);
    if (bad >= 0) {
      const int64_t row = bad / p->d, h = row / p->n_local, lrow = row % p->n_local;
      const int64_t c = lrow / p->chunk_tokens, pos = starts[c] + lrow % p->chunk_tokens;
      const float x = stage[bad];
      char what[64];
      if (isnan(x)) snprintf(what, sizeof what, "NaN");
      else if (isinf(x)) snprintf(what, sizeof what, "infinite value %g", (double)x);
      else snprintf(what, sizeof what, "value %g too large (|x| >= 2^59)", (double)x);
      return sr__seterr(SR_ERR_IO, "%s: /layers/%d/%c: %s at head %lld, row %lld, dim %lld "
                        "(set input.allow_nonfinite=true to accept it)",
                        rs->h5 ? rs->cfg->input_path : "synthetic input", layer, which, what,
                        (long long)h, (long long)pos, (long long)(bad % p->d));
    }
  }
  return be->store(dst, stage, n);
}

/* Threads per rank: the configured count, or the node's cores shared among its ranks, but no
 * more than the CPUs the launcher bound this rank to (Open MPI binds each rank to one core when
 * there are at most two: threads beyond that would only take turns; rank 0 says so). */
static int pick_threads(const sr_config *cfg, const sr_world *w) {
  if (cfg->threads > 0) return cfg->threads;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int t = (int)(cores > 0 ? cores : 1) / (w->local_nranks > 0 ? w->local_nranks : 1);
  if (t < 1) t = 1;
  int bound = sr__affinity_cpus();
  if (bound > 0 && bound < t) {
    if (w->rank == 0)
      printf("# note: rank 0 is bound to %d CPU%s by the launcher: %d thread%s per rank instead of "
             "%d (mpirun --bind-to none, or --map-by slot:PE=%d, gives each rank its share)\n",
             bound, bound == 1 ? "" : "s", bound, bound == 1 ? "" : "s", t, t);
    t = bound;
  }
  return t;
}

void sr_run_result_free(sr_run_result *res) {
  if (res->layer)
    for (int l = 0; l < res->layers; l++) {
      free(res->layer[l].head_relerr);
      free(res->layer[l].head_recall);
    }
  free(res->layer);
  free(res->rank_map);
  free(res->ckpt_dir);
  *res = (sr_run_result){0};
}

/* Gathers "rank r: host (threads t)" lines on rank 0. */
static sr_status build_rank_map(const sr_world *w, const char *backend, int threads, char **out) {
  char line[224];
  char be[48];
  if (strcmp(backend, "cpu") == 0) snprintf(be, sizeof be, "cpu (%s kernels)", sr_cpu_kernel_path());
  else snprintf(be, sizeof be, "%s", backend);
  snprintf(line, sizeof line, "rank %d: host %.64s, node-local rank %d, %s backend, %d thread%s",
           w->rank, w->host, w->local_rank, be, threads, threads == 1 ? "" : "s");
  char *all = w->rank == 0 ? calloc((size_t)w->nranks, sizeof line) : NULL;
  if (w->rank == 0 && !all) return sr__seterr(SR_ERR_NOMEM, "out of memory for the rank map");
  SR_MPI(MPI_Gather(line, sizeof line, MPI_CHAR, all, sizeof line, MPI_CHAR, 0, w->comm));
  if (w->rank == 0) {
    char *text = calloc((size_t)w->nranks, sizeof line + 1);
    if (!text) {
      free(all);
      return sr__seterr(SR_ERR_NOMEM, "out of memory for the rank map");
    }
    for (int r = 0; r < w->nranks; r++) {
      strcat(text, all + (size_t)r * sizeof line);
      strcat(text, "\n");
    }
    *out = text;
  }
  free(all);
  return SR_OK;
}

/* Per-layer state, freed at the end of each layer. q and kv (K then V) are backend storage;
 * out/lse are backend fp32 accumulators with host copies for verify and write. */
typedef struct layer_state {
  const sr_backend *be;
  void *q, *kv;
  float *out, *lse;
  float *stage, *out_h, *lse_h;
  const sr_method_ops *method;
  void *mstate; /* the method's summary (its free_state releases it) */
  sr_selection sel;
  sr_xplan x;
  sr_attend att;
  sr_quality qual;
} layer_state;

/* Host buffers the device fills (out, lse): the backend's page-locked ones when it has them,
 * so that the download runs at the link's speed instead of through a pageable bounce. */
static sr_status host_buf(const sr_backend *be, size_t bytes, float **p, const char *what) {
  if (be->host_alloc) return be->host_alloc(bytes, (void **)p);
  SR_ALLOC(*p, bytes, what);
  return SR_OK;
}
static void host_buf_free(const sr_backend *be, float *p) {
  if (!p) return;
  if (be && be->host_alloc) be->host_free(p);
  else sr__free(p);
}

static void layer_state_free(layer_state *s) {
  const sr_backend *be = s->be;
  if (be) {
    be->free(s->q);
    be->free(s->kv);
    be->free(s->out);
    be->free(s->lse);
  }
  sr__free(s->stage);
  host_buf_free(be, s->out_h);
  host_buf_free(be, s->lse_h);
  if (s->method && s->method->free_state) s->method->free_state(s->mstate);
  sr_selection_free(&s->sel);
  sr_xplan_free(&s->x);
  sr_attend_free(&s->att);
  sr_quality_free(&s->qual);
  *s = (layer_state){0};
}

static sr_status alloc_layer(const sr_config *cfg, const sr_plan *p, const sr_backend *be,
                             layer_state *s) {
  s->be = be;
  s->method = sr_method_get(cfg->method);
  size_t qf = (size_t)p->q_heads * (size_t)p->n_local * (size_t)p->d;
  size_t kf = (size_t)p->kv_heads * (size_t)p->n_local * (size_t)p->d;
  size_t rows = (size_t)p->q_heads * (size_t)p->n_local;
  SR_ALLOC(s->stage, (qf > kf ? qf : kf) * sizeof(float), "staging rows");
  SR_TRY(host_buf(be, qf * sizeof(float), &s->out_h, "attention output"));
  SR_TRY(host_buf(be, rows * sizeof(float), &s->lse_h, "lse"));
  SR_TRY(be->alloc(qf * be->elem_bytes, &s->q));
  SR_TRY(be->alloc(2 * kf * be->elem_bytes, &s->kv));
  SR_TRY(be->alloc(qf * sizeof(float), (void **)&s->out));
  SR_TRY(be->alloc(rows * sizeof(float), (void **)&s->lse));
  /* Poison outputs: a row the ring failed to write shows up as NaN in verify and in tests. */
  sr__poison_f32(s->out_h, qf);
  sr__poison_f32(s->lse_h, rows);
  SR_TRY(be->copy_in(s->out, s->out_h, qf));
  return be->copy_in(s->lse, s->lse_h, rows);
}

/* One layer on every rank: rows, selection, ring, verification into s (kept for writing);
 * fills r with rank-local values (reduced by the caller). */
static sr_status run_layer(const sr_config *cfg, const sr_world *w, const sr_plan *p,
                           const sr_backend *be, sr_transport *t, row_source *rs, int layer,
                           sr_layer_result *r, layer_state *sp) {
  layer_state s = {0};
  sr_status st;
  double t0 = sr__now();

  st = sr_comm_agree(w->comm, alloc_layer(cfg, p, be, &s));
  if (st == SR_OK && rs->h5) st = sr_h5_in_check(rs->h5, layer, 0); /* collective, agreed */
  if (st != SR_OK) goto done;
  /* generate / read */
  const size_t kv_elems = (size_t)p->kv_heads * (size_t)p->n_local * (size_t)p->d;
  /* Agreed after each of q, k, v: HDF5 reads are collective, and a rank that refused its rows
   * (non-finite values) must not leave the others inside the next read. */
  st = sr_comm_agree(w->comm, load_rows(rs, p, be, layer, 'q', s.stage, s.q));
  if (st == SR_OK) st = sr_comm_agree(w->comm, load_rows(rs, p, be, layer, 'k', s.stage, s.kv));
  if (st == SR_OK)
    st = load_rows(rs, p, be, layer, 'v', s.stage, (char *)s.kv + kv_elems * be->elem_bytes);
  if (st == SR_OK) st = be->sync();
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  r->t[SR_PH_GENERATE] = sr__now() - t0;

  /* summarise (collective) + select (local), through the method's table entry */
  const sr_method_ops *m = sr_method_get(cfg->method);
  const sr_method_in min = {.cfg = cfg, .p = p, .be = be, .comm = w->comm, .q = s.q, .k = s.kv};
  t0 = sr__now();
  if (m->summarise) {
    st = m->summarise(&min, &s.mstate);
    if (st == SR_OK) st = be->sync();
    st = sr_comm_agree(w->comm, st);
    if (st != SR_OK) goto done;
  }
  r->t[SR_PH_SUMMARISE] = sr__now() - t0;
  t0 = sr__now();
  st = m->select(&min, s.mstate, &s.sel);
  /* Device work of the phases above is finished here, so that the ring's time is its own. */
  if (st == SR_OK) st = be->sync();
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  r->t[SR_PH_SELECT] = sr__now() - t0;

  /* exchange plan + ring */
  if (be->event_times) st = be->event_times(NULL, NULL); /* device times from here on */
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  t0 = sr__now();
  st = sr_xplan_build(&s.x, p, &s.sel, cfg->exchange, w->comm);
  sr__prof("exchange plan", t0);
  if (st != SR_OK) goto done;
  st = sr_comm_agree(w->comm, sr_attend_init(&s.att, p, be, s.q, &s.sel, &s.x, s.out, s.lse));
  if (st != SR_OK) goto done;
  double plan_s = sr__now() - t0; /* request lists, per-source block lists (uploaded) */
  sr_ring_times rt = {0};
  st = sr_ring_run(&s.x, p, be, t, s.kv, sr_attend_step, &s.att, &rt,
                   cfg->progress ? 10.0 : 0.0);
  /* Results to the host for verify and write (the ring has waited for the backend). */
  double c0 = sr__now();
  if (st == SR_OK)
    st = be->copy_out(s.out_h, s.out, (size_t)p->q_heads * (size_t)p->n_local * (size_t)p->d);
  if (st == SR_OK) st = be->copy_out(s.lse_h, s.lse, (size_t)p->q_heads * (size_t)p->n_local);
  r->t[SR_PH_DOWNLOAD] = sr__now() - c0;
  /* Test hook (tests/trust.cmake): SR_TEST_PERTURB_OUT=L makes layer L's result wrong (q-head
   * 0's rows scaled by 1.5 on every rank), the case the verification gate exists for. */
  const char *perturb = getenv("SR_TEST_PERTURB_OUT");
  if (st == SR_OK && perturb && atoi(perturb) == layer)
    for (size_t i = 0; i < (size_t)p->n_local * (size_t)p->d; i++) s.out_h[i] *= 1.5f;
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  if (be->event_times) {
    r->dev_timed = 1;
    st = sr_comm_agree(w->comm, be->event_times(&r->dev_lists_s, &r->dev_kernel_s));
    if (st != SR_OK) goto done;
  }
  r->t[SR_PH_EXCHANGE] = plan_s + rt.exchange_s;
  r->t[SR_PH_COMPUTE] = rt.compute_s;
  r->t[SR_PH_ATTENTION] = plan_s + rt.exchange_s + rt.compute_s;
  r->bytes_sent = s.x.bytes_sent;
  r->bytes_recv_max = s.x.bytes_recv;
  r->blocks_fetched = s.x.items_recv;
  r->bytes_dense_ring = (p->nranks > 1 ? (uint64_t)(p->nranks - 1) : 0) * 2u *
                        (uint64_t)p->kv_heads * (uint64_t)p->n_local * (uint64_t)p->d *
                        be->elem_bytes;
  r->pairs_computed = s.att.pairs_computed;
  r->nnz_blocks = (uint64_t)s.sel.nnz;
  r->nnz_columns = (uint64_t)s.sel.nv;
  r->columns_fetched = s.x.cols_recv;
  r->paper_pairs = s.sel.paper_pairs;
  r->budget_v = s.sel.budget_v;
  r->budget_s = s.sel.budget_s;
  r->top_chunks = s.sel.top_chunks;

  /* verify */
  t0 = sr__now();
  if (cfg->verify_rows != 0) {
    st = sr_quality_init(&s.qual, p->q_heads);
    if (st == SR_OK)
      st = sr_verify_layer(cfg, p, layer, rows_fn, rs, s.out_h, s.lse_h, &s.sel, &s.qual);
    st = sr_comm_agree(w->comm, st);
    if (st == SR_OK) st = sr_comm_agree(w->comm, sr_quality_reduce(&s.qual, w->comm));
    if (st != SR_OK) goto done;
    r->verified = 1;
    r->head_relerr = calloc((size_t)p->q_heads, sizeof(double));
    r->head_recall = calloc((size_t)p->q_heads, sizeof(double));
    if (!r->head_relerr || !r->head_recall) {
      st = sr__seterr(SR_ERR_NOMEM, "out of memory for quality metrics");
      goto done;
    }
    r->recall_min = INFINITY;
    double recall_sum = 0;
    int64_t rows = 0, recall_rows = 0;
    for (int h = 0; h < p->q_heads; h++) {
      double e = s.qual.rows[h] == 0 ? 0 : sr_quality_rel_err(&s.qual, h); /* NaN stays NaN */
      double rc = s.qual.recall_rows[h] > 0 ? s.qual.recall[h] / (double)s.qual.recall_rows[h] : 0;
      r->head_relerr[h] = e;
      r->head_recall[h] = rc;
      if (e > r->relerr_max || isnan(e)) r->relerr_max = e;
      r->relerr_mean += e / p->q_heads;
      if (rc < r->recall_min) r->recall_min = rc;
      recall_sum += s.qual.recall[h];
      recall_rows += s.qual.recall_rows[h];
      rows += s.qual.rows[h];
      r->needles += s.qual.needles[h];
      r->needle_hits += s.qual.needle_hits[h];
    }
    r->rows_checked = rows;
    r->recall_mean = recall_rows > 0 ? recall_sum / (double)recall_rows : 0;
    r->lse_maxerr = s.qual.lse_maxerr;
    /* The gate: every rank holds the same reduced sums, so every rank takes the same branch and
     * they leave together; the layer is not written, the output stays unpublished. */
    const double limit = sr_verify_limit(cfg, be->elem_bytes);
    if (limit > 0) {
      int worst = -1;
      for (int h = 0; h < p->q_heads; h++)
        if (s.qual.rows[h] > 0 && !(r->head_relerr[h] <= limit) &&
            (worst < 0 || !(r->head_relerr[h] <= r->head_relerr[worst])))
          worst = h;
      if (worst >= 0) {
        st = sr__seterr(SR_ERR_VERIFY,
                        "verification failed: layer %d, q-head %d: relative error %.3g > "
                        "verify.max_relerr %.3g (%s, %s storage); nothing of this layer is "
                        "written and the output is not published",
                        layer, worst, r->head_relerr[worst], limit, sr_method_name(cfg->method),
                        be->elem_bytes == 4 ? "fp32" : "bf16");
        goto done;
      }
    }
  }
  /* Every read of this layer (the rows and the verifier's) came from the file as it was. */
  if (rs->h5) st = sr_h5_in_check(rs->h5, layer, 1);
  r->t[SR_PH_VERIFY] = sr__now() - t0;
done:
  if (st == SR_OK) *sp = s;
  else layer_state_free(&s);
  return st;
}

/* ---- decode (sr_decode.h) ---------------------------------------------------------------- */

/* Sequence b of a batch: the input seed for b (b = 0 is the configured seed, so batch 1 decodes
 * the prompt a prefill run of the same config computes). */
static uint64_t seq_seed(uint64_t seed, int b) {
  return b == 0 ? seed : seed + 0x9E3779B97F4A7C15ull * (uint64_t)b;
}

typedef struct decode_ctx {
  const sr_config *cfg;
  const sr_world *w;
  const sr_plan *p;
  const sr_backend *be;
  sr_transport *t;
  row_source *rs;
  sr_config cfg_b; /* shallow copy: the seed of the current sequence, the prefill method */
  row_source rs_b;
  int b;
  layer_state s;   /* the current prompt (prefill state, or K/V only) */
} decode_ctx;

static void decode_seq(decode_ctx *x, int b) {
  if (x->b == b) return;
  x->cfg_b = *x->cfg;
  x->cfg_b.seed = seq_seed(x->cfg->seed, b);
  x->cfg_b.phase = SR_PHASE_PREFILL;
  x->cfg_b.method = x->cfg->prefill == SR_PREFILL_NONE ? SR_METHOD_DENSE : (sr_method)x->cfg->prefill;
  x->rs_b = *x->rs;
  x->rs_b.cfg = &x->cfg_b;
  x->b = b;
}

static sr_status decode_prompt(void *ctx, int layer, int b, const void **kv, double *prefill_s) {
  decode_ctx *x = ctx;
  layer_state_free(&x->s);
  x->b = -1;
  decode_seq(x, b);
  *prefill_s = 0;
  sr_status st;
  if (x->cfg->prefill != SR_PREFILL_NONE) {
    /* The prefill of this sequence, as a prefill run computes (and verifies) it; its K/V stay. */
    sr_layer_result pr = {0};
    double t0 = sr__now();
    st = run_layer(&x->cfg_b, x->w, x->p, x->be, x->t, &x->rs_b, layer, &pr, &x->s);
    free(pr.head_relerr);
    free(pr.head_recall);
    *prefill_s = sr__now() - t0;
  } else {
    /* K and V only: the prompt fills the cache without computing its attention. */
    const sr_plan *p = x->p;
    const sr_backend *be = x->be;
    const size_t kf = (size_t)p->kv_heads * (size_t)p->n_local * (size_t)p->d;
    x->s.be = be;
    x->s.stage = sr__alloc(kf * sizeof(float));
    st = x->s.stage ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory for the prompt's rows");
    if (st == SR_OK) st = be->alloc(2 * kf * be->elem_bytes, &x->s.kv);
    st = sr_comm_agree(x->w->comm, st);
    if (st == SR_OK && x->rs_b.h5) st = sr_h5_in_check(x->rs_b.h5, layer, 0);
    if (st == SR_OK)
      st = sr_comm_agree(x->w->comm, load_rows(&x->rs_b, p, be, layer, 'k', x->s.stage, x->s.kv));
    if (st == SR_OK)
      st = load_rows(&x->rs_b, p, be, layer, 'v', x->s.stage,
                     (char *)x->s.kv + kf * be->elem_bytes);
    if (st == SR_OK) st = be->sync();
    st = sr_comm_agree(x->w->comm, st);
  }
  *kv = x->s.kv;
  return st;
}

static sr_status decode_rows(void *ctx, int layer, int b, char which, int head, int64_t pos0,
                             int64_t count, float *out) {
  decode_ctx *x = ctx;
  decode_seq(x, b);
  return rows_fn(&x->rs_b, layer, which, head, pos0, count, out);
}

static int decode_needles(void *ctx, int layer, int b, int kv_head, sr_needle *out, int max) {
  decode_ctx *x = ctx;
  if (x->rs->h5) return 0;
  decode_seq(x, b);
  return sr_synth_needles(&x->cfg_b, layer, kv_head, out, max);
}

/* The per-rank spread of a layer's times onto rank 0: t_min (min over ranks) and t_avg (mean
 * over ranks), next to t (the max, reduced by the callers). */
static sr_status reduce_spread(const sr_world *w, sr_layer_result *r) {
  double mn[SR_PH_COUNT], sm[SR_PH_COUNT];
  SR_MPI(MPI_Reduce(r->t, mn, SR_PH_COUNT, MPI_DOUBLE, MPI_MIN, 0, w->comm));
  SR_MPI(MPI_Reduce(r->t, sm, SR_PH_COUNT, MPI_DOUBLE, MPI_SUM, 0, w->comm));
  if (w->rank == 0) {
    int n = 0;
    SR_MPI(MPI_Comm_size(w->comm, &n));
    for (int i = 0; i < SR_PH_COUNT; i++) {
      r->t_min[i] = mn[i];
      r->t_avg[i] = n > 0 ? sm[i] / n : 0;
    }
  }
  return SR_OK;
}

/* Times: max over ranks (onto rank 0), with min and mean; the counters are already global. */
static sr_status reduce_decode(const sr_world *w, sr_layer_result *r) {
  double v[SR_PH_COUNT + 2], m[SR_PH_COUNT + 2];
  memcpy(v, r->t, sizeof r->t);
  v[SR_PH_COUNT] = r->prefill_s;
  v[SR_PH_COUNT + 1] = r->step_s;
  SR_TRY(reduce_spread(w, r));
  SR_MPI(MPI_Reduce(v, m, SR_PH_COUNT + 2, MPI_DOUBLE, MPI_MAX, 0, w->comm));
  uint64_t bs = 0;
  SR_MPI(MPI_Reduce(&r->bytes_sent, &bs, 1, MPI_UINT64_T, MPI_SUM, 0, w->comm));
  if (w->rank == 0) {
    memcpy(r->t, m, sizeof r->t);
    r->prefill_s = m[SR_PH_COUNT];
    r->step_s = m[SR_PH_COUNT + 1];
    r->bytes_sent = bs;
  }
  return SR_OK;
}

/* The checksums of a decode layer (rank 0 has the arrays; the granules of sr_ckpt.h with
 * seq_len = batch x steps and block_q = steps: granule g = h * batch + b), on every rank. */
static sr_status decode_checksums(const sr_world *w, unsigned mask, const sr_decode_out *o,
                                  int q_heads, int d, int layer, sr_ckpt_sums *s) {
  memset(s, 0, sizeof *s);
  if (w->rank == 0) {
    const int64_t G = (int64_t)q_heads * o->batch, T = o->steps;
    for (int64_t g = 0; g < G; g++) {
      if (mask & SR_WRITE_OUT)
        s->d[SR_CK_OUT] += sr_xxh64(o->out + (size_t)g * T * d, (size_t)T * d * sizeof(float), (uint64_t)g);
      if (mask & SR_WRITE_LSE)
        s->d[SR_CK_LSE] += sr_xxh64(o->lse + (size_t)g * T, (size_t)T * sizeof(float), (uint64_t)g);
      if ((mask & SR_WRITE_SELECTION) && o->sel_ptr)
        s->d[SR_CK_INDICES] += sr_xxh64(o->sel_idx + o->sel_ptr[g],
                                        (size_t)(o->sel_ptr[g + 1] - o->sel_ptr[g]) * sizeof(int32_t),
                                        (uint64_t)g);
    }
    if ((mask & SR_WRITE_SELECTION) && o->sel_ptr)
      s->d[SR_CK_INDPTR] = sr_xxh64(o->sel_ptr, (size_t)(G + 1) * sizeof(int64_t), 0);
  }
  SR_MPI(MPI_Bcast(s->d, SR_CK_N, MPI_UINT64_T, 0, w->comm));
  int has_sel = o->sel_ptr != NULL;
  SR_MPI(MPI_Bcast(&has_sel, 1, MPI_INT, 0, w->comm));
  if (mask & SR_WRITE_OUT) s->present |= 1u << SR_CK_OUT;
  if (mask & SR_WRITE_LSE) s->present |= 1u << SR_CK_LSE;
  if ((mask & SR_WRITE_SELECTION) && has_sel)
    s->present |= (1u << SR_CK_INDPTR) | (1u << SR_CK_INDICES);
  for (int i = 0; i < SR_CK_N; i++)
    if (!(s->present & (1u << i))) s->d[i] = 0;
  s->unit = sr__ckpt_unit_checksum(s->d, layer);
  return SR_OK;
}

/* Collective: a decode layer's datasets (docs/HDF5.md "Decode"). */
static sr_status write_decode_data(const sr_config *fcfg, const sr_world *w, const sr_plan *p,
                                   sr_h5_out *h5, int l, const sr_decode_out *o) {
  int64_t BT = (int64_t)fcfg->decode_batch * fcfg->decode_steps;
  int64_t d3[3] = {p->q_heads, BT, p->d};
  if (fcfg->write_mask & SR_WRITE_OUT)
    SR_TRY(sr_h5_write_whole(h5, l, "out", 0, 3, d3, o->out));
  sr_ckpt_point("after_out", l, w->rank);
  if (fcfg->write_mask & SR_WRITE_LSE)
    SR_TRY(sr_h5_write_whole(h5, l, "lse", 0, 2, d3, o->lse));
  int has_sel = w->rank == 0 ? o->sel_ptr != NULL : 0;
  int64_t nnz = w->rank == 0 ? o->sel_nnz : 0;
  SR_MPI(MPI_Bcast(&has_sel, 1, MPI_INT, 0, w->comm));
  SR_MPI(MPI_Bcast(&nnz, 1, MPI_INT64_T, 0, w->comm));
  if ((fcfg->write_mask & SR_WRITE_SELECTION) && has_sel) {
    int64_t dp[1] = {(int64_t)p->q_heads * fcfg->decode_batch + 1}, di[1] = {nnz};
    SR_TRY(sr_h5_write_whole(h5, l, "selection/indptr", 1, 1, dp, o->sel_ptr));
    SR_TRY(sr_h5_write_whole(h5, l, "selection/indices", 2, 1, di, o->sel_idx));
  }
  return SR_OK;
}

/* Reduces a layer's rank-local values onto rank 0 (max of times, with min and mean over ranks;
 * sums of counters). */
static sr_status reduce_layer(const sr_world *w, sr_layer_result *r) {
  double tmax[SR_PH_COUNT];
  SR_TRY(reduce_spread(w, r));
  SR_MPI(MPI_Reduce(r->t, tmax, SR_PH_COUNT, MPI_DOUBLE, MPI_MAX, 0, w->comm));
  uint64_t sums[7] = {r->bytes_sent,     r->bytes_dense_ring, r->blocks_fetched,
                      r->pairs_computed, r->nnz_blocks,       r->nnz_columns,
                      r->columns_fetched};
  uint64_t tot[7];
  SR_MPI(MPI_Reduce(sums, tot, 7, MPI_UINT64_T, MPI_SUM, 0, w->comm));
  double pp = 0;
  SR_MPI(MPI_Reduce(&r->paper_pairs, &pp, 1, MPI_DOUBLE, MPI_SUM, 0, w->comm));
  uint64_t bmax = 0;
  SR_MPI(MPI_Reduce(&r->bytes_recv_max, &bmax, 1, MPI_UINT64_T, MPI_MAX, 0, w->comm));
  double dev[2] = {r->dev_lists_s, r->dev_kernel_s}, devmax[2];
  SR_MPI(MPI_Reduce(dev, devmax, 2, MPI_DOUBLE, MPI_MAX, 0, w->comm));
  if (w->rank == 0) {
    memcpy(r->t, tmax, sizeof tmax);
    r->bytes_sent = tot[0];
    r->bytes_dense_ring = tot[1];
    r->blocks_fetched = tot[2];
    r->pairs_computed = tot[3];
    r->nnz_blocks = tot[4];
    r->nnz_columns = tot[5];
    r->columns_fetched = tot[6];
    r->paper_pairs = pp;
    r->bytes_recv_max = bmax;
    r->dev_lists_s = devmax[0];
    r->dev_kernel_s = devmax[1];
  }
  return SR_OK;
}

/* Test hook (docs/CHECKPOINT.md): SR_TEST_FIXED_TIMES=1 writes every time into the output as 0,
 * so that two runs of the same config give byte-identical files. */
static int fixed_times(void) {
  const char *e = getenv("SR_TEST_FIXED_TIMES");
  return e && *e && strcmp(e, "0") != 0;
}

/* Writes layer l into h5 (collective): datasets, metrics attributes, and the checksum
 * attribute when sums is given (checkpointed runs). The layer's write and total times are
 * completed here (max over ranks, on every rank). fcfg is the config the file describes;
 * *metrics gets the layer's metrics JSON (rank 0's). */
static sr_status write_layer(const sr_config *fcfg, const sr_world *w, const sr_plan *p,
                             sr_h5_out *h5, int l, const layer_state *s, const sr_decode_out *dec,
                             sr_run_result *res, const sr_ckpt_sums *sums, double t_layer0,
                             char **metrics) {
  sr_layer_result *r = &res->layer[l];
  *metrics = NULL;
  double t0 = sr__now();
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  int nruns = sr_plan_runs(p, p->rank, starts);
  if (dec) SR_TRY(write_decode_data(fcfg, w, p, h5, l, dec));
  else if (fcfg->write_mask & SR_WRITE_OUT)
    SR_TRY(sr_h5_write_rows(h5, l, "out", p->q_heads, p->n, p->d, starts, nruns, p->chunk_tokens,
                            s->out_h));
  if (!dec) sr_ckpt_point("after_out", l, w->rank);
  if (!dec && (fcfg->write_mask & SR_WRITE_LSE))
    SR_TRY(sr_h5_write_rows(h5, l, "lse", p->q_heads, p->n, 0, starts, nruns, p->chunk_tokens,
                            s->lse_h));
  if (!dec && (fcfg->write_mask & SR_WRITE_SELECTION))
    SR_TRY(sr_h5_write_selection(h5, l, p, &s->sel));
  double tw[2] = {sr__now() - t0, sr__now() - t_layer0}, twmax[2];
  SR_TRY(sr_comm_agree(w->comm, sr__mpi_check(MPI_Allreduce(tw, twmax, 2, MPI_DOUBLE, MPI_MAX,
                                                            w->comm),
                                              "MPI_Allreduce", __FILE__, __LINE__)));
  r->t[SR_PH_WRITE] = twmax[0];
  r->t[SR_PH_TOTAL] = twmax[1];

  /* Metrics as attributes of the layer group (rank 0's reduced values, on every rank). */
  double saved[SR_PH_COUNT], saved_min[SR_PH_COUNT], saved_avg[SR_PH_COUNT];
  double saved_pf = r->prefill_s, saved_step = r->step_s;
  memcpy(saved, r->t, sizeof saved);
  memcpy(saved_min, r->t_min, sizeof saved_min);
  memcpy(saved_avg, r->t_avg, sizeof saved_avg);
  if (fixed_times()) {
    r->dev_lists_s = r->dev_kernel_s = 0;
    memset(r->t, 0, sizeof r->t);
    memset(r->t_min, 0, sizeof r->t_min);
    memset(r->t_avg, 0, sizeof r->t_avg);
    r->prefill_s = r->step_s = 0;
  }
  double attrs[4] = {r->sparsity_measured, r->sparsity_paper, (double)r->bytes_sent,
                     r->t[SR_PH_TOTAL]};
  char *js = w->rank == 0 ? sr_report_json_string(fcfg, res, l) : NULL;
  memcpy(r->t, saved, sizeof saved);
  memcpy(r->t_min, saved_min, sizeof saved_min);
  memcpy(r->t_avg, saved_avg, sizeof saved_avg);
  r->prefill_s = saved_pf;
  r->step_s = saved_step;
  int len = js ? (int)strlen(js) + 1 : 0;
  sr_status st = sr__mpi_check(MPI_Bcast(attrs, 4, MPI_DOUBLE, 0, w->comm), "MPI_Bcast", __FILE__,
                               __LINE__);
  if (st == SR_OK)
    st = sr__mpi_check(MPI_Bcast(&len, 1, MPI_INT, 0, w->comm), "MPI_Bcast", __FILE__, __LINE__);
  if (st == SR_OK && w->rank != 0 && !(js = calloc((size_t)len + 1, 1)))
    st = sr__seterr(SR_ERR_NOMEM, "out of memory for the metrics JSON");
  st = sr_comm_agree(w->comm, st);
  if (st == SR_OK && len > 0)
    st = sr_comm_agree(w->comm, sr__mpi_check(MPI_Bcast(js, len, MPI_CHAR, 0, w->comm),
                                              "MPI_Bcast", __FILE__, __LINE__));
  if (st == SR_OK) st = sr_h5_attr_double(h5, l, "sparsity_measured", attrs[0]);
  if (st == SR_OK) st = sr_h5_attr_double(h5, l, "sparsity_paper", attrs[1]);
  if (st == SR_OK) st = sr_h5_attr_double(h5, l, "bytes_sent", attrs[2]);
  if (st == SR_OK) st = sr_h5_attr_double(h5, l, "time_s", attrs[3]);
  if (st == SR_OK) st = sr_h5_attr_string(h5, l, "metrics_json", js && len > 0 ? js : "{}");
  if (st == SR_OK && sums) st = sr_h5_attr_u64(h5, l, "checksum", sums->unit);
  if (st != SR_OK) {
    free(js);
    return st;
  }
  *metrics = js;
  return SR_OK;
}

/* Rank 0: a completed layer's numbers back from the metrics object its checkpoint recorded
 * (the layer object of sr_report_json_string), for the report of a resumed run. */
static void layer_from_json(const char *text, const sr_plan *p, sr_layer_result *r) {
  cJSON *o = text ? cJSON_Parse(text) : NULL;
  if (!o) return;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "time_s");
  for (int i = 0; i < SR_PH_COUNT; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, sr_phase_names[i]);
    if (cJSON_IsNumber(v)) r->t[i] = v->valuedouble;
  }
#define NUM(key) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, key))                        \
                      ? cJSON_GetObjectItemCaseSensitive(o, key)->valuedouble : 0.0)
  r->bytes_sent = (uint64_t)NUM("bytes_moved");
  r->bytes_dense_ring = (uint64_t)NUM("bytes_dense_ring");
  r->bytes_recv_max = (uint64_t)NUM("bytes_recv_max_rank");
  r->blocks_fetched = (uint64_t)NUM("blocks_fetched");
  r->nnz_blocks = (uint64_t)NUM("selected_blocks");
  r->nnz_columns = (uint64_t)NUM("selected_columns");
  r->columns_fetched = (uint64_t)NUM("columns_fetched");
  r->budget_v = NUM("budget_verticals");
  r->budget_s = NUM("budget_slashes");
  r->paper_pairs = NUM("paper_pairs");
  r->top_chunks = (int)NUM("top_chunks");
  r->sparsity_paper = NUM("sparsity_paper");
  r->sparsity_measured = NUM("sparsity_measured");
  r->pairs_computed = (uint64_t)NUM("pairs_computed");
  r->pairs_causal = (uint64_t)NUM("pairs_causal");
#undef NUM
  r->flops_effective = 4.0 * p->d * (double)r->pairs_causal;
  r->flops_sparse = 4.0 * p->d * (double)r->pairs_computed;
  const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "quality");
  if (cJSON_IsObject(q)) {
#define QN(key) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(q, key))                         \
                     ? cJSON_GetObjectItemCaseSensitive(q, key)->valuedouble : 0.0)
    r->verified = 1;
    r->rows_checked = (int64_t)QN("rows_checked");
    r->relerr_mean = QN("relerr_mean");
    r->relerr_max = QN("relerr_max");
    r->recall_mean = QN("recall_mean");
    r->recall_min = QN("recall_min");
    r->needles = (int64_t)QN("needles");
    r->needle_hits = (int64_t)QN("needle_hits");
    r->lse_maxerr = QN("lse_maxerr");
#undef QN
  }
  cJSON_Delete(o);
}

/* Collective: the highest signal number any rank has received (0: none). */
static sr_status agreed_signal(const sr_world *w, int *sig) {
  int mine = sr_ckpt_signal_pending();
  *sig = 0;
  return sr_comm_agree(w->comm, sr__mpi_check(MPI_Allreduce(&mine, sig, 1, MPI_INT, MPI_MAX,
                                                            w->comm),
                                              "MPI_Allreduce", __FILE__, __LINE__));
}

sr_status sr_run(const sr_config *cfg, const sr_world *w, sr_run_result *res) {
  *res = (sr_run_result){0};
  double wall0 = sr__now();
  sr_plan plan;
  sr_transport *t = NULL;
  sr_h5_out *h5 = NULL;
  sr_ckpt *ck = NULL;
  sr_config stored; /* the config a resumed file describes (the run that began it) */
  bool have_stored = false;
  const sr_config *fcfg = cfg;
  row_source rs = {.cfg = cfg};
  sr_status st = sr_config_validate(cfg);
  if (st == SR_OK) st = sr_plan_init(&plan, cfg, w->nranks, w->rank);
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) return st;

  /* Backend: cuda when asked or (auto) when this rank has a usable GPU, else the CPU. Every
   * rank must agree: a mix of backends would mix transports. */
  const sr_backend *be = NULL;
  if (cfg->backend != SR_BACKEND_CPU) be = sr_backend_cuda(w->local_rank);
  if (!be && cfg->backend == SR_BACKEND_CUDA)
    st = SR_ERR_BACKEND; /* sr_backend_cuda() set the message */
  int want_cuda = be != NULL, all_cuda = 0;
  if (st == SR_OK &&
      MPI_Allreduce(&want_cuda, &all_cuda, 1, MPI_INT, MPI_MIN, w->comm) != MPI_SUCCESS)
    st = sr__seterr(SR_ERR_MPI, "MPI_Allreduce failed choosing the backend");
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) return st;
  if (!all_cuda) be = sr_backend_cpu();
  rs.bf16 = be->elem_bytes == 2;
  res->threads = pick_threads(cfg, w);
  sr_cpu_set_threads(res->threads);
  res->backend = be->name;
  res->nranks = w->nranks;
  res->layers = cfg->layers;
  res->layer = calloc((size_t)cfg->layers, sizeof(sr_layer_result));
  st = res->layer ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory for results");
#ifdef SR_CUDA
  if (st == SR_OK && all_cuda) st = sr_transport_nccl_create(w, &t);
  else
#endif
  if (st == SR_OK) st = sr_transport_mpi_create(w, &t);
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto out;
  res->transport = t->name;
  st = sr_comm_agree(w->comm, build_rank_map(w, be->name, res->threads, &res->rank_map));
  if (st != SR_OK) goto out;

  /* Input first (a bad input file must fail before an output file is created). */
  uint64_t input_fp = 0;
  if (cfg->input_source == SR_INPUT_HDF5) {
    st = sr_h5_in_open(&rs.h5, w->comm, cfg->input_path, cfg);
    if (st == SR_OK && cfg->out_path && cfg->checkpoint)
      st = sr_h5_in_fingerprint(rs.h5, &input_fp);
    if (st != SR_OK) goto out;
  }
  int done = 0;
  if (cfg->out_path) {
    char *yaml = sr_config_to_yaml(cfg);
    char *ryaml = cfg->checkpoint ? sr_config_result_yaml(cfg) : NULL;
    st = yaml && (ryaml || !cfg->checkpoint)
             ? SR_OK
             : sr__seterr(SR_ERR_NOMEM, "out of memory printing the config");
    st = sr_comm_agree(w->comm, st);
    if (st == SR_OK && cfg->checkpoint) {
      unsigned maj = 0, min = 0, rel = 0;
      char h5v[32];
      H5get_libversion(&maj, &min, &rel);
      snprintf(h5v, sizeof h5v, "%u.%u.%u", maj, min, rel);
      sr_ckpt_opts o = {.path = cfg->out_path, .overwrite = cfg->overwrite, .resume = cfg->resume,
                        .config_yaml = yaml, .config_hash = sr_config_hash(cfg),
                        .result_yaml = ryaml, .result_hash = sr_config_result_hash(cfg),
                        .input_fp = input_fp, .input_path = cfg->input_path,
                        .layers = cfg->layers, .backend = be->name, .hdf5_version = h5v,
                        .q_heads = plan.q_heads, .seq_len = plan.n, .head_dim = plan.d,
                        .block_q = plan.bq};
      if (cfg->phase == SR_PHASE_DECODE) {
        /* Decode layers: out is [q_heads][batch x steps][d]; a granule is one sequence's
         * steps of one q-head (docs/CHECKPOINT.md). */
        o.seq_len = (int64_t)cfg->decode_batch * cfg->decode_steps;
        o.block_q = cfg->decode_steps;
      }
      st = sr_ckpt_open(&ck, w->comm, &o);
    } else if (st == SR_OK) {
      st = sr_h5_out_create(&h5, w->comm, cfg->out_path, cfg->overwrite, yaml,
                            sr_config_hash(cfg));
    }
    free(ryaml);
    free(yaml);
    if (st != SR_OK) goto out;
  }
  if (ck) {
    res->ckpt_dir = sr__strdup(sr_ckpt_dir(ck));
    done = sr_ckpt_units_done(ck);
    if (done > 0) {
      /* Resumed: what the file says was computed, by the run that started it. */
      const char *y = sr_ckpt_stored_config(ck);
      st = sr_config_load_string(&stored, y, strlen(y), "the checkpoint's config", NULL, 0);
      have_stored = st == SR_OK;
      st = sr_comm_agree(w->comm, st);
      if (st != SR_OK) goto out;
      fcfg = &stored;
      res->layers_resumed = done;
      sr_ckpt_resume_cost(ck, &res->resume_s, &res->resume_bytes);
      if (w->rank == 0)
        for (int l = 0; l < done; l++)
          layer_from_json(sr_ckpt_unit_metrics(ck, l), &plan, &res->layer[l]);
      if (cfg->progress && w->rank == 0) {
        printf("# resumed %s: layers 0-%d of %d done, %.3f GB of checksums verified in %.2f s\n",
               res->ckpt_dir, done - 1, cfg->layers, (double)res->resume_bytes / 1e9,
               res->resume_s);
        fflush(stdout);
      }
    }
  }

  for (int l = done; l < cfg->layers; l++) {
    /* Layer boundary: stop together if any rank was asked to (Slurm's --signal). */
    int sig = 0;
    st = agreed_signal(w, &sig);
    if (st != SR_OK) goto out;
    if (sig) {
      res->stop_signal = sig;
      res->stopped_at = l;
      break;
    }
    sr_layer_result *r = &res->layer[l];
    layer_state s = {0};
    char *metrics = NULL;
    double t0 = sr__now();
    sr_ckpt_point("unit_start", l, w->rank);
    sr_decode_out dec = {0};
    const int decoding = cfg->phase == SR_PHASE_DECODE;
    if (decoding) {
      decode_ctx dx = {.cfg = cfg, .w = w, .p = &plan, .be = be, .t = t, .rs = &rs, .b = -1};
      sr_decode_io io = {.ctx = &dx, .prompt = decode_prompt, .rows = decode_rows,
                         .needles = decode_needles};
      st = sr_decode_layer(cfg, &plan, be, w->comm, &io, l, &dec, r);
      layer_state_free(&dx.s);
      if (st != SR_OK) goto out;
      r->t[SR_PH_TOTAL] = sr__now() - t0;
      st = sr_comm_agree(w->comm, reduce_decode(w, r));
      r->sparsity_measured =
          r->pairs_causal ? 1.0 - (double)r->pairs_computed / (double)r->pairs_causal : 0;
      r->flops_effective = 4.0 * plan.d * (double)r->pairs_causal;
      r->flops_sparse = 4.0 * plan.d * (double)r->pairs_computed;
    } else {
      st = run_layer(cfg, w, &plan, be, t, &rs, l, r, &s);
      if (st != SR_OK) goto out;
      r->t[SR_PH_TOTAL] = sr__now() - t0;
      st = sr_comm_agree(w->comm, reduce_layer(w, r));
      r->pairs_causal = (uint64_t)plan.q_heads * (uint64_t)plan.n * (uint64_t)(plan.n + 1) / 2;
      r->sparsity_measured = 1.0 - (double)r->pairs_computed / (double)r->pairs_causal;
      r->sparsity_paper = sr_method_get(cfg->method)->sparsity_paper(&plan, &s.sel, r->paper_pairs);
      r->flops_effective = 4.0 * plan.d * (double)r->pairs_causal;
      r->flops_sparse = 4.0 * plan.d * (double)r->pairs_computed;
    }
    sr_ckpt_point("after_compute", l, w->rank);
    if (st == SR_OK && (h5 || ck)) {
      sr_ckpt_sums sums;
      sr_h5_out *target = h5;
      double c0 = sr__now(), ck_s = 0, settle_s = 0;
      if (ck) {
        /* The checksums belong to the checkpoint (a resume re-verifies them): counted in its
         * cost, computed only when checkpointing. */
        st = decoding ? decode_checksums(w, cfg->write_mask, &dec, plan.q_heads, plan.d, l, &sums)
                      : sr_ckpt_checksums(&plan, cfg->write_mask, s.out_h, s.lse_h, &s.sel,
                                          w->comm, l, &sums);
        st = sr_comm_agree(w->comm, st);
        ck_s = sr__now() - c0;
        /* Waits for the previous layer's sync (started when it closed) and records it. */
        double b0 = sr__now();
        if (st == SR_OK) st = sr_ckpt_unit_begin(ck, l, &target);
        settle_s = sr__now() - b0;
      }
      if (st == SR_OK)
        st = write_layer(fcfg, w, &plan, target, l, &s, decoding ? &dec : NULL, res,
                         ck ? &sums : NULL, t0, &metrics);
      sr_ckpt_point("after_data", l, w->rank);
      if (st == SR_OK && ck) {
        c0 = sr__now();
        st = sr_ckpt_unit_end(ck, l, &sums, metrics);
        /* The report counts the checkpoint's close, the wait for the previous layer's sync and
         * its record as writing. */
        r->t[SR_PH_WRITE] += sr__now() - c0 + settle_s;
        r->t[SR_PH_TOTAL] += sr__now() - c0;
        res->ckpt_hash_s += ck_s;
      }
    }
    free(metrics);
    layer_state_free(&s);
    sr_decode_out_free(&dec);
    if (st != SR_OK) goto out;
    if (cfg->progress && w->rank == 0) {
      double el = sr__now() - wall0;
      printf("# layer %d/%d done in %.2f s (elapsed %.1f s, eta %.1f s)\n", l + 1, cfg->layers,
             r->t[SR_PH_TOTAL], el, el / (l + 1 - done) * (cfg->layers - l - 1));
      fflush(stdout);
    }
  }
  if (ck) {
    /* The last layer's sync and record (the others settled while the next layer computed). */
    double c0 = sr__now();
    st = sr_ckpt_settle(ck);
    if (cfg->layers > done && res->stop_signal == 0) {
      res->layer[cfg->layers - 1].t[SR_PH_WRITE] += sr__now() - c0;
      res->layer[cfg->layers - 1].t[SR_PH_TOTAL] += sr__now() - c0;
    }
    if (st != SR_OK) goto out;
    sr_ckpt_cost(ck, &res->ckpt_s, &res->ckpt_bytes);
  }
  if (res->stop_signal) {
    /* Interrupted: the checkpoint (if any layer is done) stays for --resume. */
    if (ck) {
      res->layers_kept = sr_ckpt_units_done(ck);
      sr_ckpt_close(ck, SR_OK);
      ck = NULL;
    }
    if (h5) sr_h5_out_abort(h5);
    h5 = NULL;
  } else if (ck) {
    st = sr_ckpt_commit(ck);
    ck = NULL;
  } else if (h5) {
    st = sr_h5_out_commit(h5);
    h5 = NULL;
  }
out:
  if (ck) st = sr_ckpt_close(ck, st);
  if (h5) sr_h5_out_abort(h5);
  if (rs.h5) sr_h5_in_close(rs.h5);
  if (t) t->destroy(t);
  if (have_stored) sr_config_free(&stored);
  res->wall_s = sr__now() - wall0;
  return st;
}
