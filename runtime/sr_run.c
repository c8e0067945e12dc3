/*
 * sr_run.c — the pipeline of a run, layer by layer (ARCHITECTURE.md "The data flow"):
 *
 *   generate/read Q,K,V rows -> summarise (pool + all-gather key means) -> select (method) ->
 *   plan the exchange (request lists) -> ring: exchange overlapped with compute -> verify ->
 *   write (collective HDF5) -> metrics.
 *
 * Collective discipline: every phase that can fail on a subset of ranks ends in
 * sr_comm_agree() (directly or inside the callee) before the next collective, so a failure
 * anywhere makes every rank leave together with the same status and message.
 */
#include "sr_run.h"

#include "kernels.h"
#include "sr_attend.h"
#include "sr_exchange.h"
#include "sr_h5.h"
#include "sr_internal.h"
#include "sr_plan.h"
#include "sr_select.h"
#include "sr_synth.h"
#include "sr_verify.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const sr_phase_names[SR_PH_COUNT] = {"generate", "summarise", "select", "exchange",
                                                 "compute",  "verify",    "write",  "total"};

/* Where rows come from, for generation and for the verifier. */
typedef struct row_source {
  const sr_config *cfg;
  sr_h5_in *h5;
} row_source;

static sr_status rows_fn(void *ctx, int layer, char which, int head, int64_t pos0, int64_t count,
                         float *out) {
  row_source *rs = ctx;
  if (rs->h5) return sr_h5_read_head_rows(rs->h5, layer, which, head, pos0, count, out);
  sr_synth_rows(rs->cfg, layer, which, head, pos0, count, out);
  return SR_OK;
}

/* Fills this rank's [heads][n_local][d] rows of q, k or v into backend storage `dst`, through
 * the host staging buffer. Synthetic: generated in place, no communication. HDF5: one
 * collective hyperslab read. */
static sr_status load_rows(row_source *rs, const sr_plan *p, const sr_backend *be, int layer,
                           char which, float *stage, void *dst) {
  int heads = which == 'q' ? p->q_heads : p->kv_heads;
  int64_t starts[SR_MAX_CHUNKS_PER_RANK];
  int nruns = sr_plan_runs(p, p->rank, starts);
  if (rs->h5)
    SR_TRY(sr_h5_read_rows(rs->h5, layer, which, heads, starts, nruns, p->chunk_tokens, stage));
  else
    for (int h = 0; h < heads; h++)
      for (int c = 0; c < nruns; c++)
        sr_synth_rows(rs->cfg, layer, which, h, starts[c], p->chunk_tokens,
                      stage + ((size_t)h * p->n_local + (size_t)c * p->chunk_tokens) * p->d);
  return be->store(dst, stage, (size_t)heads * (size_t)p->n_local * (size_t)p->d);
}

/* Threads per rank: the configured count, or the node's cores shared among its ranks. */
static int pick_threads(const sr_config *cfg, const sr_world *w) {
  if (cfg->threads > 0) return cfg->threads;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int t = (int)(cores > 0 ? cores : 1) / (w->local_nranks > 0 ? w->local_nranks : 1);
  return t > 0 ? t : 1;
}

void sr_run_result_free(sr_run_result *res) {
  if (res->layer)
    for (int l = 0; l < res->layers; l++) {
      free(res->layer[l].head_relerr);
      free(res->layer[l].head_recall);
    }
  free(res->layer);
  free(res->rank_map);
  *res = (sr_run_result){0};
}

/* Gathers "rank r: host (threads t)" lines on rank 0. */
static sr_status build_rank_map(const sr_world *w, const char *backend, int threads, char **out) {
  char line[160];
  snprintf(line, sizeof line, "rank %d: host %.64s, node-local rank %d, %s backend, %d thread%s",
           w->rank, w->host, w->local_rank, backend, threads, threads == 1 ? "" : "s");
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
  sr_summaries sum;
  sr_selection sel;
  sr_xplan x;
  sr_attend att;
  sr_quality qual;
} layer_state;

static void layer_state_free(layer_state *s) {
  const sr_backend *be = s->be;
  if (be) {
    be->free(s->q);
    be->free(s->kv);
    be->free(s->out);
    be->free(s->lse);
  }
  sr__free(s->stage);
  sr__free(s->out_h);
  sr__free(s->lse_h);
  sr_summaries_free(&s->sum);
  sr_selection_free(&s->sel);
  sr_xplan_free(&s->x);
  sr_attend_free(&s->att);
  sr_quality_free(&s->qual);
  *s = (layer_state){0};
}

static sr_status alloc_layer(const sr_plan *p, const sr_backend *be, layer_state *s) {
  s->be = be;
  size_t qf = (size_t)p->q_heads * (size_t)p->n_local * (size_t)p->d;
  size_t kf = (size_t)p->kv_heads * (size_t)p->n_local * (size_t)p->d;
  size_t rows = (size_t)p->q_heads * (size_t)p->n_local;
  SR_ALLOC(s->stage, (qf > kf ? qf : kf) * sizeof(float), "staging rows");
  SR_ALLOC(s->out_h, qf * sizeof(float), "attention output");
  SR_ALLOC(s->lse_h, rows * sizeof(float), "lse");
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

/* One layer on every rank; fills r (rank-local values; reduced by the caller). */
static sr_status run_layer(const sr_config *cfg, const sr_world *w, const sr_plan *p,
                           const sr_backend *be, sr_transport *t, row_source *rs, sr_h5_out *h5,
                           int layer, int top_chunks, sr_layer_result *r, double t_layer0) {
  layer_state s = {0};
  sr_status st;
  double t0 = sr__now();

  st = sr_comm_agree(w->comm, alloc_layer(p, be, &s));
  if (st != SR_OK) goto done;
  /* generate / read */
  const size_t kv_elems = (size_t)p->kv_heads * (size_t)p->n_local * (size_t)p->d;
  st = load_rows(rs, p, be, layer, 'q', s.stage, s.q);
  if (st == SR_OK) st = load_rows(rs, p, be, layer, 'k', s.stage, s.kv);
  if (st == SR_OK)
    st = load_rows(rs, p, be, layer, 'v', s.stage, (char *)s.kv + kv_elems * be->elem_bytes);
  if (st == SR_OK) st = be->sync();
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  r->t[SR_PH_GENERATE] = sr__now() - t0;

  /* summarise + select */
  t0 = sr__now();
  if (cfg->method == SR_METHOD_BLOCK_SPARSE) {
    st = sr_summaries_gather(p, be, w->comm, s.kv, &s.sum);
    if (st != SR_OK) goto done;
  }
  r->t[SR_PH_SUMMARISE] = sr__now() - t0;
  t0 = sr__now();
  st = cfg->method == SR_METHOD_BLOCK_SPARSE
           ? sr_select_block_sparse(p, be, s.q, &s.sum, top_chunks, &s.sel)
           : sr_select_dense(p, &s.sel);
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  r->t[SR_PH_SELECT] = sr__now() - t0;

  /* exchange plan + ring */
  t0 = sr__now();
  st = sr_xplan_build(&s.x, p, &s.sel, cfg->exchange, w->comm);
  if (st != SR_OK) goto done;
  double plan_s = sr__now() - t0;
  st = sr_comm_agree(w->comm, sr_attend_init(&s.att, p, be, s.q, &s.sel, &s.x, s.out, s.lse));
  if (st != SR_OK) goto done;
  sr_ring_times rt = {0};
  st = sr_ring_run(&s.x, p, be, t, s.kv, sr_attend_step, &s.att, &rt,
                   cfg->progress ? 10.0 : 0.0);
  /* Results to the host for verify and write (waits for the backend to finish). */
  double c0 = sr__now();
  if (st == SR_OK)
    st = be->copy_out(s.out_h, s.out, (size_t)p->q_heads * (size_t)p->n_local * (size_t)p->d);
  if (st == SR_OK) st = be->copy_out(s.lse_h, s.lse, (size_t)p->q_heads * (size_t)p->n_local);
  rt.compute_s += sr__now() - c0;
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) goto done;
  r->t[SR_PH_EXCHANGE] = plan_s + rt.exchange_s;
  r->t[SR_PH_COMPUTE] = rt.compute_s;
  r->bytes_sent = s.x.bytes_sent;
  r->bytes_recv_max = s.x.bytes_recv;
  r->blocks_fetched = s.x.items_recv;
  r->bytes_dense_ring = (p->nranks > 1 ? (uint64_t)(p->nranks - 1) : 0) * 2u *
                        (uint64_t)p->kv_heads * (uint64_t)p->n_local * (uint64_t)p->d *
                        sizeof(float);
  r->pairs_computed = s.att.pairs_computed;
  r->nnz_blocks = (uint64_t)s.sel.nnz;
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
      double e = s.qual.ref2[h] > 0 ? sqrt(s.qual.err2[h] / s.qual.ref2[h]) : 0;
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
  }
  r->t[SR_PH_VERIFY] = sr__now() - t0;

  /* write */
  t0 = sr__now();
  if (h5) {
    int64_t starts[SR_MAX_CHUNKS_PER_RANK];
    int nruns = sr_plan_runs(p, p->rank, starts);
    if (cfg->write_mask & SR_WRITE_OUT)
      SR_TRY_GOTO(st, sr_h5_write_rows(h5, layer, "out", p->q_heads, p->n, p->d, starts, nruns,
                                       p->chunk_tokens, s.out_h), done);
    if (cfg->write_mask & SR_WRITE_LSE)
      SR_TRY_GOTO(st, sr_h5_write_rows(h5, layer, "lse", p->q_heads, p->n, 0, starts, nruns,
                                       p->chunk_tokens, s.lse_h), done);
    if (cfg->write_mask & SR_WRITE_SELECTION)
      SR_TRY_GOTO(st, sr_h5_write_selection(h5, layer, p, &s.sel), done);
  }
  r->t[SR_PH_WRITE] = sr__now() - t0;
  r->t[SR_PH_TOTAL] = sr__now() - t_layer0;
done:
  layer_state_free(&s);
  return st;
}

/* Reduces a layer's rank-local values onto rank 0 (max of times, sums of counters). */
static sr_status reduce_layer(const sr_world *w, sr_layer_result *r) {
  double tmax[SR_PH_COUNT];
  SR_MPI(MPI_Reduce(r->t, tmax, SR_PH_COUNT, MPI_DOUBLE, MPI_MAX, 0, w->comm));
  uint64_t sums[6] = {r->bytes_sent, r->bytes_dense_ring, r->blocks_fetched, r->pairs_computed,
                      r->nnz_blocks, 0};
  uint64_t tot[6];
  SR_MPI(MPI_Reduce(sums, tot, 6, MPI_UINT64_T, MPI_SUM, 0, w->comm));
  uint64_t bmax = 0;
  SR_MPI(MPI_Reduce(&r->bytes_recv_max, &bmax, 1, MPI_UINT64_T, MPI_MAX, 0, w->comm));
  if (w->rank == 0) {
    memcpy(r->t, tmax, sizeof tmax);
    r->bytes_sent = tot[0];
    r->bytes_dense_ring = tot[1];
    r->blocks_fetched = tot[2];
    r->pairs_computed = tot[3];
    r->nnz_blocks = tot[4];
    r->bytes_recv_max = bmax;
  }
  return SR_OK;
}

sr_status sr_run(const sr_config *cfg, const sr_world *w, sr_run_result *res) {
  *res = (sr_run_result){0};
  double wall0 = sr__now();
  sr_plan plan;
  sr_transport *t = NULL;
  sr_h5_out *h5 = NULL;
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
    st = sr__seterr(SR_ERR_BACKEND, "%s", sr_last_error());
  int want_cuda = be != NULL, all_cuda = 0;
  if (st == SR_OK && MPI_Allreduce(&want_cuda, &all_cuda, 1, MPI_INT, MPI_MIN, w->comm) != MPI_SUCCESS)
    st = sr__seterr(SR_ERR_MPI, "MPI_Allreduce failed choosing the backend");
  st = sr_comm_agree(w->comm, st);
  if (st != SR_OK) return st;
  if (!all_cuda) be = sr_backend_cpu();
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

  /* Budget: explicit top_chunks, or the paper's formula solved for the target sparsity. */
  int top_chunks = cfg->top_chunks;
  if (cfg->method == SR_METHOD_BLOCK_SPARSE && top_chunks == 0)
    top_chunks = sr_block_sparse_budget(plan.nkb_global, cfg->sparsity);

  /* Input first (a bad input file must fail before an output file is created). */
  if (cfg->input_source == SR_INPUT_HDF5) {
    st = sr_h5_in_open(&rs.h5, w->comm, cfg->input_path, cfg);
    if (st != SR_OK) goto out;
  }
  if (cfg->out_path) {
    char *yaml = sr_config_to_yaml(cfg);
    st = yaml ? SR_OK : sr__seterr(SR_ERR_NOMEM, "out of memory printing the config");
    st = sr_comm_agree(w->comm, st);
    if (st == SR_OK)
      st = sr_h5_out_create(&h5, w->comm, cfg->out_path, cfg->overwrite, yaml,
                            sr_config_hash(cfg));
    free(yaml);
    if (st != SR_OK) goto out;
  }

  for (int l = 0; l < cfg->layers; l++) {
    sr_layer_result *r = &res->layer[l];
    double t0 = sr__now();
    st = run_layer(cfg, w, &plan, be, t, &rs, h5, l, top_chunks, r, t0);
    if (st != SR_OK) goto out;
    st = sr_comm_agree(w->comm, reduce_layer(w, r));
    if (st != SR_OK) goto out;
    r->pairs_causal = (uint64_t)plan.q_heads * (uint64_t)plan.n * (uint64_t)(plan.n + 1) / 2;
    r->sparsity_measured = 1.0 - (double)r->pairs_computed / (double)r->pairs_causal;
    r->sparsity_paper = cfg->method == SR_METHOD_BLOCK_SPARSE
                            ? sr_block_sparse_sparsity(plan.nkb_global, r->top_chunks)
                            : 0.0;
    r->flops_effective = 4.0 * plan.d * (double)r->pairs_causal;
    r->flops_sparse = 4.0 * plan.d * (double)r->pairs_computed;
    if (h5) {
      /* Metrics as attributes of the layer group (same values needed on every rank). */
      double attrs[4] = {r->sparsity_measured, r->sparsity_paper, (double)r->bytes_sent,
                         r->t[SR_PH_TOTAL]};
      SR_TRY_GOTO(st, sr__mpi_check(MPI_Bcast(attrs, 4, MPI_DOUBLE, 0, w->comm), "MPI_Bcast",
                                    __FILE__, __LINE__), out);
      SR_TRY_GOTO(st, sr_h5_attr_double(h5, l, "sparsity_measured", attrs[0]), out);
      SR_TRY_GOTO(st, sr_h5_attr_double(h5, l, "sparsity_paper", attrs[1]), out);
      SR_TRY_GOTO(st, sr_h5_attr_double(h5, l, "bytes_sent", attrs[2]), out);
      SR_TRY_GOTO(st, sr_h5_attr_double(h5, l, "time_s", attrs[3]), out);
      char *js = w->rank == 0 ? sr_report_json_string(cfg, res, l) : NULL;
      int len = js ? (int)strlen(js) + 1 : 0;
      MPI_Bcast(&len, 1, MPI_INT, 0, w->comm);
      if (w->rank != 0) js = calloc((size_t)len + 1, 1);
      if (js && len > 0) MPI_Bcast(js, len, MPI_CHAR, 0, w->comm);
      st = sr_h5_attr_string(h5, l, "metrics_json", js && len > 0 ? js : "{}");
      free(js);
      if (st != SR_OK) goto out;
    }
    if (cfg->progress && w->rank == 0) {
      double el = sr__now() - wall0;
      printf("# layer %d/%d done in %.2f s (elapsed %.1f s, eta %.1f s)\n", l + 1, cfg->layers,
             r->t[SR_PH_TOTAL], el, el / (l + 1) * (cfg->layers - l - 1));
      fflush(stdout);
    }
  }
  if (h5) {
    st = sr_h5_out_commit(h5);
    h5 = NULL;
  }
out:
  if (h5) sr_h5_out_abort(h5);
  if (rs.h5) sr_h5_in_close(rs.h5);
  if (t) t->destroy(t);
  res->wall_s = sr__now() - wall0;
  return st;
}
