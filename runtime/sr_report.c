/*
 * sr_report.c — the run report in the nccl-tests manner: a `#` header (versions, config,
 * rank map), one aligned row per layer, a summary, and the same numbers as JSON (cJSON).
 */
#include "sr_run.h"
#include "sr_cost.h"
#include "sr_method.h"
#include "sr_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <cyaml/cyaml.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void versions(char *buf, size_t n) {
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  char *nl = strchr(mpi, ','); /* "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4" */
  if (nl) *nl = '\0';
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  snprintf(buf, n, "sparsering %s | %s | HDF5 %u.%u.%u (parallel) | libcyaml %s | cJSON %s",
           sr_version(), mpi, maj, min, rel, cyaml_version_str, cJSON_Version());
}

static double gb(uint64_t b) { return (double)b / 1e9; }

/* Aggregate over layers for the summary line. */
typedef struct totals {
  double t[SR_PH_COUNT];
  uint64_t bytes_sent, bytes_dense_ring, pairs_computed, pairs_causal;
  double flops_eff, flops_sparse;
} totals;

static totals sum_layers(const sr_run_result *res) {
  totals s = {0};
  for (int l = 0; l < res->layers; l++) {
    const sr_layer_result *r = &res->layer[l];
    for (int i = 0; i < SR_PH_COUNT; i++) s.t[i] += r->t[i];
    s.bytes_sent += r->bytes_sent;
    s.bytes_dense_ring += r->bytes_dense_ring;
    s.pairs_computed += r->pairs_computed;
    s.pairs_causal += r->pairs_causal;
    s.flops_eff += r->flops_effective;
    s.flops_sparse += r->flops_sparse;
  }
  return s;
}

void sr_report_print(const sr_config *cfg, const sr_run_result *res, FILE *f) {
  char v[512];
  versions(v, sizeof v);
  fprintf(f, "# %s\n", v);
  fprintf(f, "# ranks %d, backend %s, transport %s, %d thread%s per rank\n", res->nranks,
          res->backend, res->transport, res->threads, res->threads == 1 ? "" : "s");
  fprintf(f, "# model: q_heads %d, kv_heads %d, head_dim %d, layers %d; seq_len %lld, shard %s\n",
          cfg->q_heads, cfg->kv_heads, cfg->head_dim, cfg->layers, (long long)cfg->seq_len,
          sr_shard_name(cfg->shard));
  int K = res->layers > 0 ? res->layer[0].top_chunks : 0;
  fprintf(f, "# attention: %s, blocks %dx%d", sr_method_name(cfg->method), cfg->block_q,
          cfg->block_k);
  if (cfg->method == SR_METHOD_BLOCK_SPARSE)
    fprintf(f, ", top_chunks %d%s", K, cfg->top_chunks == 0 ? " (from target sparsity)" : "");
  if ((cfg->method == SR_METHOD_VERTICAL_SLASH || cfg->method == SR_METHOD_FLEXPREFILL) &&
      res->layers > 0)
    fprintf(f, ", last_q %d, verticals %.1f, slashes %.1f per q-head (mean)%s", cfg->last_q,
            res->layer[0].budget_v, res->layer[0].budget_s,
            cfg->method == SR_METHOD_FLEXPREFILL ? " by coverage" : "");
  fprintf(f, "; exchange %s; input %s\n", sr_exchange_name(cfg->exchange),
          cfg->input_source == SR_INPUT_HDF5 ? cfg->input_path : "synthetic");
  if (cfg->phase == SR_PHASE_DECODE && res->layers > 0)
    fprintf(f, "# decode: %s, %d step%s x batch %d after a prompt of %lld (prefill %s), budget "
               "%lld token%s%s\n",
            sr_method_name(cfg->method), cfg->decode_steps, cfg->decode_steps == 1 ? "" : "s",
            cfg->decode_batch, (long long)cfg->seq_len,
            cfg->prefill == SR_PREFILL_NONE ? "none" : sr_method_name((sr_method)cfg->prefill),
            (long long)res->layer[0].decode_budget, res->layer[0].decode_budget == 1 ? "" : "s",
            cfg->method == SR_METHOD_QUEST
                ? (cfg->share_pages ? " per step (pages per kv-head)" : " per step (pages per q-head)")
            : cfg->method == SR_METHOD_DENSE ? " (all)"
                                             : " kept per kv-head");
  if (res->rank_map) {
    const char *p = res->rank_map;
    while (*p) {
      const char *e = strchr(p, '\n');
      int len = e ? (int)(e - p) : (int)strlen(p);
      fprintf(f, "#   %.*s\n", len, p);
      p += len + (e ? 1 : 0);
    }
  }
  if (cfg->phase == SR_PHASE_DECODE) {
    fprintf(f, "#\n# times in seconds (max over ranks); step = all sequences of one step\n");
    fprintf(f, "# %5s %9s %9s %9s %9s %11s %11s %10s %9s %9s %8s %8s %10s\n", "layer",
            "generate", "prefill", "prepare", "steps", "step_ms", "tokens/s", "KV_GB/s", "verify",
            "write", "sp_paper", "sp_meas", "moved_MB");
    double steps = 0, kvb = 0;
    int64_t toks = 0;
    for (int l = 0; l < res->layers; l++) {
      const sr_layer_result *r = &res->layer[l];
      const double ts = r->t[SR_PH_ATTENTION];
      fprintf(f, "  %5d %9.3f %9.3f %9.3f %9.3f %11.4f %11.1f %10.2f %9.3f %9.3f %8.4f %8.4f "
                 "%10.4f\n",
              l, r->t[SR_PH_GENERATE], r->prefill_s, r->t[SR_PH_SUMMARISE], ts, r->step_s * 1e3,
              ts > 0 ? (double)(r->decode_steps * r->decode_batch) / ts : 0,
              ts > 0 ? r->kv_bytes_read / ts / 1e9 : 0, r->t[SR_PH_VERIFY], r->t[SR_PH_WRITE],
              r->sparsity_paper, r->sparsity_measured, (double)r->bytes_sent / 1e6);
      steps += ts;
      kvb += r->kv_bytes_read;
      toks += r->decode_steps * r->decode_batch;
    }
    fprintf(f, "#\n# decode: %.3f s of steps, %.1f tokens/s, KV read %.3f GB at %.2f GB/s; no K or V "
               "crossed the network\n", steps, steps > 0 ? (double)toks / steps : 0, kvb / 1e9,
            steps > 0 ? kvb / steps / 1e9 : 0);
    for (int l = 0; l < res->layers; l++) {
      const sr_layer_result *r = &res->layer[l];
      if (!r->verified) continue;
      fprintf(f, "# quality layer %d: %lld (step, sequence, q-head) rows checked against exact "
                 "dense decode, rel. error mean %.3e max %.3e, recall mean %.4f min %.4f, needles "
                 "%lld/%lld hit\n",
              l, (long long)r->rows_checked, r->relerr_mean, r->relerr_max, r->recall_mean,
              r->recall_min, (long long)r->needle_hits, (long long)r->needles);
    }
    fprintf(f, "# wall time %.3f s\n", res->wall_s);
    fflush(f);
    return;
  }
  fprintf(f, "#\n# times in seconds (max over ranks); bytes summed over ranks\n");
  fprintf(f, "# %5s %9s %9s %9s %9s %9s %9s %9s %9s %9s %11s %11s %7s %8s %8s %9s %9s\n",
          "layer", "generate", "summarise", "select", "exchange", "compute", "download", "verify",
          "write", "total",
          "moved_GB", "ring_GB", "ratio", "sp_paper", "sp_meas", "GF/s_eff", "GF/s_sp");
  for (int l = 0; l < res->layers; l++) {
    const sr_layer_result *r = &res->layer[l];
    double ct = r->t[SR_PH_ATTENTION];
    fprintf(f, "  %5d %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %11.6f %11.6f %7.4f "
               "%8.4f %8.4f %9.2f %9.2f\n",
            l, r->t[SR_PH_GENERATE], r->t[SR_PH_SUMMARISE], r->t[SR_PH_SELECT],
            r->t[SR_PH_EXCHANGE], r->t[SR_PH_COMPUTE], r->t[SR_PH_DOWNLOAD], r->t[SR_PH_VERIFY],
            r->t[SR_PH_WRITE],
            r->t[SR_PH_TOTAL], gb(r->bytes_sent), gb(r->bytes_dense_ring),
            r->bytes_dense_ring ? (double)r->bytes_sent / (double)r->bytes_dense_ring : 0.0,
            r->sparsity_paper, r->sparsity_measured, ct > 0 ? r->flops_effective / ct / 1e9 : 0,
            ct > 0 ? r->flops_sparse / ct / 1e9 : 0);
  }
  totals s = sum_layers(res);
  double ct = s.t[SR_PH_ATTENTION];
  fprintf(f, "#\n# bytes moved: %.6f GB (%s) vs %.6f GB for dense_ring = %.4fx\n",
          gb(s.bytes_sent), sr_exchange_name(cfg->exchange), gb(s.bytes_dense_ring),
          s.bytes_dense_ring ? (double)s.bytes_sent / (double)s.bytes_dense_ring : 0.0);
  fprintf(f, "# selection: %s per (q-head, q-block); paper formula %s\n",
          sr_method_get(cfg->method)->selects, sr_method_get(cfg->method)->formula);
  fprintf(f, "# sparsity: paper formula %.4f, measured (uncomputed causal pairs) %.4f\n",
          res->layers ? res->layer[0].sparsity_paper : 0.0,
          s.pairs_causal ? 1.0 - (double)s.pairs_computed / (double)s.pairs_causal : 0.0);
  fprintf(f, "# attention (exchange + compute, max over ranks): %.3f s, %.2f GFLOP/s effective, %.2f GFLOP/s "
             "sparse-aware\n",
          ct, ct > 0 ? s.flops_eff / ct / 1e9 : 0, ct > 0 ? s.flops_sparse / ct / 1e9 : 0);
  double dl = 0, dk = 0;
  int dn = 0;
  for (int l = 0; l < res->layers; l++)
    if (res->layer[l].dev_timed && !res->layer[l].decode) {
      dl += res->layer[l].dev_lists_s;
      dk += res->layer[l].dev_kernel_s;
      dn++;
    }
  if (dn > 0)
    fprintf(f, "# device time (CUDA events, max over ranks): work lists %.4f s, attention kernels "
               "%.4f s = %.3f of the attention time\n", dl, dk, ct > 0 ? dk / ct : 0.0);
  {
    /* The paper's cost model (sr_cost.h) for this run's shapes: score FLOPs of one layer, dense
     * over the causal triangle, and of all layers at each layer's paper-formula sparsity. */
    double dense = sr_cost_attn_layer_flops(cfg->seq_len, cfg->q_heads, cfg->head_dim, 0.0, true);
    double model = 0;
    for (int l = 0; l < res->layers; l++)
      model += sr_cost_attn_layer_flops(cfg->seq_len, cfg->q_heads, cfg->head_dim,
                                        res->layer[l].sparsity_paper, true);
    fprintf(f, "# cost model (docs/COST.md): attention scores %.3f GFLOP per layer dense causal, "
               "%.3f GFLOP for %d layer%s at the paper sparsity; measured %.3f s = %.2f GFLOP/s "
               "of modelled work\n",
            dense / 1e9, model / 1e9, res->layers, res->layers == 1 ? "" : "s", ct,
            ct > 0 ? model / ct / 1e9 : 0);
  }
  for (int l = 0; l < res->layers; l++) {
    const sr_layer_result *r = &res->layer[l];
    if (!r->verified) continue;
    fprintf(f, "# quality layer %d: %lld rows checked, rel. error mean %.3e max %.3e, recall "
               "mean %.4f min %.4f, needles %lld/%lld hit, lse max err %.2e\n",
            l, (long long)r->rows_checked, r->relerr_mean, r->relerr_max, r->recall_mean,
            r->recall_min, (long long)r->needle_hits, (long long)r->needles, r->lse_maxerr);
  }
  fprintf(f, "# wall time %.3f s\n", res->wall_s);
  fflush(f);
}

static cJSON *layer_json(const sr_layer_result *r, int l) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "layer", l);
  cJSON *t = cJSON_AddObjectToObject(o, "time_s");
  for (int i = 0; i < SR_PH_COUNT; i++) cJSON_AddNumberToObject(t, sr_phase_names[i], r->t[i]);
  /* The spread over ranks (load imbalance). Output writing is timed after the reduction: no
   * write here, and total is the layer's time before its output. Clamped to the max, so that
   * zeroed times (SR_TEST_FIXED_TIMES, resumed layers) stay zero. */
  cJSON *tmn = cJSON_AddObjectToObject(o, "time_s_min");
  cJSON *tav = cJSON_AddObjectToObject(o, "time_s_avg");
  for (int i = 0; i < SR_PH_COUNT; i++) {
    if (i == SR_PH_WRITE) continue;
    cJSON_AddNumberToObject(tmn, sr_phase_names[i], r->t_min[i] < r->t[i] ? r->t_min[i] : r->t[i]);
    cJSON_AddNumberToObject(tav, sr_phase_names[i], r->t_avg[i] < r->t[i] ? r->t_avg[i] : r->t[i]);
  }
  cJSON_AddNumberToObject(o, "bytes_moved", (double)r->bytes_sent);
  cJSON_AddNumberToObject(o, "bytes_dense_ring", (double)r->bytes_dense_ring);
  cJSON_AddNumberToObject(o, "bytes_recv_max_rank", (double)r->bytes_recv_max);
  cJSON_AddNumberToObject(o, "blocks_fetched", (double)r->blocks_fetched);
  cJSON_AddNumberToObject(o, "selected_blocks", (double)r->nnz_blocks);
  cJSON_AddNumberToObject(o, "selected_columns", (double)r->nnz_columns);
  cJSON_AddNumberToObject(o, "columns_fetched", (double)r->columns_fetched);
  cJSON_AddNumberToObject(o, "budget_verticals", r->budget_v);
  cJSON_AddNumberToObject(o, "budget_slashes", r->budget_s);
  cJSON_AddNumberToObject(o, "paper_pairs", r->paper_pairs);
  cJSON_AddNumberToObject(o, "top_chunks", r->top_chunks);
  cJSON_AddNumberToObject(o, "sparsity_paper", r->sparsity_paper);
  cJSON_AddNumberToObject(o, "sparsity_measured", r->sparsity_measured);
  cJSON_AddNumberToObject(o, "pairs_computed", (double)r->pairs_computed);
  cJSON_AddNumberToObject(o, "pairs_causal", (double)r->pairs_causal);
  if (r->dev_timed) { /* CUDA events: the device's share of the attention time */
    cJSON *dv = cJSON_AddObjectToObject(o, "device_s");
    cJSON_AddNumberToObject(dv, "lists", r->dev_lists_s);
    cJSON_AddNumberToObject(dv, "kernels", r->dev_kernel_s);
  }
  double ct = r->t[SR_PH_ATTENTION];
  cJSON_AddNumberToObject(o, "gflops_effective", ct > 0 ? r->flops_effective / ct / 1e9 : 0);
  cJSON_AddNumberToObject(o, "gflops_sparse_aware", ct > 0 ? r->flops_sparse / ct / 1e9 : 0);
  if (r->decode) {
    cJSON *dj = cJSON_AddObjectToObject(o, "decode");
    cJSON_AddNumberToObject(dj, "steps", (double)r->decode_steps);
    cJSON_AddNumberToObject(dj, "batch", (double)r->decode_batch);
    cJSON_AddNumberToObject(dj, "budget_tokens", (double)r->decode_budget);
    cJSON_AddNumberToObject(dj, "prefill_s", r->prefill_s);
    cJSON_AddNumberToObject(dj, "step_s", r->step_s);
    cJSON_AddNumberToObject(dj, "tokens_per_s", r->t[SR_PH_ATTENTION] > 0
                                                    ? (double)(r->decode_steps * r->decode_batch) /
                                                          r->t[SR_PH_ATTENTION]
                                                    : 0);
    cJSON_AddNumberToObject(dj, "kv_bytes_read", r->kv_bytes_read);
    cJSON_AddNumberToObject(dj, "kv_gbps", r->t[SR_PH_ATTENTION] > 0
                                               ? r->kv_bytes_read / r->t[SR_PH_ATTENTION] / 1e9
                                               : 0);
  }
  if (r->verified) {
    cJSON *q = cJSON_AddObjectToObject(o, "quality");
    cJSON_AddNumberToObject(q, "rows_checked", (double)r->rows_checked);
    cJSON_AddNumberToObject(q, "relerr_mean", r->relerr_mean);
    cJSON_AddNumberToObject(q, "relerr_max", r->relerr_max);
    cJSON_AddNumberToObject(q, "recall_mean", r->recall_mean);
    cJSON_AddNumberToObject(q, "recall_min", r->recall_min);
    cJSON_AddNumberToObject(q, "needles", (double)r->needles);
    cJSON_AddNumberToObject(q, "needle_hits", (double)r->needle_hits);
    cJSON_AddNumberToObject(q, "lse_maxerr", r->lse_maxerr);
  }
  return o;
}

static cJSON *report_obj(const sr_config *cfg, const sr_run_result *res, int only_layer) {
  char v[512];
  versions(v, sizeof v);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "versions", v);
  cJSON_AddNumberToObject(o, "ranks", res->nranks);
  cJSON_AddNumberToObject(o, "threads_per_rank", res->threads);
  cJSON_AddStringToObject(o, "backend", res->backend ? res->backend : "");
  cJSON_AddStringToObject(o, "transport", res->transport ? res->transport : "");
  char *yaml = sr_config_to_yaml(cfg);
  cJSON_AddStringToObject(o, "config_yaml", yaml ? yaml : "");
  free(yaml);
  cJSON_AddStringToObject(o, "method", sr_method_name(cfg->method));
  cJSON_AddStringToObject(o, "exchange", sr_exchange_name(cfg->exchange));
  cJSON_AddNumberToObject(o, "seq_len", (double)cfg->seq_len);
  if (res->rank_map) cJSON_AddStringToObject(o, "rank_map", res->rank_map);
  cJSON *ls = cJSON_AddArrayToObject(o, "layers");
  for (int l = 0; l < res->layers; l++)
    if (only_layer < 0 || only_layer == l) cJSON_AddItemToArray(ls, layer_json(&res->layer[l], l));
  if (only_layer < 0) {
    totals s = sum_layers(res);
    cJSON_AddNumberToObject(o, "bytes_moved", (double)s.bytes_sent);
    cJSON_AddNumberToObject(o, "bytes_dense_ring", (double)s.bytes_dense_ring);
    cJSON_AddNumberToObject(o, "wall_s", res->wall_s);
  }
  return o;
}

char *sr_report_json_string(const sr_config *cfg, const sr_run_result *res, int layer) {
  cJSON *o = report_obj(cfg, res, layer);
  char *s = o ? cJSON_Print(o) : NULL;
  cJSON_Delete(o);
  return s;
}

/* Written whole to "<path>.partial" and renamed: a run that fails while writing (a full disk)
 * leaves the previous report, never half of one. sr_outputs_check has made sure that neither
 * name is another output of the run or an input. */
sr_status sr_report_json(const sr_config *cfg, const sr_run_result *res, const char *path) {
  char *s = sr_report_json_string(cfg, res, -1);
  sr_status st = sr__write_text_atomic(path, s, "JSON report");
  free(s);
  return st;
}
